"""ANN-to-SNN conversion (installed as ``spiking_attn.converters``).

So far, two building blocks:

* the QCFS activation (``qcfs.QCFS``), the dense side of near-lossless conversion. With the neuron's
  reset by subtraction (``LIFPopulation(reset="subtract", v_init=0.5)``) it has an exact spiking
  counterpart at ``T = L`` on constant inputs;
* data-based threshold balancing (``calibration.activation_scales``): the exact maximum or
  percentile of every activation over a calibration set.

The converter itself (rate, qcfs and td methods, ``spiking-attn convert``) is not written yet.
"""
from .calibration import activation_scales, nearest_rank
from .qcfs import QCFS, floor_ste

__all__ = ["QCFS", "activation_scales", "floor_ste", "nearest_rank"]
