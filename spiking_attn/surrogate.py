"""Surrogate gradients for the spike function, chosen by name.

The forward pass of a spike is the Heaviside step ``s = [v - vth > 0]``. Its derivative is zero
almost everywhere, so training replaces it with a smooth pseudo-derivative ``ds/dv = g(v - vth)``.
Each surrogate is a frozen dataclass with a ``grad`` method; ``get_surrogate(name)`` picks one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import SpikingAttnError, check_choice


@dataclass(frozen=True)
class ATan:
    """``g(x) = (alpha/2) / (1 + (pi*alpha*x/2)^2)``, the derivative of ``atan(pi*alpha*x/2)/pi + 1/2``."""

    alpha: float = 2.0
    name = "atan"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        z = x * (math.pi / 2 * self.alpha)
        return (self.alpha / 2) / (1 + z * z)

    def spikingjelly(self):
        from spikingjelly.activation_based import surrogate

        return surrogate.ATan(alpha=self.alpha)


@dataclass(frozen=True)
class Sigmoid:
    """``g(x) = alpha * sig(alpha x) * (1 - sig(alpha x))``."""

    alpha: float = 4.0
    name = "sigmoid"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(x * self.alpha)
        return (1 - s) * s * self.alpha

    def spikingjelly(self):
        from spikingjelly.activation_based import surrogate

        return surrogate.Sigmoid(alpha=self.alpha)


@dataclass(frozen=True)
class FastSigmoid:
    """``g(x) = 1 / (1 + slope*|x|)^2`` (SuperSpike, snnTorch's ``fast_sigmoid``)."""

    alpha: float = 25.0
    name = "fast_sigmoid"

    def grad(self, x: torch.Tensor) -> torch.Tensor:
        z = 1 + self.alpha * x.abs()
        return 1 / (z * z)

    def spikingjelly(self):
        raise SpikingAttnError(
            "surrogate 'fast_sigmoid' has no identical SpikingJelly counterpart; "
            "use 'atan' or 'sigmoid' with engine='spikingjelly'"
        )


SURROGATES = {cls.name: cls for cls in (ATan, Sigmoid, FastSigmoid)}


def get_surrogate(name: str, alpha: float | None = None):
    """Return the surrogate called ``name`` ('atan', 'sigmoid', 'fast_sigmoid')."""
    cls = SURROGATES[check_choice(name, "surrogate", sorted(SURROGATES))]
    if alpha is None:
        return cls()
    alpha = float(alpha)
    if not math.isfinite(alpha) or alpha <= 0:
        raise SpikingAttnError(f"surrogate alpha must be a positive number, got {alpha}")
    return cls(alpha=alpha)
