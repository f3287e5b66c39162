"""ANN-to-SNN conversion (installed as ``spiking_attn.converters``).

* ``convert(model, calibration_data, method, timesteps)`` turns a trained dense twin of the library into
  a spiking model: ``rate`` (calibrated thresholds), ``qcfs`` (thresholds from learned QCFS clips;
  ``finetune_qcfs`` makes such a twin from a ReLU one) or ``td`` (exact time differences,
  ``TimeDifferenceModel``). ``convert_checkpoint`` is the ``spiking-attn convert`` command.
* ``rules``: how each spiking module type takes over its dense twin's weights (``@conversion_rule``).
* ``qcfs.QCFS``: the quantization-clip-floor-shift activation; ``calibration.activation_scales``: the
  maximum or percentile of every activation over a calibration set.
"""
from .calibration import activation_scales, nearest_rank
from .convert import (METHODS, Conversion, convert, convert_checkpoint, evaluate_conversion, spiking_config,
                      with_timesteps)
from .qcfs import QCFS, finetune_qcfs, floor_ste
from .rules import ConversionError, conversion_rule, missing_rules
from .td import TimeDifferenceModel, td_rule

__all__ = ["METHODS", "QCFS", "Conversion", "ConversionError", "TimeDifferenceModel", "activation_scales",
           "conversion_rule", "convert", "convert_checkpoint", "evaluate_conversion", "finetune_qcfs", "floor_ste",
           "missing_rules", "nearest_rank", "spiking_config", "td_rule", "with_timesteps"]
