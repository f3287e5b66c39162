"""Regularisers the mechanisms train with, chosen by name and weight (``--reg NAME=WEIGHT``).

Each one reads what the model reported while it ran (``auxiliary.collect``) or the spikes of its
populations, and returns a scalar added to the loss with its weight; ``train`` logs every one per
epoch in ``metrics.json`` (``history["reg_<name>"]``). A regulariser with nothing to act on (no
basal forebrain for ``arousal_prior``, say) contributes zero.

* ``arousal_prior``: KL divergence from the batch's mean arousal distribution to the uniform one,
  so that every arousal state gets used (basal forebrain).
* ``free_energy``: the predictive modules' free energy (``predictive.free_energy_loss``).
* ``rate_target``: mean squared distance of every population's firing rate from ``target_rate``.
* ``head_diversity``: mean positive cosine similarity between the outputs of an attention's heads,
  so that heads learn different things.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List

import torch
from torch import nn

from .neuron import LIFOutput, populations
from .registry import Registry


@dataclass(frozen=True)
class RegularizerInputs:
    """What a regulariser may read: reported signals by name, and population spikes (with gradients)."""

    reports: Dict[str, List[torch.Tensor]]
    spikes: List[torch.Tensor]
    target_rate: float


@dataclass(frozen=True)
class RegularizerSpec:
    name: str
    summary: str
    compute: Callable[[RegularizerInputs], torch.Tensor]
    needs_spikes: bool = False


REGULARIZERS: Registry[RegularizerSpec] = Registry("regularizer")


def _zero(inputs: RegularizerInputs) -> torch.Tensor:
    return torch.zeros(())


def arousal_prior(inputs: RegularizerInputs) -> torch.Tensor:
    terms = []
    for p in inputs.reports.get("arousal", []):
        mean = p.mean(0).clamp_min(1e-6)
        mean = mean / mean.sum()  # [S], a distribution
        terms.append((mean * (mean.log() + torch.log(torch.tensor(float(mean.numel()))))).sum())  # KL(mean || uniform)
    return torch.stack(terms).mean() if terms else _zero(inputs)


def free_energy(inputs: RegularizerInputs) -> torch.Tensor:
    terms = inputs.reports.get("free_energy", [])
    return torch.stack(terms).mean() if terms else _zero(inputs)


def rate_target(inputs: RegularizerInputs) -> torch.Tensor:
    if not inputs.spikes:
        return _zero(inputs)
    return torch.stack([(s.mean() - inputs.target_rate) ** 2 for s in inputs.spikes]).mean()


def head_diversity(inputs: RegularizerInputs) -> torch.Tensor:
    terms = []
    for heads in inputs.reports.get("heads", []):  # [..., N, H, Dh] per attention call
        h = heads.shape[-2]
        if h < 2:
            continue
        flat = heads.movedim(-2, 0).reshape(h, -1)  # [H, everything else]
        unit = flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-6)
        similarity = unit @ unit.T  # [H, H]
        off = similarity[~torch.eye(h, dtype=torch.bool)]
        terms.append(off.clamp_min(0).mean())
    return torch.stack(terms).mean() if terms else _zero(inputs)


for _spec in (
    RegularizerSpec("arousal_prior", "KL from the mean arousal distribution to the uniform one", arousal_prior),
    RegularizerSpec("free_energy", "free energy of the predictive modules", free_energy),
    RegularizerSpec("rate_target", "squared distance of every population's rate from the target rate", rate_target,
                    needs_spikes=True),
    RegularizerSpec("head_diversity", "cosine similarity between the outputs of attention heads", head_diversity),
):
    REGULARIZERS.register(_spec.name, _spec)


@contextmanager
def population_spikes(model: nn.Module) -> Iterator[List[torch.Tensor]]:
    """Collect the output spikes of every population of ``model`` (with their graph) while inside."""
    spikes: List[torch.Tensor] = []

    def hook(_module, _args, output):
        spikes.append(output.spikes if isinstance(output, LIFOutput) else output)

    handles = [pop.register_forward_hook(hook) for _, pop in populations(model)]
    try:
        yield spikes
    finally:
        for handle in handles:
            handle.remove()


def regularization(weights: Dict[str, float], inputs: RegularizerInputs) -> tuple:
    """``(weighted sum, {name: unweighted value})`` of the regularisers in ``weights``."""
    values = {name: REGULARIZERS.get(name).compute(inputs) for name in weights}
    total = sum((weights[name] * value for name, value in values.items()), torch.zeros(()))
    return total, values
