"""The ``spikingjelly`` engine: the same neuron, with SpikingJelly computing the membrane.

SpikingJelly's LIF (``LIFNode(decay_input=False, v_reset=0)``) charges ``H = V - V/tau + X``, fires on
``H >= V_th`` and resets to zero. It has no current state, no bias, one threshold per layer and no
adaptation. This engine feeds it what it lacks, step by step from ``neuron.LIFParams``:

* ``X = u[t] + bias``, with the current ``u`` (decay ``du``, input gain) computed here;
* ``tau = 1/dv`` (a tensor when ``dv`` is per neuron);
* ``V_th`` = the threshold of ``lif_step`` (adaptive, shifted) moved to the next representable number
  above it, so that SpikingJelly's ``>=`` is our strict ``>``.

So the charge, the spike function with its surrogate, and the reset are SpikingJelly's, through its
public ``functional.lif_multi_step`` and ``functional.lif_step``. It exists as an independent
cross-check of the native engine, not for speed. Its charge rounds differently (``V - V/tau + X``
against ``u + v*(1 - dv) + bias``), so a membrane within a rounding error of the threshold can fire in
one engine and not the other: in float32 about one spike in a million differs; in float64 none did in
the tests. Gradients agree to float rounding. Nothing is a registered child module and nothing is
kept between calls: every parameter is read when called.

``tau = 1/dv`` is infinite at ``dv = 0``, where the chain rule through ``1/dv`` gives NaN; so ``tau``
is passed without a gradient and the exact gradient of ``h`` with respect to ``dv`` (``-v``) enters
through a term that adds zero to the value.
"""
from __future__ import annotations

import torch

from .errors import check_tensor
from .neuron import (LIFParams, decayed_threshold, firing_threshold, initial_state, modulation_at, raised_threshold,
                     synaptic_current)


class _GeqSpike(torch.autograd.Function):
    """SpikingJelly's firing convention (``z >= 0``) with any surrogate object's ``grad``."""

    @staticmethod
    def forward(ctx, z, surrogate):
        ctx.save_for_backward(z)
        ctx.surrogate = surrogate
        return (z >= 0).to(z.dtype)

    @staticmethod
    def backward(ctx, grad_out):
        (z,) = ctx.saved_tensors
        return grad_out * ctx.surrogate.grad(z), None


def _fire_function(surrogate):
    """SpikingJelly's own surrogate module when there is an identical one, else an adaptor."""
    to_sj = getattr(surrogate, "spikingjelly", None)
    if callable(to_sj):
        return to_sj()
    return lambda z: _GeqSpike.apply(z, surrogate)


def _strict(threshold: torch.Tensor) -> torch.Tensor:
    """The next number above ``threshold`` (differentiable with slope 1): ``>=`` on it is ``>`` on ours."""
    plain = threshold.detach()
    return threshold + (torch.nextafter(plain, torch.full_like(plain, float("inf"))) - plain)


def _is_plain(x: torch.Tensor, params: LIFParams, gain, shift) -> bool:
    """Whether SpikingJelly's multi-step LIF can run the whole sequence as it is."""
    scalars = all(p.numel() == 1 and not p.requires_grad for _, p in params.items())
    return (scalars and not params.adaptive and gain is None and shift is None and float(params.du) == 1.0
            and 0.0 < float(params.dv) < 1.0)


def run_spikingjelly(x: torch.Tensor, params: LIFParams, *, gain=None, shift=None, surrogate=None,
                     detach_reset: bool = False, return_membrane: bool = False, reset: str = "zero",
                     v_init: float = 0.0) -> tuple:
    """Run the population on SpikingJelly's LIF; returns ``(spikes, membrane or None)``. Reset by
    subtraction is SpikingJelly's soft reset (``v_reset=None``): it subtracts its threshold, which is
    ours moved up by one representable number (a difference of one rounding unit)."""
    from spikingjelly.activation_based import functional as sjf

    check_tensor(x, "x")
    fire = _fire_function(surrogate)
    u, v0, theta = initial_state(x[0], params, v_init)
    v_reset = 0.0 if reset == "zero" else None
    if _is_plain(x, params, gain, shift) and reset == "zero":
        b = float(params.bias)
        vth = float(_strict(params.vth.reshape(())))
        spikes, _, v_seq = sjf.lif_multi_step(x + b if b != 0.0 else x, v0, 1.0 / float(params.dv), False, vth, 0.0,
                                              fire, detach_reset, return_membrane)
        return spikes, v_seq
    # General case: one SpikingJelly step at a time. A plain callable (not one of SpikingJelly's
    # surrogate classes) selects its pure-torch transition, which accepts tensor tau and thresholds.
    def fire_fn(z):
        return fire(z)

    tau = 1.0 / params.dv.detach()
    v = v0
    spikes, membrane = [], []
    for t in range(x.shape[0]):
        u = synaptic_current(u, x[t], params, modulation_at(gain, t, x.dim()))
        theta = decayed_threshold(theta, params)
        threshold = firing_threshold(theta, params, modulation_at(shift, t, x.dim()))
        current = u + params.bias
        if params.dv.requires_grad:  # value + 0; d/d(dv) = -v, as in h = v (1 - dv) + ...
            leak = v.detach() * params.dv
            current = current + (leak.detach() - leak)
        s, v = sjf.lif_step(current, v, tau, False, _strict(threshold), v_reset, fire_fn, detach_reset)
        theta = raised_threshold(theta, s.detach() if detach_reset else s, params)
        spikes.append(s)
        if return_membrane:
            membrane.append(v)
    return torch.stack(spikes), (torch.stack(membrane) if return_membrane else None)
