"""The integrated block: thalamic gating, pulvinar synchronization, basal-forebrain modulation and
predictive processing side by side on one input, mixed by learned weights. Registry entry
``integrated``.

Both twins::

    s     = pre_attn(x)                                   the normalised input (activation or spikes)
    c_k   = mechanism_k(s, cue)                           k in thalamic, pulvinar, basal_forebrain, predictive
    w     = softmax(integration)                          learnable integration weights
    x     = x + sum_k w_k c_k                             residual (on the membrane stream, spiking)
    x     = x + mlp(pre_mlp(x))

Top-down context reaches the block twice: through the thalamic controller, which reads the cue, and
as an extra token (``MechanismSpec.cue_token``), so that the pulvinar, basal-forebrain and
predictive components, which do not read the cue themselves, see the task as well.

``block(x, cue=cue, return_components=True)`` also returns each component, the predictive module's
prediction error and the weights. Every part is the twin of the same name in its mechanism's file,
so the parameter names match across twins (``thalamic.gate.vth``, ``pulvinar.route.bias``, ...).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..attention import ACTIVATIONS
from ..block import DenseMLP, SpikingMLP
from ..converters.rules import conversion_rule
from ..errors import check_choice, check_int
from ..neuron import population
from ..opcount import count_rule
from . import MechanismSpec, register_mechanism
from .basal_forebrain import SHIFTS, DenseBasalForebrain, SpikingBasalForebrain
from .predictive import ORDERS, DensePredictiveCoding, SpikingPredictiveCoding
from .pulvinar import DensePulvinarSync, SpikingPulvinarSync
from .thalamic_gating import DenseThalamicGating, SpikingThalamicGating

COMPONENTS = ("thalamic", "pulvinar", "basal_forebrain", "predictive")


@dataclass(frozen=True)
class IntegratedOptions:
    """The options of the four mechanisms it combines (``shift`` is the basal forebrain's, ``order`` the
    predictive module's)."""

    controller_hidden: int = 32
    areas: int = 4
    states: int = 3
    levels: int = 2
    shift: str = "threshold"
    order: str = "mean_first"

    def __post_init__(self) -> None:
        check_choice(self.shift, "shift", SHIFTS)
        check_choice(self.order, "order", ORDERS)
        check_int(self.controller_hidden, "controller_hidden", low=1, high=4096)
        check_int(self.areas, "areas", low=1, high=64)
        check_int(self.states, "states", low=1, high=64)
        check_int(self.levels, "levels", low=1, high=16)


class _Integration(nn.Module):
    """The learnable mixture of the components and what ``return_components`` exposes."""

    def __init__(self) -> None:
        super().__init__()
        self.integration = nn.Parameter(torch.zeros(len(COMPONENTS)))

    def mix(self, s: torch.Tensor, cue: Optional[torch.Tensor], return_components: bool):
        parts, details = {}, {}
        for name in COMPONENTS:
            module = getattr(self, name)
            if name in ("basal_forebrain", "predictive"):
                parts[name], details[name] = module(s, cue=cue, return_components=True)
            else:
                parts[name] = module(s, cue=cue)
        weights = self.integration.softmax(0)
        mixed = sum(w * parts[name] for w, name in zip(weights, COMPONENTS))
        if not return_components:
            return mixed, None
        return mixed, {"components": parts, "weights": dict(zip(COMPONENTS, weights)),
                       "prediction_error": details["predictive"]["prediction_error"],
                       "arousal": details["basal_forebrain"]["arousal"], "details": details}


class DenseIntegratedBlock(_Integration):
    """Dense twin. ``x`` ``[B, N, D]``, ``cue`` ``[B, C]`` or None -> ``[B, N, D]``."""

    def __init__(self, config, options: IntegratedOptions) -> None:
        super().__init__()
        c, act = config, config.dense_act
        self.pre_attn_act = ACTIVATIONS[act]()
        self.thalamic = DenseThalamicGating(c.dim, c.heads, c.dense_attention, c.causal, c.num_cues,
                                            options.controller_hidden, act)
        self.pulvinar = DensePulvinarSync(c.dim, options.areas, act)
        self.basal_forebrain = DenseBasalForebrain(c.dim, c.heads, c.dense_attention, c.causal, options.states, act)
        self.predictive = DensePredictiveCoding(c.dim, options.levels, act)
        self.pre_mlp_act = ACTIVATIONS[act]()
        self.mlp = DenseMLP(c.dim, int(c.dim * c.mlp_ratio), act)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        mixed, parts = self.mix(self.pre_attn_act(x), cue, return_components)
        x = x + mixed
        x = x + self.mlp(self.pre_mlp_act(x))
        return (x, parts) if return_components else x


class SpikingIntegratedBlock(_Integration):
    """Spiking version. ``x`` currents ``[T, B, N, D]``, ``cue`` spikes ``[T, B, C]`` or None -> currents."""

    def __init__(self, config, options: IntegratedOptions) -> None:
        super().__init__()
        c, lif = config, config.lif_kwargs()
        self.pre_attn_lif = population(c.dim, lif)
        self.thalamic = SpikingThalamicGating(c.dim, c.heads, c.attention, c.causal, c.num_cues,
                                              options.controller_hidden, lif)
        self.pulvinar = SpikingPulvinarSync(c.dim, options.areas, lif)
        self.basal_forebrain = SpikingBasalForebrain(c.dim, c.heads, c.attention, c.causal, options.states, lif,
                                                     options.shift)
        self.predictive = SpikingPredictiveCoding(c.dim, options.levels, lif, options.order)
        self.pre_mlp_lif = population(c.dim, lif)
        self.mlp = SpikingMLP(c.dim, int(c.dim * c.mlp_ratio), lif)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        mixed, parts = self.mix(self.pre_attn_lif(x), cue, return_components)
        x = x + mixed  # the residual adds currents to the membrane stream
        x = x + self.mlp(self.pre_mlp_lif(x))
        return (x, parts) if return_components else x


register_mechanism(MechanismSpec(
    name="integrated",
    summary="the four mechanisms side by side on one input, mixed by learned softmax weights, then an MLP",
    spiking_block=SpikingIntegratedBlock,
    dense_block=DenseIntegratedBlock,
    options=IntegratedOptions,
    cue_token=True,  # the cue also enters as a token, so that the three other mechanisms see the task
    readouts=("basal_forebrain.plasticity", "predictive.reconstruct"),
    conversion_options={"shift": "current", "order": "fire_first"},  # its parts', as the mechanisms' own
))


@count_rule(SpikingIntegratedBlock, DenseIntegratedBlock)
def _count_integrated(block: nn.Module, call) -> None:
    """The four components summed (their mixture weights are static scales that fold into each component's
    output layer), and the two residual adds."""
    out = call.output[0] if isinstance(call.output, tuple) else call.output
    call.add(adds=(len(COMPONENTS) - 1) * out.numel() + 2 * out.numel())


@conversion_rule(SpikingIntegratedBlock)
def _convert_integrated(block: SpikingIntegratedBlock, dense: DenseIntegratedBlock, ctx, unit) -> None:
    """Each component takes its own rule on the shared input spikes; their mixture (learned constants) and
    the residual stream are linear."""
    spikes = ctx.threshold(block.pre_attn_lif, dense.pre_attn_act)
    for name in COMPONENTS:
        ctx.convert(getattr(block, name), getattr(dense, name), spikes)
    ctx.convert(block.mlp, dense.mlp, ctx.threshold(block.pre_mlp_lif, dense.pre_mlp_act))
