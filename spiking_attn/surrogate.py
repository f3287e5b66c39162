"""Surrogate gradients for the spike function.

The forward pass of a spike is the Heaviside step ``s = [z > 0]`` with ``z = h - threshold``. Its
derivative is zero almost everywhere, so training replaces it with a smooth pseudo-derivative
``ds/dz = g(z)``.

The interface, which any object can implement:

* ``grad(z: Tensor) -> Tensor``: the elementwise pseudo-derivative, in the dtype of ``z``;
* ``name: str``: a label for logs and reprs.

Optionally ``spikingjelly()`` returns the identical SpikingJelly surrogate module (used by the
``spikingjelly`` engine; without it that engine calls ``grad`` through an adaptor).

The three built-in surrogates are frozen dataclasses chosen by name with ``get_surrogate``. The
compiled LIF kernel evaluates those three itself; for any other surrogate object it saves ``z`` in
the forward pass and calls ``grad`` once on the whole ``[T, ...]`` tensor in the backward pass, so a
custom surrogate trains in every dtype and engine without a slower path.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .errors import DTypeError, SpikingAttnError, check_choice


@dataclass(frozen=True)
class ATan:
    """``g(z) = (alpha/2) / (1 + (pi*alpha*z/2)^2)``, the derivative of ``atan(pi*alpha*z/2)/pi + 1/2``."""

    alpha: float = 2.0
    name = "atan"

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        w = z * (math.pi / 2 * self.alpha)
        return (self.alpha / 2) / (1 + w * w)

    def spikingjelly(self):
        from spikingjelly.activation_based import surrogate

        return surrogate.ATan(alpha=self.alpha)


@dataclass(frozen=True)
class Sigmoid:
    """``g(z) = alpha * sig(alpha z) * (1 - sig(alpha z))``."""

    alpha: float = 4.0
    name = "sigmoid"

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(z * self.alpha)
        return (1 - s) * s * self.alpha

    def spikingjelly(self):
        from spikingjelly.activation_based import surrogate

        return surrogate.Sigmoid(alpha=self.alpha)


@dataclass(frozen=True)
class FastSigmoid:
    """``g(z) = 1 / (1 + slope*|z|)^2`` (SuperSpike, snnTorch's ``fast_sigmoid``).

    SpikingJelly's ``SuperSpike`` is ``alpha / (1 + |z|)^2``, a different function, so there is no
    ``spikingjelly()`` counterpart: that engine uses ``grad`` through its adaptor.
    """

    alpha: float = 25.0
    name = "fast_sigmoid"

    def grad(self, z: torch.Tensor) -> torch.Tensor:
        w = 1 + self.alpha * z.abs()
        return 1 / (w * w)


SURROGATES = {cls.name: cls for cls in (ATan, Sigmoid, FastSigmoid)}


def get_surrogate(surrogate: "str | object", alpha: float | None = None):
    """Return a surrogate: a built-in one by name ('atan', 'sigmoid', 'fast_sigmoid'), or ``surrogate``
    itself if it is an object with a callable ``grad`` (then ``alpha`` must be None)."""
    if not isinstance(surrogate, str):
        if not callable(getattr(surrogate, "grad", None)):
            raise DTypeError(
                f"surrogate must be one of {', '.join(sorted(SURROGATES))} or an object with a grad(z) method, "
                f"got {type(surrogate).__name__}")
        if alpha is not None:
            raise SpikingAttnError("alpha applies to a surrogate chosen by name; set it on your surrogate object")
        return surrogate
    cls = SURROGATES[check_choice(surrogate, "surrogate", sorted(SURROGATES))]
    if alpha is None:
        return cls()
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha <= 0:
        raise SpikingAttnError(f"surrogate alpha must be a positive number, got {alpha!r}")
    return cls(alpha=float(alpha))


def surrogate_name(surrogate: object) -> str:
    """The surrogate's ``name``, or its class name if it has none."""
    return str(getattr(surrogate, "name", type(surrogate).__name__))
