"""The quantization-clip-floor-shift (QCFS) activation, the dense side of near-lossless conversion.

QCFS (Bu et al., ICLR 2022) replaces a ReLU with ``L`` levels between 0 and a learnable clip ``lambda``::

    a = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

A network trained (or fine-tuned) with it converts to spikes by giving each population the threshold
``vth = lambda``, no leak (``dv = 0``), reset by subtraction and a membrane that starts at half the
threshold (``LIFPopulation(dv=0, vth=lambda, reset="subtract", v_init=0.5)``). Driven by a constant
input ``z`` for ``T = L`` steps, such a neuron fires ``floor(z T / lambda + 1/2)`` times (at most once
per step), so its mean output ``spikes * lambda / T`` is exactly the activation above
(``tests/test_converters.py``).

The floor passes its gradient straight through; ``lambda`` learns through the clip and the scaling.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from spiking_attn.errors import SpikingAttnError, check_int
from spiking_attn.opcount import count_rule, no_own_ops


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x)`` forward, identity backward (the straight-through estimator)."""
    return x + (torch.floor(x) - x).detach()


class QCFS(nn.Module):
    """``lambda * clip(floor(z L / lambda + 1/2) / L, 0, 1)`` with a learnable clip ``lambda``.

    Args:
        levels: L, the number of quantization steps (>= 1); the matching spiking model runs ``T = L``
            steps for an exact match on constant inputs.
        clip: the initial lambda (> 0).
    """

    def __init__(self, levels: int = 8, clip: float = 4.0) -> None:
        super().__init__()
        self.levels = check_int(levels, "levels", low=1, high=4096)
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise SpikingAttnError(f"clip must be a positive finite number, got {clip!r}")
        self.clip = nn.Parameter(torch.tensor(float(clip)))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, clip={float(self.clip.detach()):.4g}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lam = self.clip.clamp_min(1e-6).to(z.dtype)  # a learned clip never reaches zero
        x = torch.clamp(z / lam, 0.0, 1.0)
        return floor_ste(x * self.levels + 0.5) / self.levels * lam


count_rule(QCFS)(no_own_ops)  # like a ReLU: a compare and a lookup per value
