"""Check that a spiking model is spike-driven: every weight layer's input is binary.

``spike_driven_report(model, x)`` runs ``model(x)`` once with forward pre-hooks on every
``nn.Linear`` and ``nn.Conv{1,2,3}d`` and lists the layers that received any value other than 0 or 1.
In a spike-driven model only the encoding layer (which reads the analog input) appears there.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List

import torch
from torch import nn

from .errors import DTypeError

WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class SpikeDrivenReport:
    """Which weight layers ran (``checked``) and which of them saw non-binary input."""

    checked: List[str] = field(default_factory=list)
    non_binary: List[str] = field(default_factory=list)

    @property
    def spike_driven(self) -> bool:
        return not self.non_binary


def _is_binary(t: torch.Tensor) -> bool:
    return bool(((t == 0) | (t == 1)).all())


@torch.no_grad()
def spike_driven_report(model: nn.Module, *args, **kwargs) -> SpikeDrivenReport:
    """Run ``model(*args, **kwargs)`` once and report weight layers with non-binary inputs."""
    if not isinstance(model, nn.Module):
        raise DTypeError(f"spike_driven_report needs an nn.Module, got {type(model).__name__}")
    report = SpikeDrivenReport()

    def hook_for(name: str):
        def check(_module, inputs):
            if name not in report.checked:
                report.checked.append(name)
            if not _is_binary(inputs[0]) and name not in report.non_binary:
                report.non_binary.append(name)
        return check

    handles = [m.register_forward_pre_hook(hook_for(n))
               for n, m in model.named_modules() if isinstance(m, WEIGHT_LAYERS)]
    try:
        model(*args, **kwargs)
    finally:
        for h in handles:
            h.remove()
    return report
