r"""Leaky integrate-and-fire populations: the one neuron model of spiking-attn.

Loihi's current-based LIF (CUBA-LIF), float form, for every neuron ``i`` and time step ``t``::

    u[t] = u[t-1] * (1 - du) + x[t]            synaptic current
    h[t] = v[t-1] * (1 - dv) + u[t] + bias     membrane potential before firing
    s[t] = h[t] > vth                          spike (strict inequality, as Lava)
    v[t] = h[t] * (1 - s[t])                   reset to zero where a spike was fired

with ``u[-1] = v[-1] = 0`` at the start of every sequence. With ``du = 1`` the current is the input
and this is SpikingJelly's ``LIFNode(decay_input=False, v_reset=0.0)`` with ``tau = 1/dv``.

In the backward pass ``ds/dh`` is replaced by a surrogate ``g(h - vth)`` (see ``surrogate.py``).
Unless ``detach_reset`` is set, the gradient also flows through the reset term ``-h * s``.

Tensors are time-first, ``[T, B, ...]``. A population keeps no state between calls: every call is a
new sequence, so nothing leaks from one batch into the next and no global reset is ever needed.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from torch import nn

from . import lif_kernel
from .errors import NonFiniteError, SpikingAttnError, check_choice, check_fraction, check_tensor
from .surrogate import SURROGATES, get_surrogate

ENGINES = ("native", "spikingjelly")


def _current_sequence(x: torch.Tensor, du: float) -> torch.Tensor:
    """The synaptic current ``u[t]`` for every step, rebuilt from the input ``[T, ...]``."""
    u_seq = torch.empty_like(x)
    u_prev = torch.zeros_like(x[0])
    for t in range(x.shape[0]):
        u_prev = u_prev * (1.0 - du) + x[t]
        u_seq[t] = u_prev
    return u_seq


def _torch_forward(x: torch.Tensor, du: float, dv: float, vth: float, bias: float):
    """The dynamics as a loop of torch operations; returns ``(spikes, h_seq)``."""
    check_tensor(x, "x")  # the torch loop checks for NaN/Inf up front
    spikes, h_seq = torch.empty_like(x), torch.empty_like(x)
    v = torch.zeros_like(x[0])
    u = torch.zeros_like(x[0]) if du != 1.0 else None
    for t in range(x.shape[0]):
        current = x[t] if u is None else u.mul_(1.0 - du).add_(x[t])
        h = torch.add(current, v, alpha=1.0 - dv, out=h_seq[t])  # [B, ...]
        if bias != 0.0:
            h.add_(bias)
        s = torch.gt(h, vth, out=spikes[t])
        v = h * (1.0 - s)
    return spikes, h_seq


def _torch_backward(grad_spikes, x, h_seq, spikes, du, dv, vth, surrogate, detach_reset, need):
    """Backward through time for ``_torch_forward``; returns ``grad_x`` and the four parameter sums."""
    need_du, need_dv, need_vth, need_bias = need
    grad_x = torch.empty_like(x)
    grad_v = torch.zeros_like(x[0])  # dL/dv[t], carried backwards from step t+1
    grad_u = torch.zeros_like(x[0])  # dL/du[t], carried backwards when du < 1
    sums = [x.new_zeros(()) for _ in range(4)]  # du, dv, vth, bias
    u_seq = _current_sequence(x, du) if need_du else None
    for t in range(x.shape[0] - 1, -1, -1):
        h, s = h_seq[t], spikes[t]
        sg = surrogate.grad(h - vth)
        # v[t] = h (1 - s): dv/dh = (1 - s) - h g, the second term only without detach_reset
        g_spike = grad_spikes[t] if detach_reset else grad_spikes[t] - grad_v * h
        grad_h = torch.addcmul(g_spike * sg, grad_v, 1.0 - s)
        if need_vth:
            sums[2] -= (g_spike * sg).sum()
        if need_bias:
            sums[3] += grad_h.sum()
        if need_dv and t > 0:
            sums[1] -= (grad_h * (h_seq[t - 1] * (1.0 - spikes[t - 1]))).sum()
        grad_v = grad_h * (1.0 - dv)
        grad_u = grad_h + grad_u * (1.0 - du)
        grad_x[t] = grad_u
        if need_du and t > 0:
            sums[0] -= (grad_u * u_seq[t - 1]).sum()
    return grad_x, sums


class _FusedLIF(torch.autograd.Function):
    """The whole time loop in one autograd node.

    float32 CPU tensors go through the compiled kernel (``lif_kernel``), which saves only the input
    and recomputes the membrane in backward. Other dtypes, or a machine without a C compiler, run
    the same equations as a loop of torch operations that saves the membrane ``h`` and the spikes.
    """

    @staticmethod
    def forward(ctx, x, du, dv, vth, bias, surrogate, detach_reset):
        du_f, dv_f, vth_f, b_f = float(du), float(dv), float(vth), float(bias)
        ctx.consts = (du_f, dv_f, vth_f, b_f, surrogate, detach_reset)
        if lif_kernel.usable(x):
            x = x.contiguous()
            spikes, non_finite = lif_kernel.forward(x, du_f, dv_f, vth_f, b_f)
            if non_finite:
                raise NonFiniteError(f"x contains {non_finite} NaN or Inf value(s)")
            ctx.save_for_backward(x)  # the kernel re-runs the dynamics in backward: no h to keep
            return spikes
        spikes, h_seq = _torch_forward(x, du_f, dv_f, vth_f, b_f)
        ctx.save_for_backward(x, h_seq, spikes)
        return spikes

    @staticmethod
    def backward(ctx, grad_spikes):
        du_f, dv_f, vth_f, b_f, surrogate, detach_reset = ctx.consts
        need = ctx.needs_input_grad[1:5]  # du, dv, vth, bias
        if len(ctx.saved_tensors) == 1:  # the compiled kernel ran the forward pass
            (x,) = ctx.saved_tensors
            grad_x, sums = lif_kernel.backward(grad_spikes, x, du_f, dv_f, vth_f, b_f, surrogate,
                                               detach_reset, any(need))
            sums = [torch.tensor(v, dtype=x.dtype) for v in sums]
        else:
            x, h_seq, spikes = ctx.saved_tensors
            grad_x, sums = _torch_backward(grad_spikes, x, h_seq, spikes, du_f, dv_f, vth_f, surrogate,
                                           detach_reset, need)
        return grad_x, *(g if n else None for g, n in zip(sums, need)), None, None


def lif_sequence(
    x: torch.Tensor,
    du: torch.Tensor | float = 1.0,
    dv: torch.Tensor | float = 0.5,
    vth: torch.Tensor | float = 1.0,
    bias: torch.Tensor | float = 0.0,
    surrogate: str | object = "atan",
    detach_reset: bool = False,
) -> torch.Tensor:
    """Run the CUBA-LIF over a whole ``[T, B, ...]`` input and return the spikes (same shape).

    A pure function: the state starts at zero and is not returned. Parameters may be floats or
    0-dim tensors (tensors that require grad receive gradients).
    """
    sg = get_surrogate(surrogate) if isinstance(surrogate, str) else surrogate
    params = [p if isinstance(p, torch.Tensor) else torch.tensor(float(p)) for p in (du, dv, vth, bias)]
    return _FusedLIF.apply(x, *params, sg, detach_reset)


def lif_reference(x, du=1.0, dv=0.5, vth=1.0, bias=0.0):
    """Step-by-step float64 reference of the equations above; returns (spikes, u, v) sequences."""
    u = torch.zeros_like(x[0], dtype=torch.float64)
    v = torch.zeros_like(u)
    out_s, out_u, out_v = [], [], []
    for t in range(x.shape[0]):
        u = u * (1 - du) + x[t].double()
        h = v * (1 - dv) + u + bias
        s = (h > vth).double()
        v = h * (1 - s)
        out_s.append(s), out_u.append(u), out_v.append(v)
    return torch.stack(out_s), torch.stack(out_u), torch.stack(out_v)


class LIFPopulation(nn.Module):
    """A population of CUBA-LIF neurons run over a ``[T, B, ...]`` sequence (equations above).

    Args:
        du: current decay in [0, 1]; 1 means the current is the input of the step.
        dv: voltage decay in [0, 1]; ``tau = 1/dv`` in SpikingJelly's terms.
        vth: firing threshold (> 0).
        bias: constant input current added every step.
        surrogate: 'atan', 'sigmoid' or 'fast_sigmoid'.
        alpha: surrogate sharpness; None keeps the surrogate's default.
        learn_threshold: make ``vth`` (and ``bias``) trainable parameters.
        learn_decay: make ``du`` and ``dv`` trainable parameters (clamped to [0, 1] in forward).
        detach_reset: stop the gradient through the reset term.
        engine: 'native' (fused, default) or 'spikingjelly' (wraps ``LIFNode``; needs du = 1).

    Shapes: input ``[T, B, ...]`` float, output spikes ``[T, B, ...]`` in {0, 1}, same dtype.
    """

    def __init__(
        self,
        du: float = 1.0,
        dv: float = 0.5,
        vth: float = 1.0,
        bias: float = 0.0,
        surrogate: str = "atan",
        alpha: Optional[float] = None,
        learn_threshold: bool = False,
        learn_decay: bool = False,
        detach_reset: bool = False,
        engine: str = "native",
    ) -> None:
        super().__init__()
        check_fraction(du, "du")
        check_fraction(dv, "dv")
        if not float(vth) > 0:
            raise SpikingAttnError(f"vth must be positive, got {vth}")
        self.engine = check_choice(engine, "engine", ENGINES)
        self.surrogate = get_surrogate(surrogate, alpha)
        self.detach_reset = bool(detach_reset)
        self._register("du", du, learn_decay)
        self._register("dv", dv, learn_decay)
        self._register("vth", vth, learn_threshold)
        self._register("bias", bias, learn_threshold)
        self._sj_node = None
        if engine == "spikingjelly":
            self._sj_node = self._build_spikingjelly_node(learn_threshold or learn_decay)

    def _register(self, name: str, value: float, learnable: bool) -> None:
        tensor = torch.tensor(float(value))
        if learnable:
            setattr(self, name, nn.Parameter(tensor))
        else:
            self.register_buffer(name, tensor)

    def _build_spikingjelly_node(self, learnable: bool):
        if learnable:
            raise SpikingAttnError("engine='spikingjelly' does not support learnable threshold or decays")
        if float(self.du) != 1.0:
            raise SpikingAttnError(f"engine='spikingjelly' needs du=1 (no current decay), got du={float(self.du)}")
        if float(self.dv) >= 1.0:
            raise SpikingAttnError(f"engine='spikingjelly' needs dv < 1 (tau = 1/dv > 1), got dv={float(self.dv)}")
        from spikingjelly.activation_based import neuron

        # SpikingJelly fires on h >= vth; the next float32 above vth makes that our strict h > vth.
        vth_strict = float(np.nextafter(np.float32(float(self.vth)), np.float32(np.inf)))
        tau = 1.0 / float(self.dv) if float(self.dv) > 0 else float("inf")
        return neuron.LIFNode(
            tau=tau,
            decay_input=False,
            v_threshold=vth_strict,
            v_reset=0.0,
            surrogate_function=self.surrogate.spikingjelly(),
            detach_reset=self.detach_reset,
            step_mode="m",
        )

    def extra_repr(self) -> str:
        return (
            f"du={float(self.du):g}, dv={float(self.dv):g}, vth={float(self.vth):g}, "
            f"bias={float(self.bias):g}, surrogate={self.surrogate.name}, engine={self.engine}"
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # NaN/Inf are caught inside the engines: the compiled kernel counts them in its own pass
        check_tensor(x, "x", ndim=range(2, 8), finite=False)
        if self._sj_node is None:
            du = self.du.clamp(0.0, 1.0) if isinstance(self.du, nn.Parameter) else self.du
            dv = self.dv.clamp(0.0, 1.0) if isinstance(self.dv, nn.Parameter) else self.dv
            return _FusedLIF.apply(x, du, dv, self.vth, self.bias, self.surrogate, self.detach_reset)
        check_tensor(x, "x")
        node = self._sj_node
        node.reset()  # every call is a new sequence
        try:
            b = float(self.bias)
            return node(x + b if b != 0.0 else x)
        finally:
            node.reset()  # drop the last membrane (and its graph) so nothing is kept
