"""ANN-to-SNN conversion (installed as ``spiking_attn.converters``).

So far: the QCFS activation (``qcfs.QCFS``), the dense side of near-lossless conversion. With the
neuron's reset by subtraction (``LIFPopulation(reset="subtract", v_init=0.5)``) it gives the exact
spiking counterpart at ``T = L`` on constant inputs. The converter itself (rate, qcfs and td methods,
``spiking-attn convert``) is not written yet.
"""
from .qcfs import QCFS, floor_ste

__all__ = ["QCFS", "floor_ste"]
