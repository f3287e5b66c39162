"""Encoders: turn an analog input ``[B, ...]`` into a time-first sequence ``[T, B, ...]``.

Every encoder is called as ``encoder(x, generator=None, name="x")``: ``generator`` feeds the random
draws (rate code only) and ``name`` is the argument named in error messages.

* ``direct``  - the analog value is repeated every step; the first weight layer sees real numbers
  (it is the model's encoding layer, counted as MACs by energy estimates).
* ``rate``    - Bernoulli spikes with probability equal to the input (inputs in [0, 1]). In one process
  of a data-parallel run it draws for the whole global batch and keeps its rows (``distributed.Shard``).
* ``latency`` - one spike per input, earlier for larger values: ``t = round((1 - x) (T - 1))``;
  an input of exactly 0 never fires.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .errors import SpikingAttnError, check_choice, check_positive_int, check_tensor
from .distributed import current_shard
from .converters.rules import passive
from .opcount import count_rule, no_own_ops

ENCODERS = ("direct", "rate", "latency")


def _check_unit_range(x: torch.Tensor, name: str) -> None:
    if bool((x < 0).any()) or bool((x > 1).any()):
        raise SpikingAttnError(f"{name} must lie in [0, 1] for spike encoding, got range "
                               f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")


class DirectEncoder(nn.Module):
    """Repeat the analog input ``[B, ...]`` over ``T`` steps -> ``[T, B, ...]`` (a view, no copy)."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = check_positive_int(timesteps, "timesteps")

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, name: str = "x") -> torch.Tensor:
        check_tensor(x, name)
        return x.unsqueeze(0).expand(self.timesteps, *x.shape)  # [T, B, ...]


class RateEncoder(nn.Module):
    """Bernoulli rate code: ``P(spike at t) = x``. Draws from ``generator`` when one is given."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = check_positive_int(timesteps, "timesteps")

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, name: str = "x") -> torch.Tensor:
        check_tensor(x, name)
        _check_unit_range(x, name)
        probs = x.unsqueeze(0).expand(self.timesteps, *x.shape)  # [T, B, ...]
        shard = current_shard()
        if shard is not None:  # one process of a data-parallel run: draw for the global batch, keep our rows
            return shard.bernoulli(probs, generator, axis=1)
        return torch.bernoulli(probs, generator=generator)


class LatencyEncoder(nn.Module):
    """Time-to-first-spike code: one spike at step ``round((1 - x) (T - 1))``; zero never fires."""

    def __init__(self, timesteps: int) -> None:
        super().__init__()
        self.timesteps = check_positive_int(timesteps, "timesteps")

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None, name: str = "x") -> torch.Tensor:
        check_tensor(x, name)
        _check_unit_range(x, name)
        steps = torch.round((1 - x) * (self.timesteps - 1)).long()  # [B, ...]
        t_axis = torch.arange(self.timesteps).view(-1, *([1] * x.dim()))  # [T, 1, ...]
        spikes = (t_axis == steps.unsqueeze(0)) & (x > 0).unsqueeze(0)  # [T, B, ...]
        return spikes.to(x.dtype)


def make_encoder(name: str, timesteps: int) -> nn.Module:
    """Build the encoder called ``name`` ('direct', 'rate', 'latency')."""
    cls = {"direct": DirectEncoder, "rate": RateEncoder, "latency": LatencyEncoder}
    return cls[check_choice(name, "encoder", ENCODERS)](timesteps)


# Encoding happens at the sensor or on the host; the first weight layer's count reflects what it gives
# (analog values: MACs; rate or latency spikes: accumulates).
count_rule(DirectEncoder, RateEncoder, LatencyEncoder)(no_own_ops)

passive(DirectEncoder)  # a converted model repeats its analog input at every step, as the dense twin sees it once
