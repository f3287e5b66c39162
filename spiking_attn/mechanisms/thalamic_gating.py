"""Thalamic gating: higher-order thalamus opens and closes the heads of cortical attention.

A top-down cue reaches a small controller (the thalamic nucleus), which sets one gate per attention
head; a head's output reaches the cortex only while its gate is open. Registry entry ``thalamic``.

Dense twin (``DenseThalamicGating``)::

    z     = controller_out(ReLU(controller_in(cue)))             [B, H]   (0 without a cue)
    g     = sigmoid(z + gate.bias - gate.vth)                    [B, H]   one gate in (0, 1) per head
    g'    = g * H / (sum_h g + eps)                              gated attention is renormalised
    out   = attn.out(head_h(attention(x)) * g'_h)

Spiking version (``SpikingThalamicGating``): the cue arrives as spikes ``[T, B, C]``; the controller
is ``controller_in -> LIF -> controller_out``; the gate is a population with one neuron per head,
whose learnable threshold and bias are ``gate.vth`` and ``gate.bias``. It starts poised at threshold
(``neuron.poised_population``): net excitation from the controller opens a gate, inhibition shuts it,
and without a cue the learned bias alone sets it. A head's routed spike passes only when its gate neuron fired at the same step: the
product of two spike trains, an AND, which is a coincidence neuron on hardware. Gate firing is
returned with ``return_gates=True``. There is no renormalisation in the spiking version: a spike is
passed or not. The inner attention is SSA or SDSA (``config.attention``).

Both versions carry the same parameter names (``attn.*``, ``controller_in``, ``controller_out``,
``gate.vth``, ``gate.bias``), so weights copy across by name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..attention import (DenseSelfAttention, SpikingSelfAttention, convert_route, count_dense_route,
                         count_spiking_route, export_route, routed_spikes)
from ..converters.rules import HARD_SIGMOID_SLOPE, conversion_rule
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..errors import check_int
from ..graph import Current, export_rule
from ..layers import DenseThresholdOffset
from ..neuron import poised_population, population
from ..opcount import count_rule, mask_events
from . import MechanismSpec, register_mechanism


@dataclass(frozen=True)
class ThalamicOptions:
    """``controller_hidden``: width of the controller between the cue and the gates."""

    controller_hidden: int = 32

    def __post_init__(self) -> None:
        check_int(self.controller_hidden, "controller_hidden", low=1, high=4096)


def _gate_heads(routed: torch.Tensor, gates: torch.Tensor, heads: int) -> torch.Tensor:
    """Multiply each head's channels by its gate: ``routed`` ``[..., N, D]``, ``gates`` ``[..., H]``."""
    *lead, n, d = routed.shape
    per_head = routed.reshape(*lead, n, heads, d // heads)  # [..., N, H, Dh]
    return (per_head * gates.unsqueeze(-2).unsqueeze(-1)).reshape(*lead, n, d)  # [..., N, D]


class DenseThalamicGating(nn.Module):
    """Multihead attention whose heads a cue-driven controller gates.

    Args:
        dim, heads, kind, causal: the inner attention (``DenseSelfAttention``).
        num_cues: width of the cue (0: no controller; the gate bias alone sets the gates).
        hidden: controller width.
        act: activation of the inner attention.

    Call: ``x`` ``[B, N, D]``, ``cue`` ``[B, C]`` or None -> ``[B, N, D]`` (and gates ``[B, H]`` with
    ``return_gates=True``).
    """

    def __init__(self, dim: int, heads: int, kind: str = "softmax", causal: bool = False, num_cues: int = 0,
                 hidden: int = 32, act: str = "relu") -> None:
        super().__init__()
        self.heads = heads
        self.attn = DenseSelfAttention(dim, heads, kind, causal, act=act)
        self.controller_in = nn.Linear(num_cues, hidden) if num_cues else None
        self.controller_act = nn.ReLU()
        self.controller_out = nn.Linear(hidden, heads) if num_cues else None
        self.gate = DenseThresholdOffset(heads)  # the dense twin of the gate population

    def gates(self, cue: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """One gate in (0, 1) per head, ``[B, H]``."""
        if cue is None or self.controller_in is None:
            z = like.new_zeros(like.shape[0], self.heads)
        else:
            z = self.controller_out(self.controller_act(self.controller_in(cue)))  # [B, H]
        return torch.sigmoid(self.gate(z))

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_gates: bool = False):
        g = self.gates(cue, x)  # [B, H]
        weights = g * self.heads / (g.sum(-1, keepdim=True) + 1e-6)  # renormalised
        out = self.attn.out(_gate_heads(self.attn.route(x, context), weights, self.heads))  # [B, N, D]
        return (out, g) if return_gates else out


class SpikingThalamicGating(nn.Module):
    """Spiking thalamic gating: a gate population, one neuron per head, driven by the cue's spikes.

    Args:
        dim, heads, kind, causal: the inner attention (``SpikingSelfAttention``, SSA or SDSA).
        num_cues: width of the cue (0: no controller; the gate bias alone drives the gates).
        hidden: controller width.
        lif: keyword arguments of the model's populations.

    Call: ``x`` spikes ``[T, B, N, D]``, ``cue`` spikes ``[T, B, C]`` or None -> currents
    ``[T, B, N, D]`` (and gate spikes ``[T, B, H]`` with ``return_gates=True``).
    """

    def __init__(self, dim: int, heads: int, kind: str = "sdsa", causal: bool = False, num_cues: int = 0,
                 hidden: int = 32, lif: Optional[dict] = None) -> None:
        super().__init__()
        lif = dict(lif or {})
        self.heads = heads
        self.attn = SpikingSelfAttention(dim, heads, kind, causal, lif=lif)
        self.controller_in = nn.Linear(num_cues, hidden) if num_cues else None
        self.controller_lif = population(hidden, lif)
        self.controller_out = nn.Linear(hidden, heads) if num_cues else None
        self.gate = poised_population(heads, lif)  # opens on net excitation from the controller

    def gates(self, cue: Optional[torch.Tensor], like: torch.Tensor) -> torch.Tensor:
        """Gate spikes ``[T, B, H]``: the gate population driven by the controller (or its bias alone)."""
        if cue is None or self.controller_in is None:
            current = like.new_zeros(like.shape[0], like.shape[1], self.heads)  # [T, B, H]
        else:
            current = self.controller_out(self.controller_lif(self.controller_in(cue)))  # [T, B, H]
        return self.gate(current)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_gates: bool = False):
        g = self.gates(cue, x)  # [T, B, H] spikes
        routed = _gate_heads(self.attn.route(x, context), g, self.heads)  # a head's spikes AND its gate's
        out = self.attn.out(routed)  # [T, B, N, D]
        return (out, g) if return_gates else out


@export_rule(SpikingThalamicGating)
def _export_thalamic(gating: SpikingThalamicGating, graph, x, context=None, *, cue=None):
    """Controller and gate populations form the core group ``thalamic_gating``; a head's routed spike
    and its gate's spike meet at a coincidence population (an AND)."""
    name = graph.name_of(gating)
    routed = export_route(gating.attn, graph, x, context)  # [N, D]
    with graph.group(f"thalamic_gating:{name}"):
        if cue is None or gating.controller_in is None:
            drive = Current(graph, (gating.heads,))  # no drive: the bias alone sets the gates
        else:
            hidden = graph.population(gating.controller_lif, graph.dense(gating.controller_in, cue))
            drive = graph.dense(gating.controller_out, hidden)
        gates = graph.population(gating.gate, drive)  # [H]
    n, d = routed.shape
    spread = graph.linear_map(gates, lambda g: g[:, None, :, None].expand(g.shape[0], n, gating.heads,
                                                                            d // gating.heads).reshape(-1, n, d))
    passed = graph.logic(f"{name}.head_and_gate", routed.current() + spread, 1.5)
    return graph.dense(gating.attn.out, passed)


def spiking_block(config, options: ThalamicOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    attn = SpikingThalamicGating(c.dim, c.heads, c.attention, c.causal, c.num_cues, options.controller_hidden, lif)
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif, attn=attn)


def dense_block(config, options: ThalamicOptions) -> DenseTransformerBlock:
    c = config
    attn = DenseThalamicGating(c.dim, c.heads, c.dense_attention, c.causal, c.num_cues, options.controller_hidden,
                               c.dense_act)
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act, attn=attn)


register_mechanism(MechanismSpec(
    name="thalamic",
    summary="thalamic gating: a cue-driven controller opens and closes attention heads (gate population per head)",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=ThalamicOptions,
))


@count_rule(SpikingThalamicGating)
def _count_spiking_thalamic(gating: SpikingThalamicGating, call) -> None:
    """The inner attention's route, and the AND of each head's routed spikes with its gate's."""
    count_spiking_route(gating.attn, call)
    routed = routed_spikes(gating.attn, call)  # [T, B, N, D]
    per_head = routed.reshape(*routed.shape[:-1], gating.heads, -1)  # [T, B, N, H, Dh]
    gates = call.output_of(gating.gate)  # [T, B, H]
    call.add(masks=mask_events(per_head, gates.unsqueeze(-2).unsqueeze(-1)))


@count_rule(DenseThalamicGating)
def _count_dense_thalamic(gating: DenseThalamicGating, call) -> None:
    """The inner attention's route; the sigmoid gates, their renormalisation, and gate times routed value."""
    count_dense_route(gating.attn, call)
    q = call.output_of(gating.attn.q)  # [B, N, D]: the routed values have its shape
    gates = q.shape[0] * gating.heads
    call.add(macs=2 * gates + q.numel(), adds=gates)


@conversion_rule(SpikingThalamicGating)
def _convert_thalamic(gating: SpikingThalamicGating, dense: DenseThalamicGating, ctx, unit) -> None:
    """The controller rate-codes its ReLU. The gate ``sigmoid(z + bias - vth)`` becomes the rate of an
    integrate-and-fire neuron of threshold 1 fed ``(z + bias - vth) / 4 + 1/2`` (a hard sigmoid, exact at
    the centre and in the tails within 0.12). The dense twin's renormalisation ``H / sum_h g`` has no
    spiking counterpart (a spike passes or not): its mean over the calibration set folds into the output
    weights. The gate's AND with the routed spikes is a product of rates on average (approximate)."""
    routed = convert_route(gating.attn, dense.attn, ctx, unit)
    with torch.no_grad():
        if gating.controller_in is not None:
            ctx.scale_output(gating.controller_out, HARD_SIGMOID_SLOPE)
            ctx.scale_input(gating.controller_out, ctx.threshold(gating.controller_lif, dense.controller_act))
        gating.gate.bias.copy_((dense.gate.bias - dense.gate.vth) * HARD_SIGMOID_SLOPE + 0.5)
    ctx.set_threshold(gating.gate, 1.0, "hard sigmoid of the dense gate")
    renorm = ctx.observe(dense.gate, lambda args, out: dense.heads / (torch.sigmoid(out).sum(-1) + 1e-6))
    ctx.scale_input(gating.attn.out, routed * float(renorm.mean()))
