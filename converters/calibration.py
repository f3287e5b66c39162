"""Data-based threshold balancing: how large each activation of a dense model gets on calibration data.

``activation_scales(model, x, cue=None, mode="max"|"percentile", percentile=99.9)`` runs the model in
eval mode over ``x`` and returns, for every activation module (ReLU, GELU, QCFS; or the modules named
in ``modules``), the largest output or the given percentile of all its outputs. A rate-converted
population gets that value as its threshold; QCFS starts its clip there.

The values are exact over the whole calibration set, not a running estimate: all outputs of a module
are kept until the end (calibration sets are small), the maximum is the global maximum, and the
percentile is the nearest-rank one (the smallest value with at least ``percentile`` % of the outputs
at or below it). A module that runs several times in one forward pass (one activation shared by
several areas, say) pools all its outputs.
"""
from __future__ import annotations

import math
from typing import Dict, Iterable, Optional

import torch
from torch import nn

from spiking_attn.errors import SpikingAttnError, check_choice, check_int, check_tensor
from spiking_attn.opcount import eval_batches

from .qcfs import QCFS

ACTIVATION_TYPES = (nn.ReLU, nn.GELU, QCFS)
MODES = ("max", "percentile")


def nearest_rank(values: torch.Tensor, percentile: float) -> float:
    """The smallest value with at least ``percentile`` % of ``values`` at or below it."""
    n = values.numel()
    rank = max(1, math.ceil(percentile / 100 * n))
    return float(torch.kthvalue(values.reshape(-1).double(), rank).values)


@torch.no_grad()
def activation_scales(model: nn.Module, x: torch.Tensor, cue: Optional[torch.Tensor] = None, *,
                      modules: Optional[Iterable[str]] = None, mode: str = "max", percentile: float = 99.9,
                      batch_size: int = 64, skip_idle: bool = False) -> Dict[str, float]:
    """The scale of every activation of ``model`` over the calibration inputs ``x`` (and ``cue``).

    A module that never runs on the calibration data is an error, unless ``skip_idle``: then it is left
    out of the result (the converter asks for the scales of every activation a model holds, and a part
    the model does not use, such as a cue controller without a cue, has none)."""
    if not isinstance(model, nn.Module):
        raise SpikingAttnError(f"model must be an nn.Module, got {type(model).__name__}")
    check_choice(mode, "mode", MODES)
    check_int(batch_size, "batch_size", low=1)
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 0 < percentile <= 100:
        raise SpikingAttnError(f"percentile must be a number in (0, 100], got {percentile!r}")
    if isinstance(x, torch.Tensor) and (x.dim() < 1 or x.shape[0] == 0):
        raise SpikingAttnError("the calibration set is empty (x holds no samples)")
    check_tensor(x, "x")
    if cue is not None and (not isinstance(cue, torch.Tensor) or cue.shape[:1] != x.shape[:1]):
        raise SpikingAttnError(f"cue must be a tensor with one row per calibration sample ({x.shape[0]})")
    named = dict(model.named_modules())
    if modules is None:
        names = [n for n, m in named.items() if isinstance(m, ACTIVATION_TYPES)]
        if not names:
            raise SpikingAttnError(f"{type(model).__name__} has no activation module ({', '.join(t.__name__ for t in ACTIVATION_TYPES)})")
    else:
        names = list(modules)
        unknown = [n for n in names if n not in named]
        if unknown:
            raise SpikingAttnError(f"no module named {', '.join(map(repr, unknown))} in the model")
    outputs: Dict[str, list] = {n: [] for n in names}
    hooks = [named[n].register_forward_hook(lambda m, a, out, n=n: outputs[n].append(out.detach().reshape(-1)))
             for n in names]
    try:
        for _ in eval_batches(model, x, cue, batch_size):
            pass
    finally:
        for h in hooks:
            h.remove()
    silent = [n for n, chunks in outputs.items() if not chunks]
    if skip_idle:
        outputs = {n: chunks for n, chunks in outputs.items() if chunks}
    elif silent:
        raise SpikingAttnError(f"module(s) {', '.join(map(repr, silent))} did not run on the calibration data")
    scales = {}
    for name, chunks in outputs.items():
        values = torch.cat(chunks)
        scales[name] = float(values.max()) if mode == "max" else nearest_rank(values, percentile)
    return scales
