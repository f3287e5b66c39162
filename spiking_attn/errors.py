"""Project exceptions and the one validation layer every user-facing entry point uses.

Every check names the argument and what is allowed. Errors are ``SpikingAttnError`` (a ``ValueError``)
or ``DTypeError`` (also a ``TypeError``) for a value of the wrong kind; the command line turns each into
one line on stderr. Commands added later (convert, energy, deploy) use the same checks.

A multi-process run raises, for a process that failed, ``DistributedError`` if it was a user error
(``USER_ERRORS``) and ``ProcessFailure`` (an internal error) otherwise, with the process's traceback as
``RemoteTraceback``. This module imports no torch, so that the command line can use it before torch loads.
"""
from __future__ import annotations

import math
import os
from typing import TYPE_CHECKING, Optional, Sequence

if TYPE_CHECKING:  # imported where a tensor is checked: the command line loads this module before torch
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


class ResourceError(SpikingAttnError):
    """A run would need more memory than the machine has."""


class DistributedError(SpikingAttnError):
    """A process of a multi-process run failed, or the processes do not fit the run (``--nproc``)."""


class PeerFailure(DistributedError):
    """Another process of the run failed, and this one stops because of it (that process reports the cause)."""


class ProcessFailure(RuntimeError):
    """A process of a multi-process run failed with an unexpected error (a bug, not a user error): the
    command line reports it as an internal error. Its ``__cause__`` is the process's ``RemoteTraceback``."""


class RemoteTraceback(Exception):
    """The traceback of an exception raised in another process, as text. It is the ``__cause__`` of the error
    raised here, so that a traceback printed here (``--debug``) shows where the failure happened."""

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return f'\n"""\n{self.text.rstrip()}\n"""'


# What the command line reports as a user error (one line, ``spiking-attn: error:``); other exceptions are
# internal errors. A multi-process run sorts a process's failure by the same rule.
USER_ERRORS = (ValueError, OSError)


def one_line(exc: BaseException, kind: bool = False) -> str:
    """The first line of ``exc``'s message (its type's name if it has none); with ``kind``, ``Type: message``."""
    text = str(exc).strip()
    line = text.splitlines()[0] if text else ""
    if kind and line:
        return f"{type(exc).__name__}: {line}"
    return line or type(exc).__name__


def all_finite(x) -> bool:
    """Whether every element of a floating-point tensor is finite. A NaN or an infinity anywhere makes
    the sum non-finite, so a finite sum settles it in one reduction, with no boolean tensor allocated;
    only a non-finite sum, which an overflow of finite values can also give, is checked element by
    element."""
    import torch

    return math.isfinite(float(x.detach().sum())) or bool(torch.isfinite(x).all())


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
        finite: reject NaN and Inf (skipped while torch.compile traces: the test reads a value on the
            host, which would split the compiled graph at every call).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise DTypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise DTypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
        if x.dim() not in allowed:
            contiguous = len(allowed) > 2 and list(allowed) == list(range(allowed[0], allowed[-1] + 1))
            want = f"{allowed[0]} to {allowed[-1]}" if contiguous else " or ".join(str(a) for a in allowed)
            raise ShapeError(f"{name} must have rank {want}, got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ShapeError(f"{name} is empty (shape {tuple(x.shape)})")
    if last_dim is not None and x.shape[-1] != last_dim:
        raise ShapeError(f"{name} must have last dimension {last_dim}, got shape {tuple(x.shape)}")
    if timesteps is not None and x.shape[0] != timesteps:
        raise ShapeError(
            f"{name} has {x.shape[0]} time steps (dim 0) but {timesteps} were expected"
        )
    # (not under torch.compile: reading the result on the host would break the graph at every check)
    if finite and not torch.compiler.is_compiling() and not all_finite(x):
        raise NonFiniteError(f"{name} contains NaN or Inf")
    return x


def check_int(value: object, name: str, *, low: Optional[int] = None, high: Optional[int] = None) -> int:
    """Return ``value`` if it is an integer (not a bool) in ``[low, high]``, else raise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise DTypeError(f"{name} must be an integer, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        if high is None:
            allowed = "a positive integer" if low == 1 else f"an integer >= {low}"
        else:
            allowed = f"an integer in [{low}, {high}]"
        raise SpikingAttnError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_positive_int(value: object, name: str) -> int:
    """Return ``value`` if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise SpikingAttnError(f"{name} must be a positive integer, got {value!r}")
    return value


def check_number(value: object, name: str, *, low: Optional[float] = None, high: Optional[float] = None,
                 low_open: bool = False) -> float:
    """Return ``value`` as a float if it is a finite real number in its range, else raise.

    ``low`` is included unless ``low_open``; ``high`` is included.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise DTypeError(f"{name} must be a number, got {value!r}")
    value = float(value)
    too_low = low is not None and (value <= low if low_open else value < low)
    if not math.isfinite(value) or too_low or (high is not None and value > high):
        if low is not None and high is not None:
            allowed = f"a number in {'(' if low_open else '['}{low:g}, {high:g}]"
        elif low is not None:
            allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
        else:
            allowed = "a finite number"
        raise SpikingAttnError(f"{name} must be {allowed}, got {value!r}")
    return value


def check_path(value: object, name: str) -> str:
    """Return ``value`` as a string if it is a non-empty path (str or os.PathLike), else raise."""
    if not isinstance(value, (str, os.PathLike)):
        raise DTypeError(f"{name} must be a path, got {type(value).__name__}")
    text = os.fspath(value)
    if not isinstance(text, str) or not text.strip():
        raise SpikingAttnError(f"{name} must name a file or folder, got {text!r}")
    return text


def check_choice(value: object, name: str, choices: Sequence[str]) -> str:
    """Return ``value`` if it is one of ``choices``, else raise naming the options."""
    if value not in choices:
        raise SpikingAttnError(
            f"unknown {name} {value!r}; choose one of: {', '.join(map(str, choices))}"
        )
    return value  # type: ignore[return-value]


def check_fraction(value: object, name: str, *, low: float = 0.0, high: float = 1.0) -> float:
    """Return ``value`` as float if it is a number in ``[low, high]``, else raise."""
    return check_number(value, name, low=low, high=high)


def check_bool(value: object, name: str) -> bool:
    """Return ``value`` if it is a real bool (not a string such as 'no', not 0/1), else raise."""
    if not isinstance(value, bool):
        raise DTypeError(f"{name} must be True or False, got {value!r}")
    return value
