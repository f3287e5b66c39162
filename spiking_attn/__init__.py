"""spiking-attn: thalamo-cortical attention mechanisms as spiking LIF populations.

Tensors in spiking models are time-first, ``[T, B, ...]``. See README.md for the data flow.

The names below are imported on first use, so ``import spiking_attn`` (and the command line's start)
does not load torch until something needs it.
"""
from __future__ import annotations

import importlib

__version__ = "0.2.0"

_EXPORTS = {
    "attention": ("DenseSelfAttention", "SpikingSelfAttention"),
    "block": ("DenseTransformerBlock", "SpikingTransformerBlock"),
    "checkpoint": ("load_model", "save_checkpoint"),
    "data": ("TASKS", "TaskSpec", "TokenDataset", "register_task"),
    "encoders": ("DirectEncoder", "LatencyEncoder", "RateEncoder", "make_encoder"),
    "errors": ("CheckpointError", "DTypeError", "NonFiniteError", "ResourceError", "ShapeError",
               "SpikingAttnError"),
    "layers": ("LinearBN",),
    "mechanisms": ("MECHANISMS", "MechanismSpec", "get_mechanism", "register_mechanism"),
    "models": ("DenseClassifier", "ModelConfig", "SpikingClassifier", "build_model"),
    "opcount": ("OpCounter", "OpReport", "count_ops", "count_rule"),
    "neuron": ("LIFOutput", "LIFParams", "LIFPopulation", "attach_constraints", "constrain_parameters",
               "lif_sequence", "lif_step"),
    "recorder": ("SpikeRecorder",),
    "spike_driven": ("SpikeDrivenReport", "spike_driven_report"),
    "training": ("evaluate", "train"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'spiking_attn' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
