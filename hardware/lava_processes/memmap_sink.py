"""``MemmapSink``: records what arrives at its input port, step by step, into a memory-mapped file.

Lava's own sink (``lava.proc.io.sink.RingBuffer``) hands its buffer back through ``Var.get()``, one
message per value (tens of microseconds each, so seconds for one population over a run). This sink
writes every step into a numpy memmap that the host maps too, so reading costs nothing. Row
``time_step - 1`` (modulo the buffer) holds what arrived at that step.
"""
import numpy as np

from lava.magma.core.decorator import implements, requires, tag
from lava.magma.core.model.py.model import PyLoihiProcessModel
from lava.magma.core.model.py.ports import PyInPort
from lava.magma.core.model.py.type import LavaPyType
from lava.magma.core.process.ports.ports import InPort
from lava.magma.core.process.process import AbstractProcess
from lava.magma.core.resources import CPU
from lava.magma.core.sync.protocols.loihi_protocol import LoihiProtocol


class MemmapSink(AbstractProcess):
    """Args: shape (of the input port), buffer (steps kept), path (the memmap file, created by the host
    with ``MemmapSink.create``)."""

    def __init__(self, *, shape, buffer, path, name=None):
        super().__init__(shape=shape, buffer=buffer, path=path, name=name)
        self.a_in = InPort(shape=shape)

    @staticmethod
    def create(path, shape, buffer):
        return np.memmap(path, dtype=np.float32, mode="w+", shape=(buffer,) + tuple(shape))


class _MemmapSinkModel(PyLoihiProcessModel):
    def __init__(self, proc_params):
        super().__init__(proc_params)
        p = self.proc_params
        self._values = np.memmap(p["path"], dtype=np.float32, mode="r+", shape=(p["buffer"],) + tuple(p["shape"]))

    def run_spk(self):
        self._values[(self.time_step - 1) % self._values.shape[0]] = self.a_in.recv()


@implements(proc=MemmapSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("floating_pt")
class PyMemmapSinkFloat(_MemmapSinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, float)


@implements(proc=MemmapSink, protocol=LoihiProtocol)
@requires(CPU)
@tag("fixed_pt")
class PyMemmapSinkFixed(_MemmapSinkModel):
    a_in: PyInPort = LavaPyType(PyInPort.VEC_DENSE, np.int32)
