"""Spike recording with forward hooks, for rasters, firing rates, energy counts and engine comparisons.

    with SpikeRecorder(model) as rec:
        model(x)
    rec.spikes["blocks.0.attn.q_lif"]   # [T, B, ...] spikes of that population
    rec.firing_rates()                   # {population name: mean spikes per neuron per step}

Works on any model: it finds every ``LIFPopulation`` by walking ``model.named_modules()``.
Hooks are removed when the ``with`` block ends, even on error.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
from torch import nn

from .neuron import LIFPopulation


class SpikeRecorder:
    """Record the output spikes of every LIF population in ``model``.

    Args:
        model: any ``nn.Module``.
        names: only record these populations (default: all).
        keep: 'spikes' keeps full tensors (detached, on CPU, concatenated over calls along the
            batch axis); 'counts' keeps only spike and neuron-step totals, for long runs.
    """

    def __init__(self, model: nn.Module, names: Optional[Iterable[str]] = None, keep: str = "spikes") -> None:
        if keep not in ("spikes", "counts"):
            raise ValueError(f"keep must be 'spikes' or 'counts', got {keep!r}")
        self.model = model
        self.keep = keep
        pops = {n: m for n, m in model.named_modules() if isinstance(m, LIFPopulation)}
        if names is not None:
            names = list(names)
            missing = [n for n in names if n not in pops]
            if missing:
                raise ValueError(f"no LIF population named {missing[0]!r} in the model")
            pops = {n: pops[n] for n in names}
        self.populations: Dict[str, LIFPopulation] = pops
        self._chunks: Dict[str, list] = {n: [] for n in pops}
        self.counts: Dict[str, list] = {n: [0.0, 0] for n in pops}  # [spikes, neuron-steps]
        self._handles: list = []

    def _hook(self, name: str):
        def record(_module, _inputs, output):
            out = output.detach()
            self.counts[name][0] += float(out.sum())
            self.counts[name][1] += out.numel()
            if self.keep == "spikes":
                self._chunks[name].append(out.cpu())
        return record

    def __enter__(self) -> "SpikeRecorder":
        self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.populations.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def spikes(self) -> Dict[str, torch.Tensor]:
        """Recorded spikes per population, ``[T, B_total, ...]`` (calls joined along the batch axis)."""
        if self.keep != "spikes":
            raise ValueError("spikes were not kept; create the recorder with keep='spikes'")
        return {n: torch.cat(c, dim=1) for n, c in self._chunks.items() if c}

    def firing_rates(self) -> Dict[str, float]:
        """Mean spikes per neuron per time step, for each population that ran."""
        return {n: s / k for n, (s, k) in self.counts.items() if k}
