"""Spike recording with forward hooks, for rasters, firing rates, energy counts and engine comparisons.

    with SpikeRecorder(model) as rec:
        model(x)
    rec.spikes["blocks.0.attn.q_lif"]   # [T, B, ...] spikes of that population
    rec.firing_rates()                   # {population name: mean spikes per neuron per step}

    with SpikeRecorder(model, membrane=True) as rec:
        model(x)
    rec.membranes["blocks.0.attn.q_lif"]  # [T, B, ...] membrane after reset, step by step

Works on any model: it finds every ``LIFPopulation`` by walking ``model.named_modules()``. The
membrane is taken from the population's output when the caller asked for it, and otherwise
recomputed from the same input and modulation without a gradient, so recording never changes what
the model returns. Hooks are removed when the ``with`` block ends, even on error.
"""
from __future__ import annotations

import inspect
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from .errors import DTypeError, SpikingAttnError, check_bool, check_choice
from .neuron import LIFOutput, LIFPopulation


class SpikeRecorder:
    """Record the output spikes (and optionally the membrane) of every LIF population in ``model``.

    Args:
        model: any ``nn.Module``.
        names: only record these populations (default: all).
        keep: 'spikes' keeps full tensors (detached, on CPU, concatenated over calls along the
            batch axis); 'counts' keeps only spike and neuron-step totals, for long runs.
        membrane: also keep every population's membrane (needs ``keep='spikes'``).
    """

    def __init__(self, model: nn.Module, names: Optional[Iterable[str]] = None, keep: str = "spikes",
                 membrane: bool = False) -> None:
        if not isinstance(model, nn.Module):
            raise DTypeError(f"SpikeRecorder needs an nn.Module, got {type(model).__name__}")
        check_choice(keep, "keep", ("spikes", "counts"))
        self.membrane = check_bool(membrane, "membrane")
        if membrane and keep != "spikes":
            raise SpikingAttnError("membrane=True needs keep='spikes'")
        self.model = model
        self.keep = keep
        pops = {n: m for n, m in model.named_modules() if isinstance(m, LIFPopulation)}
        if names is not None:
            names = list(names)
            missing = [n for n in names if n not in pops]
            if missing:
                raise SpikingAttnError(f"no LIF population named {missing[0]!r} in the model")
            pops = {n: pops[n] for n in names}
        self.populations: Dict[str, LIFPopulation] = pops
        self._chunks: Dict[str, list] = {n: [] for n in pops}
        self._membrane_chunks: Dict[str, list] = {n: [] for n in pops}
        self.counts: Dict[str, list] = {n: [0.0, 0] for n in pops}  # [spikes, neuron-steps]
        self._handles: list = []

    def _hook(self, name: str):
        def record(module, args, kwargs, output):
            spikes = output.spikes if isinstance(output, LIFOutput) else output
            out = spikes.detach()
            self.counts[name][0] += float(out.sum())
            self.counts[name][1] += out.numel()
            if self.keep == "spikes":
                self._chunks[name].append(out.cpu())
            if self.membrane:
                if isinstance(output, LIFOutput):
                    membrane = output.membrane
                else:
                    bound = inspect.signature(module.forward).bind(*args, **kwargs)
                    bound.arguments["return_membrane"] = True
                    with torch.no_grad():  # forward() itself: the hooks do not run again
                        membrane = module.forward(*bound.args, **bound.kwargs).membrane
                self._membrane_chunks[name].append(membrane.detach().cpu())
        return record

    def __enter__(self) -> "SpikeRecorder":
        self._handles = [m.register_forward_hook(self._hook(n), with_kwargs=True)
                         for n, m in self.populations.items()]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    @property
    def spikes(self) -> Dict[str, torch.Tensor]:
        """Recorded spikes per population, ``[T, B_total, ...]`` (calls joined along the batch axis)."""
        if self.keep != "spikes":
            raise SpikingAttnError("spikes were not kept; create the recorder with keep='spikes'")
        return {n: torch.cat(c, dim=1) for n, c in self._chunks.items() if c}

    @property
    def membranes(self) -> Dict[str, torch.Tensor]:
        """Recorded membranes per population (after reset), ``[T, B_total, ...]``."""
        if not self.membrane:
            raise SpikingAttnError("membranes were not kept; create the recorder with membrane=True")
        return {n: torch.cat(c, dim=1) for n, c in self._membrane_chunks.items() if c}

    def firing_rates(self) -> Dict[str, float]:
        """Mean spikes per neuron per time step, for each population that ran."""
        return {n: s / k for n, (s, k) in self.counts.items() if k}


@torch.no_grad()
def exposed_signal(model: nn.Module, module: nn.Module, flag: str, *args, **kwargs):
    """Run ``model(*args, **kwargs)`` without gradients and return what ``module`` (a mechanism inside it)
    exposes when called with ``flag=True`` (``return_masks``, ``return_routing``, ``return_parts``, ...):
    the second value it then returns. The model itself runs as usual; ``module`` runs once, with the
    flag set, and hands its first value on. Hooks are removed even on error."""
    if not isinstance(module, nn.Module) or module not in set(model.modules()):
        raise SpikingAttnError(f"module must be a submodule of the model, got {type(module).__name__}")
    captured = []

    def set_flag(_module, args, kwargs):
        return args, {**kwargs, flag: True}

    def keep(_module, _args, _kwargs, output):
        captured.append(output[1])
        return output[0]

    handles = [module.register_forward_pre_hook(set_flag, with_kwargs=True),
               module.register_forward_hook(keep, with_kwargs=True)]
    try:
        model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    if not captured:
        raise SpikingAttnError(f"the module did not run during model(...), so it exposed no {flag}")
    return captured[-1]
