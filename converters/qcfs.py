"""The quantization-clip-floor-shift (QCFS) activation, the dense side of near-lossless conversion.

QCFS (Bu et al., ICLR 2022) replaces a ReLU with ``L`` levels between 0 and a learnable clip ``lambda``::

    a = lambda * clip(floor(z * L / lambda + 1/2) / L, 0, 1)

A network trained (or fine-tuned) with it converts to spikes by giving each population the threshold
``vth = lambda``, no leak (``dv = 0``), reset by subtraction and a membrane that starts at half the
threshold (``LIFPopulation(dv=0, vth=lambda, reset="subtract", v_init=0.5)``). Driven by a constant
input ``z`` for ``T = L`` steps, such a neuron fires ``floor(z T / lambda + 1/2)`` times (at most once
per step), so its mean output ``spikes * lambda / T`` is exactly the activation above
(``tests/test_converters.py``).

The floor passes its gradient straight through; ``lambda`` learns through the clip and the scaling.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from spiking_attn.errors import SpikingAttnError, check_int
from spiking_attn.opcount import count_rule, no_own_ops


def floor_ste(x: torch.Tensor) -> torch.Tensor:
    """``floor(x)`` forward, identity backward (the straight-through estimator)."""
    return x + (torch.floor(x) - x).detach()


class QCFS(nn.Module):
    """``lambda * clip(floor(z L / lambda + 1/2) / L, 0, 1)`` with a learnable clip ``lambda``.

    Args:
        levels: L, the number of quantization steps (>= 1); the matching spiking model runs ``T = L``
            steps for an exact match on constant inputs.
        clip: the initial lambda (> 0).
    """

    def __init__(self, levels: int = 8, clip: float = 4.0) -> None:
        super().__init__()
        self.levels = check_int(levels, "levels", low=1, high=4096)
        if isinstance(clip, bool) or not isinstance(clip, (int, float)) or not math.isfinite(clip) or clip <= 0:
            raise SpikingAttnError(f"clip must be a positive finite number, got {clip!r}")
        self.clip = nn.Parameter(torch.tensor(float(clip)))

    def extra_repr(self) -> str:
        return f"levels={self.levels}, clip={float(self.clip.detach()):.4g}"

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lam = self.clip.clamp_min(1e-6).to(z.dtype)  # a learned clip never reaches zero
        x = torch.clamp(z / lam, 0.0, 1.0)
        return floor_ste(x * self.levels + 0.5) / self.levels * lam


count_rule(QCFS)(no_own_ops)  # like a ReLU: a compare and a lookup per value


def qcfs_twin(model: nn.Module, levels: int, clips: Optional[dict] = None, clip_init: float = 4.0) -> nn.Module:
    """A copy of the dense twin ``model`` with its activations replaced by QCFS (``levels`` levels), its
    weights copied. Each QCFS clip starts at ``clips[name]`` where given (a calibrated scale), else at
    ``clip_init``; activations the twin keeps as ReLUs (a thalamic controller's, say) get no clip."""
    import dataclasses

    from spiking_attn.models import build_model

    twin = build_model(dataclasses.replace(model.config, dense_act="qcfs", qcfs_levels=levels))
    state = model.state_dict()
    for name, module in twin.named_modules():
        if isinstance(module, QCFS):
            start = float((clips or {}).get(name, clip_init))
            state[f"{name}.clip"] = torch.tensor(max(start, 1e-3))
    twin.load_state_dict(state)
    return twin


def finetune_qcfs(model: nn.Module, data, *, levels: int = 4, epochs: int = 40, lr: float = 6e-3,
                  batch_size: int = 64, seed: int = 0, calibration: int = 512, percentile: float = 99.9,
                  clip_init: Optional[float] = 4.0, progress: bool = False) -> nn.Module:
    """Fine-tune a ReLU dense twin into a QCFS one, ready for ``convert(method='qcfs')``.

    Every clip starts at ``clip_init`` (4.0, the QCFS module's own default), or, with ``clip_init=None``,
    at the ``percentile`` of its activation over the first ``calibration`` training samples. The whole
    network then trains ``epochs`` epochs (AdamW, cosine schedule, no weight decay on the clips) on
    ``data`` (a ``TokenDataset``, the task the twin was trained on). The defaults are the training
    defaults. On this project's tasks, a gentle fine-tune (lr 1e-3, a few epochs) kept the dense accuracy
    but left a twin that converted worse at low T, and so did clips started at the calibrated
    percentiles (``benchmarks/bench_conversion.py`` measures the default route).
    """
    from spiking_attn.data import TokenDataset
    from spiking_attn.models import DenseClassifier
    from spiking_attn.training import TrainSettings, _train_epoch, evaluate

    from .calibration import activation_scales

    if not isinstance(model, DenseClassifier):
        raise SpikingAttnError(f"finetune_qcfs takes a dense twin of this library, got {type(model).__name__}")
    if model.config.dense_act != "relu":
        raise SpikingAttnError(f"finetune_qcfs starts from ReLU activations, this twin has {model.config.dense_act}")
    if not isinstance(data, TokenDataset):
        raise SpikingAttnError(f"data must be a TokenDataset (spiking_attn.data.load_task), got {type(data).__name__}")
    check_int(levels, "levels", low=1, high=4096)
    check_int(epochs, "epochs", low=1, high=10000)
    check_int(calibration, "calibration", low=1)
    settings = TrainSettings(task=data.name, epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    rows = slice(0, min(calibration, len(data.x_train)))
    cue = data.context("train", rows).get("cue")
    clips = None if clip_init is not None else activation_scales(
        model, data.x_train[rows], cue, mode="percentile", percentile=percentile, skip_idle=True)
    torch.manual_seed(seed)
    twin = qcfs_twin(model, levels, clips, 4.0 if clip_init is None else clip_init)
    clip_params = [p for n, p in twin.named_parameters() if n.endswith(".clip")]
    others = [p for n, p in twin.named_parameters() if not n.endswith(".clip")]
    optimizer = torch.optim.AdamW([{"params": others}, {"params": clip_params, "weight_decay": 0.0}], lr=lr,
                                  weight_decay=settings.weight_decay)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    from tqdm import tqdm

    steps = -(-len(data.x_train) // batch_size)
    with tqdm(total=epochs * steps, disable=not progress, unit="batch", desc=f"QCFS fine-tune (L={levels})",
              dynamic_ncols=True) as bar:
        for epoch in range(epochs):
            _train_epoch(twin, optimizer, data, settings, epoch, bar)
            scheduler.step()
    twin.eval()
    twin.finetune_accuracy = evaluate(twin, data.x_test, data.y_test, seed=seed, **data.context("test"))["accuracy"]
    return twin
