"""``SubtractiveLIF``: Lava's ``LIFReset`` with the two options converted (ANN-to-SNN) models need.

Lava's LIF sets ``v = 0`` after a spike and its ``LIFReset`` restarts every window from ``u = v = 0``.
This process differs in exactly two places, everything else being Lava's own models, inherited:

* reset (``reset='subtract'``, the default): a neuron that spiked keeps what it held above its
  threshold, ``v <- v - vth`` (float) or ``v <- v - (vth << 6)`` (bit-accurate, the threshold as
  Lava's fixed-point model compares it); ``reset='zero'`` keeps Lava's ``v <- 0``;
* window start: each window (one sample) begins from ``u = 0`` and ``v = v_start`` (per neuron; in the
  membrane's own units, ``v_init * vth`` of ``neuron.lif_step``) instead of ``v = 0``.

Args: those of ``LIFReset``, plus ``v_start`` (number or ``[size]`` array) and ``reset``.
"""
import numpy as np

from lava.magma.core.decorator import implements
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.variable import Var
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol
from lava.proc.lif.models import PyLifResetModelBitAcc, PyLifResetModelFloat
from lava.proc.lif.process import LIFReset

RESETS = ("subtract", "zero")


class SubtractiveLIF(LIFReset):
    def __init__(self, *, shape, v_start=0, reset: str = "subtract", **kwargs):
        super().__init__(shape=shape, v=v_start, **kwargs)  # first: Lava's __del__ needs a built process
        if reset not in RESETS:
            raise ValueError(f"SubtractiveLIF: reset must be one of {RESETS}, got {reset!r}")
        self.proc_params["subtract"] = reset == "subtract"
        self.v_start = Var(shape=shape, init=v_start)


class _SubtractiveHooks:
    """The two hooks both precisions override. The parent's ``run_spk`` zeroes u and v at the first
    step of a window and then calls ``subthr_dynamics``: the membrane is set to ``v_start`` there, on
    the same condition, before the step integrates. ``_threshold()`` is the threshold the parent's
    ``spiking_activation`` compares against."""

    def __init__(self, proc_params):
        super().__init__(proc_params)
        self._subtract = bool(proc_params["subtract"])

    def subthr_dynamics(self, activation_in: np.ndarray):
        if self.time_step % self.reset_interval == self.reset_offset:
            self.v[:] = self.v_start
        super().subthr_dynamics(activation_in)

    def reset_voltage(self, spike_vector: np.ndarray):
        if self._subtract:
            self.v[spike_vector] -= self._threshold()
        else:
            super().reset_voltage(spike_vector)


@implements(proc=SubtractiveLIF, protocol=LoihiProtocol)
class PySubtractiveLIFFloat(_SubtractiveHooks, PyLifResetModelFloat):
    """floating_pt (the tags and the CPU requirement are inherited from Lava's float LIFReset model)."""

    implements_process = None  # cleared so that ``implements`` may name this process instead of LIFReset
    v_start: np.ndarray = LavaPyType(np.ndarray, float)

    def _threshold(self):
        return self.vth


@implements(proc=SubtractiveLIF, protocol=LoihiProtocol)
class PySubtractiveLIFBitAcc(_SubtractiveHooks, PyLifResetModelBitAcc):
    """fixed_pt, bit-accurate (tags and CPU requirement inherited from Lava's bit-accurate LIFReset)."""

    implements_process = None
    v_start: np.ndarray = LavaPyType(np.ndarray, np.int32, precision=24)

    def _threshold(self):
        return self.effective_vth
