"""Predictive processing: a hierarchy that predicts the current input and passes on only its errors.

L levels refine a belief about the sequence. Each level predicts the current representation from its
prior (the level below's posterior), weighs the prediction error by a learnable precision, and forms
its posterior from the representation and the weighted error. The top posterior, broadcast over the
sequence, is the module's output. Registry entry ``predictive``.

Dense twin (``DensePredictiveCoding``), ``x`` ``[B, N, D]``::

    r         = mean_n act(encode(x))                     current representation   [B, D]
    prior_0   = act(prior.bias)                           learned, before any evidence
    pred_l    = predict[l](prior_l)
    e_l       = r - pred_l;   w_l = sigmoid(precision[l]) * e_l
    post_l    = act(update[l]([r, relu(w_l), relu(-w_l)]))      prior_{l+1} = post_l
    out       = out_proj(post_{L-1}), the same for every token
    error     = sum_l mean_b ||e_l||^2                     returned ("prediction_error")

``free_energy_loss(components)`` is the objective of predictive coding for that module: the
reconstruction error of ``r`` from the top posterior (``reconstruct``), plus for every level the
precision-weighted squared error minus the log precision (the complexity term that keeps precisions
from collapsing to zero), halved as in a Gaussian negative log-likelihood.

Spiking version (``SpikingPredictiveCoding``): ``r`` is the population ``current_lif`` driven by the
encoding of every token, averaged over the sequence; the prior is a population firing from its
learned bias alone; the error is split by sign into two populations per level, ``error_pos`` driven
by ``r - pred`` and ``error_neg`` by ``pred - r`` (excitation and inhibition of the same synapses), so
both are silent when the prediction is exact. Precision is the synaptic gain onto the error neurons
(their per-call ``gain``). The posterior population reads ``[r, e+, e-]`` spikes. Error spike counts
are the error signal it returns; its free energy is computed from firing rates.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .. import auxiliary
from ..attention import ACTIVATIONS
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..errors import check_choice, check_int
from ..converters.rules import ConversionError, conversion_rule
from ..layers import LinearBN
from ..neuron import LIFPopulation, population
from ..opcount import count_rule
from . import MechanismSpec, register_mechanism


ORDERS = ("mean_first", "fire_first")


@dataclass(frozen=True)
class PredictiveOptions:
    """``levels``: depth of the predictive hierarchy. ``order``: how the spiking version forms its
    representation: 'mean_first' fires one population on the token mean of the encoding (the default, as
    trained so far); 'fire_first' fires a population per token and averages the spikes, which is the
    dense twin's ``mean_n act(encode(x))`` (the form a converted model takes; its update layer then reads
    each token's spikes and averages its output, so its input stays binary)."""

    levels: int = 2
    order: str = "mean_first"

    def __post_init__(self) -> None:
        check_int(self.levels, "levels", low=1, high=16)
        check_choice(self.order, "order", ORDERS)


def free_energy_loss(components: dict) -> torch.Tensor:
    """Free energy of one predictive module from its ``components`` (``return_components=True``):
    reconstruction error + sum over levels of (precision * error^2 - log precision) / 2, averaged over
    the batch and channels."""
    recon = F.mse_loss(components["reconstruction"], components["representation"])
    terms = [(p * e.pow(2) - torch.log(p.clamp_min(1e-6))).mean() / 2
             for e, p in zip(components["errors"], components["precisions"])]
    return recon + torch.stack(terms).sum()


class _Hierarchy(nn.Module):
    """The layers both twins share, under the same names."""

    def __init__(self, dim: int, levels: int) -> None:
        super().__init__()
        self.levels = levels
        self.encode = LinearBN(dim, dim)
        self.predict = nn.ModuleList(nn.Linear(dim, dim) for _ in range(levels))
        self.precision = nn.Parameter(torch.zeros(levels, dim))
        self.update = nn.ModuleList(LinearBN(3 * dim, dim) for _ in range(levels))
        self.out = LinearBN(dim, dim)
        self.reconstruct = nn.Linear(dim, dim)

    def precisions(self) -> torch.Tensor:
        return torch.sigmoid(self.precision)  # [L, D]


class DensePrior(nn.Module):
    """The dense twin of the prior population: ``act(bias)``, a belief held before any evidence."""

    def __init__(self, dim: int, act: str = "relu") -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.full((dim,), 0.5))
        self.act = ACTIVATIONS[act]()

    def forward(self, batch: int) -> torch.Tensor:
        return self.act(self.bias).expand(batch, -1)


class DensePredictiveCoding(_Hierarchy):
    """Dense predictive coding. ``x`` ``[B, N, D]`` -> ``[B, N, D]``; with ``return_components=True``
    also the components ``free_energy_loss`` reads and ``"prediction_error"``."""

    def __init__(self, dim: int, levels: int = 2, act: str = "relu") -> None:
        super().__init__(dim, levels)
        self.act = ACTIVATIONS[act]()
        self.prior = DensePrior(dim, act)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        r = self.act(self.encode(x)).mean(dim=-2)  # [B, D]
        belief = self.prior(r.shape[0])
        errors, total = [], r.new_zeros(())
        for level, precision in enumerate(self.precisions()):
            e = r - self.predict[level](belief)  # [B, D]
            w = precision * e
            belief = self.act(self.update[level](torch.cat([r, F.relu(w), F.relu(-w)], dim=-1)))
            errors.append(e)
            total = total + e.pow(2).sum(-1).mean()
        out = self.out(belief).unsqueeze(-2).expand_as(x)  # [B, N, D]: broadcast over the sequence
        components = {"representation": r, "reconstruction": self.reconstruct(belief), "errors": errors,
                      "precisions": list(self.precisions()), "prediction_error": total}
        auxiliary.report("free_energy", free_energy_loss(components))
        return (out, components) if return_components else out


class SpikingPredictiveCoding(_Hierarchy):
    """Spiking predictive coding. ``x`` spikes ``[T, B, N, D]`` -> currents ``[T, B, N, D]``; with
    ``return_components=True`` also the error spikes per level (``"error_spikes"``: list of
    ``(e+, e-)`` ``[T, B, D]``), their count (``"prediction_error"``) and the rate-based components
    ``free_energy_loss`` reads."""

    def __init__(self, dim: int, levels: int = 2, lif: Optional[dict] = None, order: str = "mean_first") -> None:
        super().__init__(dim, levels)
        self.order = check_choice(order, "order", ORDERS)
        base = {k: v for k, v in (lif or {}).items() if k not in ("per_channel", "learn_bias", "bias")}
        vth, dv = float(base.get("vth", 1.0)), float(base.get("dv", 0.5))
        self.current_lif = population(dim, lif)
        # the prior fires from its bias alone: at rest its membrane would settle at 1.5 thresholds
        self.prior = LIFPopulation(**base, bias=1.5 * vth * dv, shape=(dim,), learn_bias=True)
        self.error_pos = nn.ModuleList(population(dim, lif) for _ in range(levels))
        self.error_neg = nn.ModuleList(population(dim, lif) for _ in range(levels))
        self.belief_lif = nn.ModuleList(population(dim, lif) for _ in range(levels))

    def errors(self, level: int, r: torch.Tensor, prediction: torch.Tensor) -> tuple:
        """Error spikes ``(e+, e-)`` of ``level`` for representation spikes ``r`` and prediction currents."""
        gain = self.precisions()[level]  # [D]: precision is the synaptic gain onto the error neurons
        return self.error_pos[level](r - prediction, gain=gain), self.error_neg[level](prediction - r, gain=gain)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_components: bool = False):
        if self.order == "fire_first":
            per_token = self.current_lif(self.encode(x))  # [T, B, N, D] spikes
            r = per_token.mean(dim=-2)  # [T, B, D]: the share of tokens firing
        else:
            per_token = None
            r = self.current_lif(self.encode(x).mean(dim=-2))  # [T, B, D] spikes
        belief = self.prior(torch.zeros_like(r))  # [T, B, D] spikes of the prior
        error_spikes, errors, total = [], [], r.new_zeros(())
        for level in range(self.levels):
            pos, neg = self.errors(level, r, self.predict[level](belief))
            if per_token is None:
                drive = self.update[level](torch.cat([r, pos, neg], dim=-1))
            else:  # the update reads every token's spikes (binary) and averages: linear, so the same mean
                n = per_token.shape[-2]
                errors_each = torch.cat([pos, neg], dim=-1).unsqueeze(-2).expand(*pos.shape[:-1], n, 2 * pos.shape[-1])
                drive = self.update[level](torch.cat([per_token, errors_each], dim=-1)).mean(dim=-2)
            belief = self.belief_lif[level](drive)
            error_spikes.append((pos, neg))
            errors.append((pos - neg).mean(0))  # [B, D] signed error rate
            total = total + (pos + neg).sum(dim=(0, 2)).mean()  # error spikes per sample
        out = self.out(belief).unsqueeze(-2).expand(*x.shape)  # [T, B, N, D]
        components = {"representation": r.mean(0), "reconstruction": self.reconstruct(belief).mean(0),
                      "errors": errors, "precisions": list(self.precisions()), "prediction_error": total,
                      "error_spikes": error_spikes}
        auxiliary.report("free_energy", free_energy_loss(components))
        return (out, components) if return_components else out


def spiking_block(config, options: PredictiveOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif,
                                   attn=SpikingPredictiveCoding(c.dim, options.levels, lif, options.order))


def dense_block(config, options: PredictiveOptions) -> DenseTransformerBlock:
    c = config
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act,
                                 attn=DensePredictiveCoding(c.dim, options.levels, c.dense_act))


register_mechanism(MechanismSpec(
    name="predictive",
    summary="predictive processing: levels predict the input; sign-split error populations carry what is new",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=PredictiveOptions,
    readouts=("attn.reconstruct",),
    conversion_options={"order": "fire_first"},
))


@count_rule(SpikingPredictiveCoding)
def _count_spiking_predictive(module: SpikingPredictiveCoding, call) -> None:
    """The encoding's mean over tokens, and per level the representation's spikes reaching both error
    populations (one accumulate each; the prediction's current arrives through ``predict``, counted there;
    the precision gain is static and folds into the synapses)."""
    from ..opcount import nnz

    encoded = call.output_of(module.encode)  # [T, B, N, D]
    r = call.output_of(module.current_lif)  # [T, B, D] spikes
    acs = module.levels * 2 * nnz(r)
    call.add(adds=encoded.numel(), acs=acs, weight_reads=acs)


@count_rule(DensePredictiveCoding)
def _count_dense_predictive(module: DensePredictiveCoding, call) -> None:
    """The encoding's mean over tokens; per level the error ``r - prediction``. The precision is positive and
    static, so ``relu(p e) = p relu(e)`` folds into ``update``'s weights; the squared error is a diagnostic
    (the spiking twin's error count is not counted either)."""
    encoded = call.output_of(module.encode)  # [B, N, D]
    call.add(adds=encoded.numel() + module.levels * encoded[..., 0, :].numel())


count_rule(DensePrior)(lambda module, call: None)  # the activation of a learned constant


@conversion_rule(SpikingPredictiveCoding)
def _convert_predictive(coding: SpikingPredictiveCoding, dense: DensePredictiveCoding, ctx, unit) -> None:
    """The representation, prior and beliefs rate-code their ReLUs; the representation is fired per token
    and averaged (``order='fire_first'``, which the converter sets), as the dense twin averages the ReLU
    over tokens. The prior fires from its bias alone. Predictions are rescaled into
    the representation's units, so that ``r - prediction`` is the dense error over lambda_r; the error
    populations code ``relu(+-precision * error)`` with the scale those values reach on the calibration
    set; the update layer reads representation and error spikes, each with its own value."""
    if coding.order != "fire_first":
        raise ConversionError(f"{ctx.name(coding)}: a converted predictive module fires its representation per "
                              f"token (mechanism option order='fire_first'); this one fires on the token mean")
    d = dense.encode.linear.out_features
    ctx.scale_input(coding.encode, unit)
    lam_r = ctx.threshold(coding.current_lif, dense.act)
    belief = ctx.threshold(coding.prior, dense.prior.act)
    for level in range(coding.levels):
        ctx.scale_input(coding.predict[level], belief)
        ctx.scale_output(coding.predict[level], 1.0 / lam_r)
        lam_e = ctx.value_scale(ctx.observe(dense.update[level], lambda args, out: args[0][..., d:]))
        for pop in (coding.error_pos[level], coding.error_neg[level]):
            ctx.set_threshold(pop, lam_e / lam_r, f"relu(+-precision * error) of level {level}")
        ctx.scale_input(coding.update[level], torch.cat([torch.full((d,), lam_r), torch.full((2 * d,), lam_e)]))
        belief = ctx.threshold(coding.belief_lif[level], dense.act)
    ctx.scale_input(coding.out, belief)
