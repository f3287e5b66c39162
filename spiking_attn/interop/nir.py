"""NIR (the Neuromorphic Intermediate Representation, package ``nir``) export and import.

``export(model, sample_input, cue=None, path=None)`` writes a spiking model of this library as a NIR
graph; ``load(path)`` reads a NIR graph (ours, or one written by snnTorch, Norse, Sinabs...) back as a
runnable ``NIRNetwork`` of this library.

How the export works. NIR has weight layers and neurons but no product of two activations, so the
export goes through the same network graph the Lava backend reads (``spiking_attn.graph``): every
attention mask (``Q AND K``, ``gate AND value``, ``route AND area``) is already a coincidence population
with static weights there, so SDSA, thalamic gating, pulvinar synchronization and cortico-thalamic
attention export; SSA's ``Q K^T V`` does not, and the error says to train with ``--attention sdsa``.
Each population becomes one neuron node, each of its incoming synapse groups one ``Linear`` node
(``source -> Linear -> population``; NIR sums a node's inputs, so residual paths are just more edges),
and the host's encoding layer (analog input, positions, the cue token) an ``Affine`` read from the graph
input. The classifier's head becomes an ``Affine`` whose output, at each step, is that step's logits:
the library's logits are their mean over the steps.

Neurons. This library's LIF (Loihi's CUBA LIF, ``neuron.lif_step``) is, per step,
``u = (1 - du) u + x``, ``v = (1 - dv) v + u + bias``, a spike where ``v > vth``, then ``v = 0``.
NIR states its neurons in continuous time; read with forward Euler at step ``dt`` (as snnTorch does,
with ``dt = 1e-4``; the exporter stores its ``dt`` in the graph's metadata), they are:

==============  ==========================================================================
population      NIR node
==============  ==========================================================================
``du = 1``      ``LIF(tau = dt/dv, r = 1/dv, v_leak = 0, v_threshold = vth, v_reset = 0)``;
                the bias is the ``Affine`` bias of the population's first input
``du = 1, dv=0``  ``IF(r = 1/dt, v_threshold = vth, v_reset = 0)`` (bias as above)
``du < 1``      ``CubaLIF(tau_syn = dt/du, tau_mem = dt/dv, w_in = 1/du, r = 1/dv,
                v_leak = bias/dv, v_threshold = vth, v_reset = 0)``
==============  ==========================================================================

``v_reset`` is where NIR puts the membrane after a spike, so populations that reset by subtraction or
start from ``v_init > 0`` (the rate and qcfs conversions) have no NIR form and are refused by name.
Per-neuron thresholds are kept (NIR allows them); ``fold_thresholds=True`` writes threshold 1 with the
inputs and bias divided by each neuron's threshold, the same neuron under a reset to zero, for readers
that take one threshold per layer (snnTorch).

The import reads those equations back for any graph: ``LIF``, ``CubaLIF`` and ``IF`` become
``LIFPopulation``s (with an input gain where ``r`` and ``w_in`` do not give unit weights), ``Affine``,
``Linear``, ``Scale``, ``Conv1d``, ``Conv2d``, ``Flatten``, ``AvgPool2d`` and ``SumPool2d`` their torch
layers. The time axis is the library's: the network takes ``[T, B, *input]`` and every node sees its
inputs of the same step (as NIR's other simulators and snnTorch run a graph). Node types without a
counterpart (``LI``, ``I``, ``CubaLI``, ``Delay``, ``Threshold``, nested graphs) and recurrent edges are
refused by name.
"""
from __future__ import annotations

import math
import os
import tempfile
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..errors import DTypeError, ShapeError, SpikingAttnError, check_tensor
from ..graph import ExportError, NetworkGraph, export_graph

__all__ = ["export", "load", "read", "write", "NIRNetwork", "DEFAULT_DT", "NIRImportError"]

DEFAULT_DT = 1e-4  # snnTorch writes and reads every NIR graph with this step; ours says its own in metadata
UNIT_GAIN_TOLERANCE = 1e-6  # a gain this close to 1 is 1 (float32 rounding of tau and r in files)


class NIRImportError(SpikingAttnError):
    """A NIR graph has a part this library cannot run."""


def _nir():
    import nir

    return nir


# ------------------------------------------------------------------------------------------ export
def _check_dt(dt) -> float:
    if isinstance(dt, bool) or not isinstance(dt, (int, float)) or not math.isfinite(dt) or dt <= 0:
        raise SpikingAttnError(f"dt must be a positive number of seconds, got {dt!r}")
    return float(dt)


def _neuron_node(node, dt: float, scale: np.ndarray, bias: np.ndarray):
    """The NIR neuron of population ``node`` (threshold divided by ``scale``'s inverse) and whether its
    bias must go into the ``Affine`` bias of an input (``du = 1``) rather than into ``v_leak``."""
    nir = _nir()
    du, dv, vth = node.du, node.dv, node.vth * scale
    zeros = np.zeros(node.size)
    if np.all(du == 1.0):
        if np.all(dv > 0):
            return nir.LIF(tau=dt / dv, r=1.0 / dv, v_leak=zeros, v_threshold=vth, v_reset=zeros), True
        if np.all(dv == 0):
            return nir.IF(r=np.full(node.size, 1.0 / dt), v_threshold=vth, v_reset=zeros), True
        raise ExportError(f"{node.name}: some neurons leak (dv > 0) and some do not (dv = 0); NIR has no "
                          f"neuron that is both, split the population")
    if np.any(du == 0) or np.any(dv == 0):
        raise ExportError(f"{node.name}: a synaptic current (du < 1) with du = 0 or dv = 0 has no finite NIR "
                          f"CubaLIF time constant")
    return nir.CubaLIF(tau_syn=dt / du, tau_mem=dt / dv, r=1.0 / dv, w_in=1.0 / du, v_leak=bias / dv,
                       v_threshold=vth, v_reset=zeros), False


def _incoming(node) -> Tuple[List[Tuple[str, np.ndarray]], Optional[np.ndarray]]:
    """``([(source, dense weights [size, source size])], input bias)``: the synapse groups and the host's
    encoding; the encoding's constant part (``host_offset``) is a bias on the synaptic input."""
    sources = [(e.source, e.weight.toarray()) for e in node.edges]
    if node.host is None:
        return sources, None
    if node.host_affine is None:
        raise ExportError(f"{node.name}: it is driven by a host current whose encoding was not given "
                          f"(graph.host_current(..., encoding=...)), so it has no weight-layer form")
    sources += [(name, m.toarray()) for name, m in node.host_affine.items()]
    return sources, node.host_offset


def to_nir(graph: NetworkGraph, dt: float = DEFAULT_DT, fold_thresholds: bool = False, metadata=None):
    """The NIR graph of a network graph (``spiking_attn.graph.export_graph``)."""
    nir = _nir()
    dt = _check_dt(dt)
    nodes: Dict[str, object] = {}
    edges: List[Tuple[str, str]] = []
    for name, shape in graph.host_inputs.items():
        nodes[name] = nir.Input(input_type={"input": np.array([int(np.prod(shape))])})
    for name, node in graph.nodes.items():
        if node.role == "input":
            if name in nodes:
                raise ExportError(f"{name!r} is both a host input and an input population")
            nodes[name] = nir.Input(input_type={"input": np.array([node.size])})
            continue
        if node.role == "relay":
            raise ExportError(f"{name}: relay populations are a hardware backend's, not the model's")
        if node.reset != "zero" or node.v_init != 0.0:
            raise ExportError(f"{name}: reset={node.reset!r}, v_init={node.v_init:g} has no NIR form (NIR's "
                              f"neurons restart from v_reset after a spike and from rest; a rate- or "
                              f"qcfs-converted model resets by subtraction)")
        scale = 1.0 / node.vth if fold_thresholds else np.ones(node.size)
        neuron, bias_in_affine = _neuron_node(node, dt, scale, node.bias * scale)
        incoming, input_bias = _incoming(node)
        if not incoming:
            raise ExportError(f"{name}: a population driven by a constant alone has no NIR form (NIR has no "
                              f"constant source)")
        if bias_in_affine:  # du = 1: a bias on v is the same as one on the input
            input_bias = node.bias if input_bias is None else input_bias + node.bias
        for i, (source, weight) in enumerate(incoming):
            if source not in nodes:
                raise ExportError(f"{name}: its input {source!r} comes later in the graph")
            bias = input_bias if i == 0 else None  # the input's constant part rides on the first weight layer
            key = f"{name}.from.{source}"
            weight = weight * scale[:, None]
            if bias is not None and np.any(bias):
                nodes[key] = nir.Affine(weight=weight, bias=bias * scale)
            else:
                nodes[key] = nir.Linear(weight=weight)
            edges += [(source, key), (key, name)]
        nodes[name] = neuron
    outputs = _readout(graph, nodes, edges)
    meta = {"producer": "spiking-attn", "dt": dt, "timesteps": int(graph.timesteps),
            "output": "per-step logits: the model's logits are their mean over the steps" if outputs == ["head"]
            else "per-step spikes of the last populations",
            **{f"input_shape.{k}": np.array(v) for k, v in graph.host_inputs.items()}, **(metadata or {})}
    return nir.NIRGraph(nodes=nodes, edges=edges, metadata=meta)


def _readout(graph: NetworkGraph, nodes: dict, edges: list) -> List[str]:
    """Output nodes: the head as an ``Affine`` giving each step's logits, or, for a graph without a
    readout, the spikes of every population nothing reads."""
    nir = _nir()
    r = graph.readout
    if r is not None:
        size = graph.nodes[r.source].size
        tokens = size // r.weight.shape[1]
        weight = np.tile(r.weight, (1, tokens)) / tokens  # mean over tokens of spikes @ W^T
        nodes["head"] = nir.Affine(weight=weight, bias=np.asarray(r.bias, dtype=np.float64))
        nodes["output"] = nir.Output(output_type={"output": np.array([weight.shape[0]])})
        edges += [(r.source, "head"), ("head", "output")]
        return ["head"]
    read = {src for src, _ in edges}
    last = [n for n, node in graph.nodes.items() if node.role != "input" and n not in read]
    for n in last:
        out = "output" if len(last) == 1 else f"output.{n}"
        nodes[out] = nir.Output(output_type={"output": np.array([graph.nodes[n].size])})
        edges.append((n, out))
    return last


def export(model, sample_input: Optional[torch.Tensor] = None, cue=None, path=None, *, dt: float = DEFAULT_DT,
           fold_thresholds: bool = False):
    """The NIR graph (``nir.NIRGraph``) of ``model``, also written to ``path`` when given.

    ``model``: a spiking classifier of this library (any exportable mechanism), a ``SpikingSequential``,
    or a ``NetworkGraph`` already built. ``sample_input`` (and ``cue``): samples the model accepts; they
    fix nothing but the check that the encoding layer is affine (and whether the cue path is written).
    Each step's graph input is the encoded sample flattened row-major: ``input`` (and ``cue``).
    """
    if isinstance(model, NetworkGraph):
        graph = model
    else:
        if sample_input is None:
            raise SpikingAttnError("sample_input is required to export a model (one or more samples it accepts)")
        if not isinstance(sample_input, torch.Tensor):
            raise DTypeError(f"sample_input must be a tensor, got {type(sample_input).__name__}")
        graph = export_graph(model, sample_input, cue)
    if not isinstance(fold_thresholds, bool):
        raise DTypeError(f"fold_thresholds must be True or False, got {fold_thresholds!r}")
    result = to_nir(graph, dt, fold_thresholds)
    if path is not None:
        write(path, result)
    return result


def write(path, graph) -> None:
    """Write ``graph`` to ``path`` (HDF5) atomically: a temporary file beside it, then a rename."""
    nir = _nir()
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SpikingAttnError(f"cannot write {path!r}: folder {folder!r} does not exist")
    fd, tmp = tempfile.mkstemp(prefix=".nir-", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        nir.write(tmp, graph)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file private; give it a new file's usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def read(path):
    """Read a NIR file (HDF5: data only, nothing is executed); a clear error for a missing or corrupt one."""
    nir = _nir()
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise SpikingAttnError(f"NIR file {path!r} does not exist")
    try:
        return nir.read(path)
    except Exception as exc:  # h5py and nir raise OSError, KeyError, ValueError... for a damaged file
        raise SpikingAttnError(f"{path!r} is not a readable NIR file ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:160] if str(exc) else 'no detail'})") from None


# ------------------------------------------------------------------------------------------ import
def _array(node, attr: str) -> np.ndarray:
    return np.asarray(getattr(node, attr), dtype=np.float64)


def _snap(gain: np.ndarray) -> np.ndarray:
    return np.where(np.abs(gain - 1.0) <= UNIT_GAIN_TOLERANCE, 1.0, gain)


def _lif_parameters(name: str, node, dt: float) -> dict:
    """``du, dv, vth, bias, gain`` of this library's LIF for a NIR ``LIF``, ``CubaLIF`` or ``IF``."""
    nir = _nir()
    vth = _array(node, "v_threshold")
    reset = _array(node, "v_reset") if getattr(node, "v_reset", None) is not None else np.zeros_like(vth)
    if np.any(reset != 0):
        raise NIRImportError(f"NIR node {name!r}: v_reset other than 0 has no counterpart (this library's "
                             f"neurons reset to 0)")
    if isinstance(node, nir.IF):
        r = _array(node, "r")
        return {"du": np.ones_like(vth), "dv": np.zeros_like(vth), "vth": vth, "bias": np.zeros_like(vth),
                "gain": _snap(dt * r)}
    if isinstance(node, nir.LIF):
        tau, r, v_leak = _array(node, "tau"), _array(node, "r"), _array(node, "v_leak")
        du, tau_name = np.ones_like(vth), "tau"
        dv = dt / tau
        gain = dv * r
    else:  # CubaLIF
        tau_syn, tau = _array(node, "tau_syn"), _array(node, "tau_mem")
        r, w_in, v_leak = _array(node, "r"), _array(node, "w_in"), _array(node, "v_leak")
        if np.any(tau_syn < dt):
            raise NIRImportError(f"NIR node {name!r}: tau_syn below dt={dt:g} (a synaptic decay above 1 per step)")
        du, tau_name = dt / tau_syn, "tau_mem"
        dv = dt / tau
        gain = du * w_in * dv * r
    if np.any(tau < dt):
        raise NIRImportError(f"NIR node {name!r}: {tau_name} below dt={dt:g} (a membrane decay above 1 per step)")
    return {"du": du, "dv": dv, "vth": vth, "bias": dv * v_leak, "gain": _snap(gain)}


class NIRNeuron(nn.Module):
    """A NIR neuron node as this library's ``LIFPopulation``, after an input gain (1: none)."""

    def __init__(self, name: str, params: dict, shape: Tuple[int, ...], dtype: torch.dtype) -> None:
        super().__init__()
        from ..neuron import LIFPopulation

        as_tensor = {k: torch.as_tensor(params[k].reshape(shape), dtype=torch.float64) for k in ("du", "dv", "vth", "bias")}
        try:
            self.lif = LIFPopulation(**as_tensor, shape=shape).to(dtype)
        except SpikingAttnError as exc:
            raise NIRImportError(f"NIR node {name!r}: {exc}") from None
        for k, v in as_tensor.items():  # the exact values, not their default-dtype rounding
            getattr(self.lif, k).copy_(v.to(dtype))
        gain = params["gain"].reshape(shape)
        self.register_buffer("gain", None if np.all(gain == 1.0) else torch.as_tensor(gain, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lif(x if self.gain is None else x * self.gain)


class PerStep(nn.Module):
    """A stateless layer applied to ``[T, B, ...]`` with the steps folded into the batch."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t, b = x.shape[:2]
        y = self.layer(x.reshape(t * b, *x.shape[2:]))
        return y.reshape(t, b, *y.shape[1:])


class _Scale(nn.Module):
    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


class _SumPool2d(nn.Module):
    def __init__(self, kernel, stride, padding) -> None:
        super().__init__()
        self.kernel, self.stride, self.padding = kernel, stride, padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(x, self.kernel, self.stride, self.padding, divisor_override=1)  # a sum


def _pair(value, n: int) -> tuple:
    arr = np.atleast_1d(np.asarray(value)).astype(int).tolist()
    return tuple(arr * n if len(arr) == 1 else arr)


def _padding(value, n: int):
    if isinstance(value, (str, bytes)):
        return value.decode() if isinstance(value, bytes) else value
    return _pair(value, n)


def _stateless(name: str, node, dtype: torch.dtype) -> nn.Module:
    """The torch layer of a NIR weight, reshaping or pooling node."""
    nir = _nir()

    def t(a) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=dtype)

    if isinstance(node, (nir.Affine, nir.Linear)):
        w = np.asarray(node.weight)
        if w.ndim != 2:
            raise NIRImportError(f"NIR node {name!r}: weight of shape {w.shape} is not a matrix")
        layer = nn.Linear(w.shape[1], w.shape[0], bias=isinstance(node, nir.Affine)).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(t(w))
            if isinstance(node, nir.Affine):
                layer.bias.copy_(t(node.bias))
        return layer
    if isinstance(node, nir.Scale):
        return _Scale(t(node.scale))
    if isinstance(node, (nir.Conv1d, nir.Conv2d)):
        n = 1 if isinstance(node, nir.Conv1d) else 2
        w = np.asarray(node.weight)
        cls = nn.Conv1d if n == 1 else nn.Conv2d
        layer = cls(w.shape[1] * int(node.groups), w.shape[0], kernel_size=w.shape[2:], stride=_pair(node.stride, n),
                    padding=_padding(node.padding, n), dilation=_pair(node.dilation, n), groups=int(node.groups),
                    bias=node.bias is not None).to(dtype)
        with torch.no_grad():
            layer.weight.copy_(t(w))
            if node.bias is not None:
                layer.bias.copy_(t(node.bias))
        return layer
    if isinstance(node, nir.Flatten):
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)  # NIR dims skip the batch
    if isinstance(node, nir.AvgPool2d):
        return nn.AvgPool2d(_pair(node.kernel_size, 2), _pair(node.stride, 2), _pair(node.padding, 2))
    if isinstance(node, nir.SumPool2d):
        return _SumPool2d(_pair(node.kernel_size, 2), _pair(node.stride, 2), _pair(node.padding, 2))
    raise NIRImportError(f"NIR node {name!r} is a {type(node).__name__}, which has no counterpart in this library "
                         f"(it reads {', '.join(SUPPORTED)})")


SUPPORTED = ("Input", "Output", "Affine", "Linear", "Scale", "Conv1d", "Conv2d", "Flatten", "AvgPool2d",
             "SumPool2d", "IF", "LIF", "CubaLIF")


def _topological(graph) -> List[str]:
    names = list(graph.nodes)
    preds: Dict[str, List[str]] = {n: [] for n in names}
    for edge in graph.edges:
        src, dst = edge[0], edge[1]
        for end in (src, dst):
            if end not in preds:
                raise NIRImportError(f"NIR edge {src!r} -> {dst!r} names a node the graph does not have")
        preds[dst].append(src)
    order, done = [], set()
    pending = list(names)
    while pending:
        ready = [n for n in pending if all(p in done for p in preds[n])]
        if not ready:
            raise NIRImportError(f"the NIR graph has a recurrent loop through {', '.join(sorted(pending)[:6])}: "
                                 f"recurrent connections are not imported (feed-forward graphs and residual "
                                 f"paths are)")
        for n in ready:
            order.append(n)
            done.add(n)
        pending = [n for n in pending if n not in done]
    return order


def _input_shape(name: str, node) -> Tuple[int, ...]:
    types = node.input_type or {}
    shape = types.get("input", next(iter(types.values()), None))
    if shape is None or any(s is None for s in np.atleast_1d(shape)):
        raise NIRImportError(f"NIR input {name!r} does not state its shape")
    return tuple(int(s) for s in np.atleast_1d(shape))


class NIRNetwork(nn.Module):
    """A NIR graph as a runnable model of this library.

    Call ``net(x)`` with ``x`` ``[T, B, *input shape]`` (or ``net(input=x, cue=c)`` for a graph with
    several inputs, by their NIR names); it returns the output node's values ``[T, B, ...]`` (a dict
    by name if the graph has several outputs). ``net.run(...)`` returns every node's values by NIR
    node name. Neurons are ``LIFPopulation``s: they start from rest at every call.

    Attributes: ``order`` (node names, topologically sorted), ``inputs``, ``outputs``, ``shapes``
    (each input's per-step shape), ``metadata`` (the graph's), ``dt``.
    """

    def __init__(self, graph, dt: Optional[float] = None, dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        nir = _nir()
        if not isinstance(graph, nir.NIRGraph):
            raise DTypeError(f"graph must be a nir.NIRGraph, got {type(graph).__name__}")
        if dtype not in (torch.float32, torch.float64):
            raise DTypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        self.metadata = dict(graph.metadata or {})
        given_dt = self.metadata.get("dt", DEFAULT_DT) if dt is None else dt
        self.dt = _check_dt(float(np.asarray(given_dt)) if not isinstance(given_dt, (int, float)) else given_dt)
        self.order = _topological(graph)
        self.preds: Dict[str, List[str]] = {n: [] for n in self.order}
        for edge in graph.edges:
            self.preds[edge[1]].append(edge[0])
        self.inputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Input)]
        self.outputs = [n for n in self.order if isinstance(graph.nodes[n], nir.Output)]
        if not self.inputs or not self.outputs:
            raise NIRImportError("the NIR graph needs at least one Input and one Output node")
        self.shapes = {n: _input_shape(n, graph.nodes[n]) for n in self.inputs}
        self.layers = nn.ModuleDict()
        self._keys: Dict[str, str] = {}
        for name in self.order:
            node = graph.nodes[name]
            if isinstance(node, (nir.Input, nir.Output)):
                continue
            if not self.preds[name]:
                raise NIRImportError(f"NIR node {name!r} has no input")
            if isinstance(node, (nir.LIF, nir.CubaLIF, nir.IF)):
                params = _lif_parameters(name, node, self.dt)
                module = NIRNeuron(name, params, tuple(np.shape(params["vth"])), dtype)
            else:
                module = PerStep(_stateless(name, node, dtype))
            key = f"n{len(self._keys)}_" + "".join(c if c.isalnum() else "_" for c in name)
            self._keys[name] = key
            self.layers[key] = module

    def layer(self, name: str) -> nn.Module:
        """The module of NIR node ``name``."""
        if name not in self._keys:
            raise SpikingAttnError(f"no weight or neuron node named {name!r}")
        return self.layers[self._keys[name]]

    def populations(self) -> Dict[str, nn.Module]:
        """``{NIR node name: NIRNeuron}`` for every neuron node."""
        return {n: self.layers[k] for n, k in self._keys.items() if isinstance(self.layers[k], NIRNeuron)}

    def _given(self, args, kwargs) -> Dict[str, torch.Tensor]:
        if len(args) > 1:
            raise SpikingAttnError("pass one input positionally, or each input by its NIR name")
        given = dict(kwargs)
        if args:
            first = "input" if "input" in self.inputs else (self.inputs[0] if len(self.inputs) == 1 else None)
            if first is None:
                raise SpikingAttnError(f"the graph has inputs {', '.join(self.inputs)}: pass each by name")
            if first in given:
                raise SpikingAttnError(f"input {first!r} given twice")
            given[first] = args[0]
        unknown = sorted(set(given) - set(self.inputs))
        if unknown:
            raise SpikingAttnError(f"unknown input {unknown[0]!r}; the graph's inputs are {', '.join(self.inputs)}")
        missing = [n for n in self.inputs if n not in given]
        if missing:
            raise SpikingAttnError(f"missing input {missing[0]!r} (the graph's inputs are {', '.join(self.inputs)})")
        lead = None
        for name, x in given.items():
            check_tensor(x, name, ndim=2 + len(self.shapes[name]))
            if tuple(x.shape[2:]) != self.shapes[name]:
                raise ShapeError(f"{name} has per-step shape {tuple(x.shape[2:])}; the NIR graph's input "
                                 f"{name!r} takes {self.shapes[name]} (as [T, B, *shape])")
            if lead is not None and tuple(x.shape[:2]) != lead:
                raise ShapeError(f"{name} has [T, B] = {tuple(x.shape[:2])}, the other inputs {lead}: time steps "
                                 f"and batch must match")
            lead = tuple(x.shape[:2])
        return given

    def run(self, *args, **kwargs) -> Dict[str, torch.Tensor]:
        """Every node's values ``[T, B, ...]`` by NIR node name."""
        given = self._given(args, kwargs)
        dtype = next(iter(self.parameters()), next(iter(self.buffers()), torch.empty(0))).dtype
        values: Dict[str, torch.Tensor] = {}
        for name in self.order:
            if name in given:
                values[name] = given[name].to(dtype)
                continue
            parts = [values[p] for p in self.preds[name]]
            x = parts[0]
            for p in parts[1:]:
                if p.shape != x.shape:
                    raise ShapeError(f"NIR node {name!r} sums inputs of shapes {tuple(x.shape[2:])} and "
                                     f"{tuple(p.shape[2:])}")
                x = x + p
            values[name] = x if name in self.outputs else self.layers[self._keys[name]](x)
        return values

    def forward(self, *args, **kwargs):
        values = self.run(*args, **kwargs)
        if len(self.outputs) == 1:
            return values[self.outputs[0]]
        return {n: values[n] for n in self.outputs}


def load(source, *, dt: Optional[float] = None, dtype: torch.dtype = torch.float32) -> NIRNetwork:
    """A ``NIRNetwork`` from a NIR file (or a ``nir.NIRGraph``). ``dt``: the Euler step the graph's time
    constants are read with; default: the graph's ``dt`` metadata (written by ``export``), else 1e-4
    (snnTorch's)."""
    nir = _nir()
    graph = source if isinstance(source, nir.NIRGraph) else read(source)
    return NIRNetwork(graph, dt=dt, dtype=dtype)


# ------------------------------------------------------------------------------------ round trip
def round_trip(model, sample_input: torch.Tensor, cue=None, nir_graph=None, *, dt: float = DEFAULT_DT,
               fold_thresholds: bool = False) -> dict:
    """Export ``model`` (or take ``nir_graph``), import it back in float64 and run both on the samples:
    ``{"populations", "spike_agreement", "identical", "max_logit_difference", "prediction_agreement"}``,
    the agreement being the fraction of (population, step, sample, neuron) spikes that are equal."""
    graph = export_graph(model, sample_input, cue)
    if nir_graph is None:
        nir_graph = to_nir(graph, dt, fold_thresholds)
    return _agreement(model, sample_input, cue, graph, nir_graph)


def _agreement(model, sample_input: torch.Tensor, cue, graph: NetworkGraph, nir_graph) -> dict:
    """``round_trip``'s report for ``nir_graph``, run on the step inputs of ``graph`` (the model's network
    graph on these samples)."""
    from ..graph import torch_population_spikes

    net = NIRNetwork(nir_graph, dtype=torch.float64)
    with torch.no_grad():
        values = net.run(**{k: torch.from_numpy(v) for k, v in graph.step_inputs().items()})
    ref, logits = torch_population_spikes(model, sample_input, cue)
    missing = sorted(set(ref) - set(values))
    if missing:
        raise ExportError(f"population {missing[0]!r} is not in the NIR graph")
    equal = total = 0
    identical = True
    for name, spikes in ref.items():
        ours = values[name].reshape(spikes.shape).numpy() != 0
        equal += int((ours == spikes).sum())
        total += spikes.size
        identical &= bool(np.array_equal(ours, spikes))
    report = {"populations": len(ref), "spike_agreement": equal / max(total, 1), "identical": identical}
    if "head" in values and len(net.outputs) == 1:
        out = values[net.outputs[0]].mean(dim=0).numpy()
        report["max_logit_difference"] = float(np.abs(out - logits).max())
        report["prediction_agreement"] = float(np.mean(out.argmax(-1) == logits.argmax(-1)))
    return report


def export_checkpoint(path, out, *, samples: int = 8, dt: float = DEFAULT_DT, fold_thresholds: bool = False) -> dict:
    """``spiking-attn export --format nir``: the checkpoint's model as a NIR file at ``out``, checked by
    importing it back and running the first ``samples`` test samples of its task through both."""
    from ..checkpoint import load_model, spiking_checkpoint
    from ..data import checkpoint_test_samples
    from ..errors import check_int

    check_int(samples, "samples", low=1, high=100000)
    _check_dt(dt)
    payload, config = spiking_checkpoint(path, "NIR describes spiking networks")
    task, data, rows = checkpoint_test_samples(payload, path, samples,
                                               "spiking_attn.interop.nir.export(model, sample_input)")
    model = load_model(path)
    x, cue = data.x_test[rows], data.context("test", rows).get("cue")
    network = export_graph(model, x, cue)  # built once: written, and run for the check
    graph = to_nir(network, dt, fold_thresholds)
    check = _agreement(model, x, cue, network, graph)
    write(out, graph)
    neurons = sum(1 for n in graph.nodes.values() if type(n).__name__ in ("LIF", "CubaLIF", "IF"))
    return {"checkpoint": str(path), "task": task, "mechanism": config.mechanism, "out": os.fspath(out),
            "nodes": len(graph.nodes), "edges": len(graph.edges), "neuron_nodes": neurons,
            "bytes": os.path.getsize(out), "samples": samples, "dt": dt, "fold_thresholds": fold_thresholds, **check}
