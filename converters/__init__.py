"""ANN-to-SNN conversion (installed as ``spiking_attn.converters``).

* ``convert(model, calibration_data, method, timesteps)`` turns a trained dense twin of the library into
  a spiking model: ``rate`` (calibrated thresholds), ``qcfs`` (thresholds from learned QCFS clips;
  ``finetune_qcfs`` makes such a twin from a ReLU one) or ``td`` (exact time differences,
  ``TimeDifferenceModel``). ``convert_checkpoint`` is the ``spiking-attn convert`` command.
* ``torch_models.convert_torch_model``: the same three methods for plain torch models (Sequentials of
  Linear, Conv2d, BatchNorm, ReLU, AvgPool, Flatten; td also GELU, LayerNorm, MultiheadAttention and
  custom modules); ``convert`` hands such models to it. ``functional.functional_calls`` finds the
  nonlinear functions a module calls inside its own forward (``F.relu``, ``softmax``, ``x @ y``).
* ``rules``: how each spiking module type takes over its dense twin's weights (``@conversion_rule``).
* ``qcfs.QCFS``: the quantization-clip-floor-shift activation; ``calibration.activation_scales``: the
  maximum or percentile of every activation over a calibration set.
"""
import importlib

# The library's modules import ``qcfs``, ``rules`` and ``td`` while they load (their conversion rules live
# beside them), so this package must not import the library back at load time: the converter itself
# (``convert``), which needs the models, is loaded on first use.
from .qcfs import QCFS, finetune_qcfs, floor_ste
from .rules import ConversionError, conversion_rule, missing_rules
from .td import TimeDifferenceModel, td_rule

_LAZY = {"activation_scales": "calibration", "nearest_rank": "calibration", "METHODS": "conversion",
         "Conversion": "conversion", "convert": "conversion", "convert_checkpoint": "conversion",
         "evaluate_conversion": "conversion", "spiking_config": "conversion", "with_timesteps": "conversion",
         "convert_torch_model": "torch_models", "SpikingSequential": "torch_models", "TorchTDModel": "torch_models",
         "functional_calls": "functional"}


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["METHODS", "QCFS", "Conversion", "ConversionError", "TimeDifferenceModel", "activation_scales",
           "conversion_rule", "convert", "convert_checkpoint", "evaluate_conversion", "finetune_qcfs", "floor_ste",
           "missing_rules", "nearest_rank", "spiking_config", "td_rule", "with_timesteps"]
