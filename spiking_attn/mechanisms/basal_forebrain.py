"""Basal-forebrain modulation: acetylcholine sets how strongly cortex responds and how easily it fires.

An arousal estimator reads the sequence and gives probabilities over S arousal states. Each state
has its own per-channel gains and threshold shifts; the probabilities mix them, and the mixture
modulates the attention's query, key and value neurons. Registry entry ``basal_forebrain``.

Dense twin (``DenseBasalForebrain``), ``x`` ``[B, N, D]``::

    p          = softmax(arousal(mean_n x) + arousal_state.bias - arousal_state.vth)    [B, S]
    gain       = 1 + 0.5 * tanh(p @ state_gain)                                      [B, D]
    shift      = p @ state_threshold                                                 [B, D]
    q, k, v    = act(gain * proj(x) - shift)        (the modulated pre-activations of attention)
    plasticity = sigmoid(plasticity(mean_n x))       [B, 1], exposed, not applied

Spiking version (``SpikingBasalForebrain``): neuromodulation acts on the populations themselves. The
arousal population (``arousal_state``, one neuron per state, poised at threshold) is driven by the
arousal projection of every token's spikes, averaged over the sequence and centred across the
states: shared inhibition, so the most-driven state fires first (a soft winner-take-all). At each
step the states that fired select their rows of ``state_gain`` and ``state_threshold``; that sets the
input-current gain ``1 + 0.5 tanh(.)`` and the threshold shift of the Q, K and V populations (their
per-call modulation, ``LIFPopulation(x, gain=..., threshold_shift=...)``). A step where no state
fires leaves them unmodulated. Arousal probabilities are the states' firing rates, normalised (uniform
for a sample in which no state fired).

Both report ``"arousal"`` (probabilities ``[B, S]``) to ``auxiliary.collect`` for the arousal-prior
regulariser.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from .. import auxiliary
from ..attention import (DenseSelfAttention, SpikingSelfAttention, convert_route, count_dense_route,
                         count_spiking_route)
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..errors import check_choice, check_int
from ..converters.rules import HARD_SIGMOID_SLOPE, ConversionError, conversion_rule
from ..layers import DenseThresholdOffset
from ..neuron import poised_population, population
from ..opcount import count_rule, nnz
from . import MechanismSpec, register_mechanism


SHIFTS = ("threshold", "current")


@dataclass(frozen=True)
class BasalForebrainOptions:
    """``states``: how many arousal states (3 by default: e.g. drowsy, alert, aroused).
    ``shift``: how the spiking version applies a state's shift to Q, K and V: 'threshold' raises their
    thresholds (the default, as trained so far), 'current' subtracts it from their input current, as the
    dense twin does (the form a converted model takes)."""

    states: int = 3
    shift: str = "threshold"

    def __post_init__(self) -> None:
        check_int(self.states, "states", low=1, high=64)
        check_choice(self.shift, "shift", SHIFTS)


class _StateTables(nn.Module):
    """Per-state gains and threshold shifts, and how a state mixture (or spikes) sets the modulation."""

    def __init__(self, dim: int, states: int) -> None:
        super().__init__()
        self.state_gain = nn.Parameter(torch.randn(states, dim) * 0.5)
        self.state_threshold = nn.Parameter(torch.randn(states, dim) * 0.1)

    def modulation(self, weights: torch.Tensor) -> tuple:
        """``weights`` ``[..., S]`` (probabilities, or state spikes) -> (gain, shift), each ``[..., D]``."""
        return 1 + 0.5 * torch.tanh(weights @ self.state_gain), weights @ self.state_threshold


class DenseBasalForebrain(_StateTables):
    """Dense basal-forebrain modulation of attention. ``x`` ``[B, N, D]`` -> ``[B, N, D]``; with
    ``return_components=True`` also ``{"arousal": [B, S], "gain": [B, D], "shift": [B, D],
    "plasticity": [B, 1]}``."""

    def __init__(self, dim: int, heads: int, kind: str = "softmax", causal: bool = False, states: int = 3,
                 act: str = "relu") -> None:
        super().__init__(dim, states)
        self.attn = DenseSelfAttention(dim, heads, kind, causal, act=act)
        self.arousal = nn.Linear(dim, states)
        self.arousal_state = DenseThresholdOffset(states)
        self.plasticity = nn.Linear(dim, 1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        summary = x.mean(dim=-2)  # [B, D]
        p = self.arousal_state(self.arousal(summary)).softmax(-1)  # [B, S]
        gain, shift = self.modulation(p)  # [B, D] each
        auxiliary.report("arousal", p)
        out = self.attn.out(self.attn.route(x, context, gain=gain.unsqueeze(-2), threshold_shift=shift.unsqueeze(-2)))
        if not return_components:
            return out
        plasticity = torch.sigmoid(self.plasticity(summary))  # [B, 1]
        return out, {"arousal": p, "gain": gain, "shift": shift, "plasticity": plasticity}


class SpikingBasalForebrain(_StateTables):
    """Spiking basal-forebrain modulation. ``x`` spikes ``[T, B, N, D]`` -> currents ``[T, B, N, D]``;
    with ``return_components=True`` also ``{"arousal": [B, S] (normalised rates), "arousal_spikes":
    [T, B, S], "gain": [T, B, D], "shift": [T, B, D], "plasticity": [B, 1] (rate)}``."""

    def __init__(self, dim: int, heads: int, kind: str = "sdsa", causal: bool = False, states: int = 3,
                 lif: Optional[dict] = None, shift: str = "threshold") -> None:
        super().__init__(dim, states)
        self.shift = check_choice(shift, "shift", SHIFTS)
        self.attn = SpikingSelfAttention(dim, heads, kind, causal, lif=lif)
        self.arousal = nn.Linear(dim, states)
        self.arousal_state = poised_population(states, lif)
        self.plasticity = nn.Linear(dim, 1)
        self.plasticity_lif = population(1, lif)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        drive = self.arousal(x).mean(dim=-2)  # [T, B, S]: projected per token, averaged over the sequence
        spikes = self.arousal_state(drive - drive.mean(-1, keepdim=True))  # soft winner-take-all
        gain, shift = self.modulation(spikes)  # [T, B, D]: the rows of the states that fired
        rates = spikes.mean(0)  # [B, S]
        total = rates.sum(-1, keepdim=True)
        p = torch.where(total > 0, rates / total.clamp_min(1e-12), torch.full_like(rates, 1 / rates.shape[-1]))
        auxiliary.report("arousal", p)
        where = "input_shift" if self.shift == "current" else "threshold_shift"
        out = self.attn.out(self.attn.route(x, context, gain=gain.unsqueeze(-2), **{where: shift.unsqueeze(-2)}))
        if not return_components:
            return out
        plasticity = self.plasticity_lif(self.plasticity(x).mean(dim=-2)).mean(0)  # [B, 1]
        return out, {"arousal": p, "arousal_spikes": spikes, "gain": gain, "shift": shift, "plasticity": plasticity}


def spiking_block(config, options: BasalForebrainOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    attn = SpikingBasalForebrain(c.dim, c.heads, c.attention, c.causal, options.states, lif, options.shift)
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif, attn=attn)


def dense_block(config, options: BasalForebrainOptions) -> DenseTransformerBlock:
    c = config
    attn = DenseBasalForebrain(c.dim, c.heads, c.dense_attention, c.causal, options.states, c.dense_act)
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act, attn=attn)


register_mechanism(MechanismSpec(
    name="basal_forebrain",
    summary="basal-forebrain modulation: arousal states set the gain and threshold of attention's populations",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=BasalForebrainOptions,
    readouts=("attn.plasticity",),
    conversion_options={"shift": "current"},
))


@count_rule(SpikingBasalForebrain)
def _count_spiking_basal_forebrain(module: SpikingBasalForebrain, call) -> None:
    """The attention's route (the per-step gain and shift of Q, K and V count in their populations); the
    arousal drive's mean over tokens and its centring; each state spike reading its rows of the gain and
    threshold tables, and the gain's ``1 + 0.5 tanh``. (The plasticity signal is a readout, not counted.)"""
    count_spiking_route(module.attn, call)
    drive, states = call.output_of(module.arousal), call.output_of(module.arousal_state)  # [T,B,N,S], [T,B,S]
    dim = module.state_gain.shape[1]
    modulated = states[..., :1].numel() * dim  # [T, B, D] values of the gain
    table_reads = 2 * nnz(states) * dim
    call.add(acs=table_reads, weight_reads=table_reads, macs=modulated,
             adds=drive.numel() + 2 * states.numel() + modulated)


@count_rule(DenseBasalForebrain)
def _count_dense_basal_forebrain(module: DenseBasalForebrain, call) -> None:
    """The attention's modulated route; the token mean, the softmax over states, the state mixture of the
    gain and threshold tables and the gain's tanh. (The plasticity signal is a readout, not counted.)"""
    count_dense_route(module.attn, call, modulated=True)
    x = call.args[0]  # [B, N, D]
    b, _, d = x.shape
    s = module.state_gain.shape[0]
    table = 2 * b * s * d
    call.add(macs=2 * b * s + table + b * d, weight_reads=table, adds=x.numel() + b * s + b * d)


@conversion_rule(SpikingBasalForebrain)
def _convert_basal_forebrain(module: SpikingBasalForebrain, dense: DenseBasalForebrain, ctx, unit) -> None:
    """Q, K and V rate-code the dense modulated activations: their input is ``gain * z - shift`` at every
    step (``shift='current'``, which the converter sets), and the shift, linear in the state spikes,
    equals the dense ``p @ state_threshold`` on average. The arousal softmax over S states is linearised
    at uniform arousal, ``p_s ~ 1/S + (l_s - mean l)/S``: the spiking twin already centres the drive,
    so the arousal weights are divided by S, the dense offset folds into their bias, and a state neuron
    of threshold 1 and bias 1/S fires at that rate. The gain ``1 + tanh(.)/2`` is taken per step of the
    states that fired, which equals the dense gain of the mean only where tanh is near linear
    (approximate). The plasticity readout is a hard sigmoid."""
    if module.shift != "current":
        raise ConversionError(f"{ctx.name(module)}: a converted basal forebrain subtracts its shift from the input "
                              f"current (mechanism option shift='current'); this one shifts thresholds")
    ctx.scale_input(module.attn.out, convert_route(module.attn, dense.attn, ctx, unit))
    states = module.state_gain.shape[0]
    ctx.scale_input(module.arousal, unit)
    ctx.scale_output(module.arousal, 1.0 / states, (dense.arousal_state.bias - dense.arousal_state.vth).detach() / states)
    with torch.no_grad():
        module.arousal_state.bias.fill_(1.0 / states)
    ctx.set_threshold(module.arousal_state, 1.0, "softmax over arousal states, linearised at uniform arousal")
    ctx.scale_input(module.plasticity, unit)
    ctx.scale_output(module.plasticity, HARD_SIGMOID_SLOPE, 0.5)
    ctx.set_threshold(module.plasticity_lif, 1.0, "hard sigmoid of the dense plasticity readout")
