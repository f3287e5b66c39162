"""Project exceptions and input checks shared by every user-facing entry point."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch


class SpikingAttnError(ValueError):
    """Base class for user errors raised by spiking-attn (a ValueError)."""


class ShapeError(SpikingAttnError):
    """A tensor has the wrong rank, size or number of time steps."""


class DTypeError(SpikingAttnError, TypeError):
    """A tensor has a dtype the operation cannot use (e.g. integers where floats are needed)."""


class NonFiniteError(SpikingAttnError):
    """A tensor holds NaN or Inf."""


class CheckpointError(SpikingAttnError):
    """A checkpoint is missing, truncated, corrupt, or from another configuration."""


def check_tensor(
    x: object,
    name: str,
    *,
    ndim: Optional[int | Sequence[int]] = None,
    last_dim: Optional[int] = None,
    timesteps: Optional[int] = None,
    finite: bool = True,
) -> torch.Tensor:
    """Validate a user-supplied tensor and return it.

    Args:
        x: the object to check.
        name: the argument name used in error messages.
        ndim: required rank (an int or a collection of allowed ranks).
        last_dim: required size of the last dimension.
        timesteps: required size of dim 0 (the time axis of a ``[T, B, ...]`` tensor).
        finite: reject NaN and Inf.
    """
    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DTypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ShapeError(f"{name} must have rank {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ShapeError(f"{name} is empty (shape {tuple(x.shape)})")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ShapeError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if timesteps is not None and x.shape[0] != timesteps:
        raise ShapeError(
            f"{name} has {x.shape[0]} time steps (dim 0) but {timesteps} were expected"
        )
    if finite and not bool(torch.isfinite(x).all()):
        raise NonFiniteError(f"{name} contains NaN or Inf")
    return x


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpikingAttnError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the options."""
    if value not in choices:
        raise SpikingAttnError(
            f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}"
        )
    return value  # type: ignore[return-value]


def check_fraction(value: float, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as float if low <= value <= high and finite, else raise."""
    value = float(value)
    if not math.isfinite(value) or not (low <= value <= high):
        raise SpikingAttnError(f"{name} must lie in [{low}, {high}], got {value}")
    return value


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a real bool (not a string such as 'no', not 0/1), else raise."""
    if not isinstance(value, bool):
        raise DTypeError(f"{name} must be True or False, got {value!r}")
    return value
