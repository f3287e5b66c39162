r"""Leaky integrate-and-fire populations: the one neuron model of spiking-attn.

The equations are written once, in ``lif_step``: Loihi's current-based LIF (CUBA-LIF, float form)
with an optional adaptive threshold (Lava's ``ATRLIF`` threshold dynamics) and per-call modulation.
Every engine runs them:

* ``native``: the compiled kernel (``lif_kernel.py``, float32 and float64 on the CPU), or, where it
  cannot run (no C compiler, another device), ``lif_step`` itself in a loop under autograd;
* ``spikingjelly``: SpikingJelly's LIF transition (charge, fire, hard reset) for the membrane, fed with
  this module's current and thresholds; a cross-check written by other hands.

Tensors are time-first, ``[T, B, ...]``; the population is everything after the time axis. A call is a
whole sequence that starts from rest (``u = v = 0``, ``theta = vth``): nothing is kept between calls,
so nothing leaks from one batch into the next and no global reset is ever needed.

Parameters (``LIFParams``) are tensors broadcastable to the population: a scalar, one value per
channel ``[D]``, or one per neuron. Modulation (an input ``gain`` and a ``threshold_shift``) is given at
call time and broadcasts to ``[T, B, ...]`` (a ``[B, ...]`` tensor broadcasts the same way, the same at
every step).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Callable, NamedTuple, Optional, Sequence

import torch
from torch import nn

from . import lif_kernel, native_ops
from .errors import (DTypeError, ShapeError, SpikingAttnError, check_bool, check_choice,
                     check_tensor)
from .surrogate import ATan, get_surrogate, surrogate_name

ENGINES = ("native", "spikingjelly")
PARAM_NAMES = ("du", "dv", "vth", "bias", "theta_decay", "theta_step")
RESETS = ("zero", "subtract")  # after a spike: v = 0 (Lava's LIF), or v = h - threshold (reset by subtraction)
VTH_FLOOR = 1e-4  # the projection keeps learned thresholds at or above this (see LIFPopulation.constrain_)


@dataclass(frozen=True)
class LIFParams:
    """The parameters of a population as one call uses them: tensors broadcastable to the population.

    Attributes:
        du: current decay in [0, 1] (1: the current is the input of the step).
        dv: voltage decay in [0, 1] (``tau = 1/dv`` in SpikingJelly's terms).
        vth: resting firing threshold, > 0 (``theta_0`` of Lava's ATRLIF).
        bias: constant input added to the membrane every step.
        theta_decay: adaptive threshold only: decay of the threshold back to ``vth``, in [0, 1].
        theta_step: adaptive threshold only: rise of the threshold per spike, >= 0.
            The threshold adapts if and only if ``theta_step`` is given.
    """

    du: torch.Tensor
    dv: torch.Tensor
    vth: torch.Tensor
    bias: torch.Tensor
    theta_decay: Optional[torch.Tensor] = None
    theta_step: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        for name in PARAM_NAMES:
            value = getattr(self, name)
            if value is None and name.startswith("theta_"):
                continue
            if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                raise DTypeError(f"LIFParams.{name} must be a floating-point tensor, got "
                                 f"{type(value).__name__ if not isinstance(value, torch.Tensor) else value.dtype}")
        if (self.theta_decay is None) != (self.theta_step is None):
            raise SpikingAttnError("an adaptive threshold needs both theta_decay and theta_step")

    @property
    def adaptive(self) -> bool:
        return self.theta_step is not None

    def items(self):
        """``(name, tensor)`` for every parameter that is set."""
        return [(name, value) for name in PARAM_NAMES if (value := getattr(self, name)) is not None]

    def to(self, like: torch.Tensor) -> "LIFParams":
        """The same parameters in the dtype and on the device of ``like`` (differentiable); ``self`` if
        they are there already."""
        items = self.items()
        if all(v.dtype == like.dtype and v.device == like.device for _, v in items):
            return self
        return replace(self, **{k: v.to(dtype=like.dtype, device=like.device) for k, v in items})


class LIFState(NamedTuple):
    """State carried from one step to the next: current ``u``, membrane ``v``, threshold ``theta``."""

    u: torch.Tensor
    v: torch.Tensor
    theta: Optional[torch.Tensor]


class LIFOutput(NamedTuple):
    """What a population returns with ``return_membrane=True``: spikes and the membrane after reset."""

    spikes: torch.Tensor
    membrane: torch.Tensor


def initial_state(x0: torch.Tensor, params: LIFParams, v_init: float = 0.0) -> LIFState:
    """The state before the first step for one step's input ``x0`` ``[B, ...]``: ``u = 0``,
    ``v = v_init * vth`` (a fraction of the resting threshold, not differentiated), ``theta = vth``."""
    zeros = torch.zeros_like(x0)
    theta = (zeros + params.vth) if params.adaptive else None
    v = zeros if v_init == 0 else zeros + v_init * params.vth.detach()
    return LIFState(zeros, v, theta)


def heaviside(z: torch.Tensor) -> torch.Tensor:
    """The spike function without a surrogate: ``1`` where ``z > 0``."""
    return (z > 0).to(z.dtype)


def lif_step(x: torch.Tensor, state: LIFState, params: LIFParams, *, gain: Optional[torch.Tensor] = None,
             shift: Optional[torch.Tensor] = None, fire: Callable[[torch.Tensor], torch.Tensor] = heaviside,
             detach_reset: bool = False, reset: str = "zero") -> tuple:
    r"""One time step of the population: the equations of spiking-attn's neuron, in the only place they
    are written. Returns ``(spikes, new_state)``.

    For every neuron, with input ``x[t]``, gain ``g[t]`` (default 1) and threshold shift ``c[t]``
    (default 0)::

        u[t]     = u[t-1] * (1 - du) + g[t] * x[t]                 synaptic current
        h[t]     = u[t] + v[t-1] * (1 - dv) + bias                  membrane before firing
        theta[t] = (theta[t-1] - vth) * (1 - theta_decay) + vth     adaptive threshold decays to vth
        s[t]     = h[t] > theta[t] + c[t]                           spike (strict, as Lava's LIF)
        v[t]     = h[t] * (1 - s[t])                                reset to zero (reset='zero'), or
        v[t]     = h[t] - s[t] * (theta[t] + c[t])                  by subtraction (reset='subtract')
        theta[t] = theta[t] + theta_step * s[t]                     ...and rises after a spike

    with ``u[-1] = 0``, ``v[-1] = v_init * vth`` (0 by default; see ``initial_state``) and
    ``theta[-1] = vth``. Reset by subtraction keeps the charge above the threshold, so a neuron's rate
    tracks its input over time: the reset of converted (ANN-to-SNN) models. Lava's LIF resets to zero. Without adaptation (``theta_step`` unset),
    ``theta[t] = vth`` throughout. Expressions are evaluated left to right exactly as written; the
    compiled kernel uses the same order, so both give the same spikes bit for bit.

    Relation to Lava (lava-nc 0.10): with no adaptation this is ``LIF``'s float model. The threshold
    dynamics are ``ATRLIF``'s (``theta_0 = vth``, ``delta_theta = theta_decay``), but ATRLIF does not
    reset ``v``: it fires on ``v - r >= theta`` and adds ``2*theta`` to a refractory state ``r`` that
    decays with its own ``delta_r``. Here ``v`` is reset to zero and the comparison is strict.

    In training, ``fire`` is a surrogate spike function (``SpikeFunction``). ``detach_reset`` stops the
    gradient through every effect of a spike on the state: the reset and the threshold jump.
    """
    u = synaptic_current(state.u, x, params, gain)
    h = u + state.v * (1 - params.dv) + params.bias
    theta = decayed_threshold(state.theta, params)
    threshold = firing_threshold(theta, params, shift)
    s = fire(h - threshold)
    s_reset = s.detach() if detach_reset else s
    v = h * (1 - s_reset) if reset == "zero" else h - s_reset * threshold
    return s, LIFState(u, v, raised_threshold(theta, s_reset, params))


# The parts of lif_step that every engine computes the same way (the spikingjelly engine uses them
# around SpikingJelly's own membrane update).

def synaptic_current(u, x, params: LIFParams, gain=None):
    """``u[t] = u[t-1] * (1 - du) + g[t] * x[t]``."""
    return u * (1 - params.du) + (x if gain is None else x * gain)


def decayed_threshold(theta, params: LIFParams):
    """``theta[t] = (theta[t-1] - vth) * (1 - theta_decay) + vth``; None without adaptation."""
    return (theta - params.vth) * (1 - params.theta_decay) + params.vth if params.adaptive else None


def firing_threshold(theta, params: LIFParams, shift=None):
    """The threshold a spike must exceed: ``theta[t]`` (or ``vth``) plus the shift ``c[t]``."""
    threshold = theta if params.adaptive else params.vth
    return threshold if shift is None else threshold + shift


def raised_threshold(theta, s, params: LIFParams):
    """``theta[t] + theta_step * s[t]`` after the spike; None without adaptation."""
    return theta + params.theta_step * s if params.adaptive else None


class SpikeFunction(torch.autograd.Function):
    """Heaviside forward (``z > 0``); ``grad_out * surrogate.grad(z)`` backward."""

    @staticmethod
    def forward(ctx, z, surrogate):
        ctx.save_for_backward(z)
        ctx.surrogate = surrogate
        return heaviside(z)

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(z), None


def modulation_at(mod: Optional[torch.Tensor], t: int, ndim: int) -> Optional[torch.Tensor]:
    """Step ``t`` of a modulation tensor that broadcasts to an input of rank ``ndim`` (``[T, B, ...]``)."""
    if mod is None or mod.dim() < ndim:
        return mod
    return mod[t] if mod.shape[0] > 1 else mod[0]


def run_reference(x: torch.Tensor, params: LIFParams, *, gain=None, shift=None, surrogate=None,
                  detach_reset: bool = False, return_membrane: bool = False, reset: str = "zero",
                  v_init: float = 0.0):
    """``lif_step`` over every step of ``x`` ``[T, B, ...]``, differentiable through autograd.

    This is the native engine where the compiled kernel cannot run, and the reference every engine is
    tested against. Returns ``(spikes, membrane or None)``.
    """
    fire = heaviside if surrogate is None else (lambda z: SpikeFunction.apply(z, surrogate))
    spikes, membrane = [], []
    for s, state in lif_steps(x, params, gain=gain, shift=shift, fire=fire, detach_reset=detach_reset, reset=reset,
                              v_init=v_init):
        spikes.append(s)
        if return_membrane:
            membrane.append(state.v)
    return torch.stack(spikes), (torch.stack(membrane) if return_membrane else None)


def lif_steps(x: torch.Tensor, params: LIFParams, *, gain=None, shift=None, fire=heaviside,
              detach_reset: bool = False, reset: str = "zero", v_init: float = 0.0):
    """Yield ``(spikes, state)`` of ``lif_step`` for every step of ``x`` ``[T, B, ...]``, from the initial
    state."""
    state = initial_state(x[0], params, v_init)
    for t in range(x.shape[0]):
        s, state = lif_step(x[t], state, params, gain=modulation_at(gain, t, x.dim()),
                            shift=modulation_at(shift, t, x.dim()), fire=fire, detach_reset=detach_reset,
                            reset=reset)
        yield s, state


# ---------------------------------------------------------------------------------------------------
# Checks shared by the function and the module

# name: (smallest allowed, largest allowed, whether the smallest itself is allowed); NaN never is
_DOMAINS = {
    "du": (0.0, 1.0, True),
    "dv": (0.0, 1.0, True),
    "vth": (0.0, math.inf, False),
    "bias": (-math.inf, math.inf, False),
    "theta_decay": (0.0, 1.0, True),
    "theta_step": (0.0, math.inf, True),
}


def _describe(name: str) -> str:
    low, high, closed = _DOMAINS[name]
    if name == "bias":
        return "finite"
    if high == math.inf:
        return f"{'>=' if closed else '>'} {low:g}"
    return f"in [{low:g}, {high:g}]"


def _inside(name: str, value: float) -> bool:
    low, high, closed = _DOMAINS[name]
    return math.isfinite(value) and value <= high and (value >= low if closed else value > low)


def check_params(params: LIFParams, where: str = "") -> None:
    """Raise ``SpikingAttnError`` if a parameter lies outside its domain (NaN and Inf included)."""
    for name, value in params.items():
        v = value.detach()
        if v.numel() == 1:
            extremes = (v.item(),)
        else:
            lo, hi = torch.aminmax(v)
            extremes = (float(lo), float(hi))
        for e in extremes:
            if not _inside(name, e):
                raise SpikingAttnError(f"{where}{name} must be {_describe(name)}, got {e}"
                                       + (" (at least one element)" if v.numel() > 1 else ""))


def _broadcasts(shape: Sequence[int], target: Sequence[int]) -> bool:
    """Whether a tensor of ``shape`` broadcasts to exactly ``target``."""
    if len(shape) > len(target):
        return False
    return all(s == 1 or s == t for s, t in zip(reversed(tuple(shape)), reversed(tuple(target))))


def _check_broadcast(name: str, t: torch.Tensor, target: Sequence[int], what: str) -> None:
    if not _broadcasts(t.shape, target):
        raise ShapeError(f"{name} of shape {tuple(t.shape)} does not broadcast to {what} {tuple(target)}")


def _check_modulation(name: str, mod, x: torch.Tensor) -> Optional[torch.Tensor]:
    if mod is None:
        return None
    if isinstance(mod, (int, float)) and not isinstance(mod, bool):
        mod = torch.tensor(float(mod), dtype=x.dtype, device=x.device)
    check_tensor(mod, name, ndim=range(0, x.dim() + 1))
    _check_broadcast(name, mod, x.shape, "the input shape [T, B, ...]")
    return mod.to(dtype=x.dtype)


def make_params(du=1.0, dv=0.5, vth=1.0, bias=0.0, theta_decay=None, theta_step=None, *,
                like: Optional[torch.Tensor] = None) -> LIFParams:
    """Build ``LIFParams`` from floats or tensors (floats become 0-dim tensors of ``like``'s dtype)."""
    if (theta_decay is None) != (theta_step is None):
        raise SpikingAttnError("an adaptive threshold needs both theta_decay and theta_step")
    dtype = like.dtype if like is not None else torch.get_default_dtype()
    values = {}
    for name, value in zip(PARAM_NAMES, (du, dv, vth, bias, theta_decay, theta_step)):
        if value is None and name.startswith("theta_"):
            continue
        if isinstance(value, torch.Tensor):
            if not value.is_floating_point():
                raise DTypeError(f"{name} must be a floating-point tensor, got dtype {value.dtype}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DTypeError(f"{name} must be a number or a tensor, got {type(value).__name__}")
        else:
            if not _inside(name, float(value)):  # checked before rounding to the tensor's precision
                raise SpikingAttnError(f"{name} must be {_describe(name)}, got {value!r}")
            value = torch.tensor(float(value), dtype=dtype)
        values[name] = value
    return LIFParams(**values)


def check_v_init(v_init) -> float:
    """The initial membrane as a fraction of the threshold: a number in [0, 1)."""
    if isinstance(v_init, bool) or not isinstance(v_init, (int, float)) or not (0.0 <= v_init < 1.0):
        raise SpikingAttnError(f"v_init must be a number in [0, 1) (a fraction of the threshold), got {v_init!r}")
    return float(v_init)


def run_lif(x: torch.Tensor, params: LIFParams, *, gain=None, threshold_shift=None, surrogate=None,
            detach_reset: bool = False, return_membrane: bool = False, engine: str = "native",
            where: str = "", reset: str = "zero", v_init: float = 0.0):
    """Check the input, the parameters and the modulation, then run ``engine``.

    Returns the spikes ``[T, B, ...]`` (same dtype as ``x``), or ``LIFOutput(spikes, membrane)`` with
    ``return_membrane=True``.
    """
    check_choice(engine, "engine", ENGINES)
    check_choice(reset, "reset", RESETS)
    v_init = check_v_init(v_init)
    # NaN/Inf in x are caught inside the engines: the compiled kernel counts them in its own pass
    check_tensor(x, "x", ndim=range(2, 9), finite=False)
    surrogate = ATan() if surrogate is None else get_surrogate(surrogate)
    # Under torch.compile the native engine runs lif_step in torch ops, which inductor fuses with the
    # layers around them; the value checks (parameter domains, NaN) would read tensors on the host and
    # break the graph at every population, so they are left out there (shapes and dtypes are checked).
    compiling = torch.compiler.is_compiling()
    if engine == "native" and not compiling and native_ops.ops() is not None and native_ops.lif_eligible(
            x, params, gain, threshold_shift, surrogate, return_membrane):
        # a plain population, as the compiled torch operator: its parameters broadcast (lif_eligible
        # checked their shapes) and the operator checks their values, so the checks below are not repeated
        return native_ops.lif(x, params.to(x), surrogate, detach_reset, reset, v_init, where)
    population = x.shape[1:]
    for name, value in params.items():
        _check_broadcast(f"{where}{name}", value, population, "the population shape")
    if not compiling:
        check_params(params, where)
    gain = _check_modulation("gain", gain, x)  # (check_tensor skips the NaN test while tracing)
    threshold_shift = _check_modulation("threshold_shift", threshold_shift, x)
    params = params.to(x)
    if engine == "spikingjelly":
        from .spikingjelly_engine import run_spikingjelly

        spikes, membrane = run_spikingjelly(x, params, gain=gain, shift=threshold_shift, surrogate=surrogate,
                                            detach_reset=detach_reset, return_membrane=return_membrane,
                                            reset=reset, v_init=v_init)
    elif not compiling and lif_kernel.usable(x):
        spikes, membrane = lif_kernel.run(x, params, gain=gain, shift=threshold_shift, surrogate=surrogate,
                                          detach_reset=detach_reset, return_membrane=return_membrane,
                                          reset=reset, v_init=v_init)
    else:
        check_tensor(x, "x")
        spikes, membrane = run_reference(x, params, gain=gain, shift=threshold_shift, surrogate=surrogate,
                                         detach_reset=detach_reset, return_membrane=return_membrane,
                                         reset=reset, v_init=v_init)
    return LIFOutput(spikes, membrane) if return_membrane else spikes


def lif_sequence(x: torch.Tensor, du=1.0, dv=0.5, vth=1.0, bias=0.0, surrogate="atan",
                 detach_reset: bool = False, *, theta_decay=None, theta_step=None, gain=None,
                 threshold_shift=None, return_membrane: bool = False, engine: str = "native", reset: str = "zero",
                 v_init: float = 0.0):
    """Run the LIF (equations in ``lif_step``) over a whole ``[T, B, ...]`` input.

    A pure function: the state starts at rest and is not returned. Parameters are numbers or tensors
    broadcastable to the population ``x.shape[1:]`` (tensors that require grad receive gradients), cast
    to ``x``'s dtype. ``gain`` and ``threshold_shift`` broadcast to ``x.shape``.

    Returns the spikes, or ``LIFOutput(spikes, membrane)`` with ``return_membrane=True``.
    """
    params = make_params(du, dv, vth, bias, theta_decay, theta_step,
                         like=x if isinstance(x, torch.Tensor) and x.is_floating_point() else None)
    return run_lif(x, params, gain=gain, threshold_shift=threshold_shift, surrogate=get_surrogate(surrogate),
                   detach_reset=check_bool(detach_reset, "detach_reset"),
                   return_membrane=check_bool(return_membrane, "return_membrane"), engine=engine, reset=reset,
                   v_init=v_init)


def lif_reference(x: torch.Tensor, du=1.0, dv=0.5, vth=1.0, bias=0.0, theta_decay=None, theta_step=None,
                  gain=None, threshold_shift=None):
    """Step-by-step float64 reference (no gradient); returns ``(spikes, u, v)`` sequences."""
    x = x.double()
    params = make_params(du, dv, vth, bias, theta_decay, theta_step, like=x).to(x)
    gain = None if gain is None else torch.as_tensor(gain, dtype=torch.float64)
    shift = None if threshold_shift is None else torch.as_tensor(threshold_shift, dtype=torch.float64)
    out_s, out_u, out_v = [], [], []
    for s, state in lif_steps(x, params, gain=gain, shift=shift):
        out_s.append(s), out_u.append(state.u), out_v.append(state.v)
    return torch.stack(out_s), torch.stack(out_u), torch.stack(out_v)


# ---------------------------------------------------------------------------------------------------
# The module


class LIFPopulation(nn.Module):
    """A population of CUBA-LIF neurons run over a ``[T, B, ...]`` sequence (equations in ``lif_step``).

    Args:
        du, dv, vth, bias: numbers or tensors broadcastable to the population (see ``LIFParams``).
        theta_decay, theta_step: set both for an adaptive threshold (Lava's ATRLIF threshold dynamics).
        shape: the shape every parameter is expanded to, e.g. ``(D,)`` for one value per channel; ``()``
            keeps each parameter as given.
        surrogate: 'atan', 'sigmoid', 'fast_sigmoid', or any object with a ``grad(z)`` method.
        alpha: sharpness of a surrogate chosen by name; None keeps its default.
        learn_threshold, learn_bias, learn_decay, learn_adaptation: which parameters train
            (``vth``; ``bias``; ``du`` and ``dv``; ``theta_decay`` and ``theta_step``).
        detach_reset: stop the gradient through the reset and the threshold jump.
        reset: 'zero' (Lava's LIF; the default) or 'subtract' (reset by subtraction, for converted models).
        v_init: the membrane before the first step, as a fraction of ``vth`` in [0, 1) (0.5 for converted
            models; not differentiated).
        engine: 'native' (compiled kernel) or 'spikingjelly' (cross-check).

    The value stored is the value used: parameters are checked against their domains at every call
    (an error names the parameter), and ``constrain_()`` projects learned values back into them
    (``attach_constraints`` makes an optimiser call it after every step; ``train`` does).

    Call: ``pop(x, gain=None, threshold_shift=None, return_membrane=False)`` with ``x`` ``[T, B, ...]``
    float; returns spikes of the same shape and dtype, or ``LIFOutput(spikes, membrane)``.
    """

    def __init__(self, du=1.0, dv=0.5, vth=1.0, bias=0.0, *, theta_decay=None, theta_step=None,
                 shape: Sequence[int] = (), surrogate="atan", alpha: Optional[float] = None,
                 learn_threshold: bool = False, learn_bias: bool = False, learn_decay: bool = False,
                 learn_adaptation: bool = False, detach_reset: bool = False, engine: str = "native",
                 reset: str = "zero", v_init: float = 0.0) -> None:
        super().__init__()
        self.engine = check_choice(engine, "engine", ENGINES)
        self.reset = check_choice(reset, "reset", RESETS)
        self.v_init = check_v_init(v_init)
        self.surrogate = get_surrogate(surrogate, alpha)
        self.detach_reset = check_bool(detach_reset, "detach_reset")
        learn = {"du": learn_decay, "dv": learn_decay, "vth": learn_threshold, "bias": learn_bias,
                 "theta_decay": learn_adaptation, "theta_step": learn_adaptation}
        for name in ("learn_threshold", "learn_bias", "learn_decay", "learn_adaptation"):
            check_bool(locals()[name], name)
        if isinstance(shape, (str, bytes)) or not isinstance(shape, Sequence) \
                or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape):
            raise DTypeError(f"shape must be a sequence of integers, got {shape!r}")
        shape = tuple(shape)
        if any(s <= 0 for s in shape):
            raise SpikingAttnError(f"shape must hold positive sizes, got {shape}")
        if learn_adaptation and theta_step is None:
            raise SpikingAttnError("learn_adaptation needs an adaptive threshold (theta_decay and theta_step)")
        given = make_params(du, dv, vth, bias, theta_decay, theta_step)
        for name, value in given.items():
            try:
                target = torch.broadcast_shapes(value.shape, shape)
            except RuntimeError:
                raise ShapeError(f"{name} of shape {tuple(value.shape)} does not broadcast with shape {shape}") from None
            tensor = value.detach().to(torch.get_default_dtype()).expand(target).clone()
            if learn[name]:
                setattr(self, name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        if self.vth.device.type == "meta":  # built only to be measured (resources.py): no values to check
            return
        check_params(self.params(), "LIFPopulation: ")
        if learn_threshold and float(self.vth.detach().min()) < VTH_FLOOR:
            raise SpikingAttnError(f"a learned vth must start at or above {VTH_FLOOR:g} (the floor the optimiser "
                                   f"projection keeps), got {float(self.vth.detach().min()):g}")

    @property
    def adaptive(self) -> bool:
        return hasattr(self, "theta_step")

    def params(self) -> LIFParams:
        """The stored parameters, exactly as every engine and exporter uses them."""
        found = {}
        for name in PARAM_NAMES:  # read the module's own tables: nn.Module.__getattr__ is slow per call
            value = self._parameters.get(name)
            if value is None:
                value = self._buffers.get(name)
            if value is not None:
                found[name] = value
        return LIFParams(**found)

    @torch.no_grad()
    def constrain_(self) -> None:
        """Project the parameters into their domains in place (decays to [0, 1], ``vth >= VTH_FLOOR``,
        ``theta_step >= 0``). Values already inside are left untouched."""
        for name, value in self.params().items():
            if name in ("du", "dv", "theta_decay"):
                value.clamp_(0.0, 1.0)
            elif name == "vth":
                value.clamp_(min=VTH_FLOOR)
            elif name == "theta_step":
                value.clamp_(min=0.0)

    def extra_repr(self) -> str:
        def show(t: torch.Tensor) -> str:
            return f"{float(t):g}" if t.numel() == 1 else f"<{'x'.join(map(str, t.shape))}>"

        parts = [f"{name}={show(value)}" for name, value in self.params().items()]
        if self.reset != "zero" or self.v_init:
            parts += [f"reset={self.reset}", f"v_init={self.v_init:g}"]
        return ", ".join(parts + [f"surrogate={surrogate_name(self.surrogate)}", f"engine={self.engine}"])

    def forward(self, x: torch.Tensor, gain: Optional[torch.Tensor] = None,
                threshold_shift: Optional[torch.Tensor] = None, return_membrane: bool = False):
        return run_lif(x, self.params(), gain=gain, threshold_shift=threshold_shift, surrogate=self.surrogate,
                       detach_reset=self.detach_reset, return_membrane=check_bool(return_membrane, "return_membrane"),
                       engine=self.engine, where="LIFPopulation: ", reset=self.reset, v_init=self.v_init)


def population(width: int, lif: Optional[dict] = None) -> LIFPopulation:
    """A ``LIFPopulation`` from a keyword dict (``ModelConfig.lif_kwargs()``) for a layer of ``width``
    channels: ``per_channel=True`` in the dict gives every parameter the shape ``(width,)``."""
    kwargs = dict(lif or {})
    per_channel = kwargs.pop("per_channel", False)
    return LIFPopulation(**kwargs, shape=(width,) if per_channel else ())


def poised_population(width: int, lif: Optional[dict] = None) -> LIFPopulation:
    """A per-channel population whose bias holds each neuron exactly at threshold at rest
    (``v* = bias / dv = vth``, not firing): any net excitation fires it, any inhibition silences it.

    Mechanisms use it for modulatory populations (gates, routes) that must respond to their drive from
    the first training step; its threshold and bias are learnable. ``lif`` is the model's population
    keyword dict (its ``dv``, surrogate and engine are used).
    """
    kwargs = {k: v for k, v in (lif or {}).items()
              if k not in ("per_channel", "learn_threshold", "learn_bias", "bias", "vth")}
    vth, dv = float((lif or {}).get("vth", 1.0)), float(kwargs.get("dv", 0.5))
    return LIFPopulation(**kwargs, vth=vth, bias=vth * dv, shape=(width,), learn_threshold=True, learn_bias=True)


def populations(model: nn.Module):
    """Every ``(name, LIFPopulation)`` in ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, LIFPopulation)]


def constrain_parameters(model: nn.Module) -> None:
    """Project the parameters of every population in ``model`` into their domains (``constrain_``)."""
    for _, pop in populations(model):
        pop.constrain_()


def attach_constraints(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Make ``optimizer`` project every population of ``model`` after each ``step()``.

    Returns the hook handle (``.remove()`` detaches it). Use it in a custom training loop that learns
    neuron parameters; ``spiking_attn.train`` does this itself.
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise DTypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    return optimizer.register_step_post_hook(lambda *_: constrain_parameters(model))
