"""The network graph of a spiking model: LIF populations and the static synapses between them.

Hardware backends (the Lava exporter, the fixed-point emulator, the core mapper) do not read torch
modules; they read this graph. ``export_graph(model, x, cue)`` walks the module tree and dispatches on
module type through ``EXPORT_RULES``: each module type registers one rule (``@export_rule(Cls)``), in
the file that defines the module, which re-states the module's forward pass with graph handles:

* ``Spikes``: the output of a population (binary, ``[T, B, *shape]`` per sample in torch time);
* ``Current``: a linear combination of spike trains through weight matrices, plus currents computed
  on the host (the analog encoding layer) and a constant bias, ``[T, B, *shape]``.

A rule turns currents into spikes only through ``graph.population(lif_module, current)`` (a LIF
population of the model) or ``graph.logic(name, current, vth)`` (a coincidence neuron: the AND of
two spike trains is a population with threshold between one and two inputs, no memory); weight
layers become sparse matrices through ``graph.dense(layer, spikes)`` and any other linear map of
spikes (a sum over tokens, a broadcast to heads) through ``graph.linear_map(spikes, fn)``. A module
type without a rule, or an operation that is not a static synapse, is an ``ExportError`` naming the
module and why.

Time in the graph is torch time: at step ``t`` every population sees its inputs of step ``t``.
``simulate`` runs the graph that way in float64 (the reference the exporters are checked against);
hardware timing (every synapse adds a step) is the backends' business (``hardware/lava.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import SpikingAttnError

EXPORT_RULES: Dict[type, Callable] = {}

ROLES = ("neuron", "logic", "relay", "input")
EXPORTABLE_RESETS = ("zero", "subtract")  # the resets of neuron.lif_step the backends implement


class ExportError(SpikingAttnError):
    """A model (or a part of it) cannot be expressed as LIF populations and static synapses."""


def export_rule(cls: type):
    """Register the decorated function as the graph rule of module type ``cls``.

    The rule is called as ``rule(module, graph, *inputs, **keywords)`` with graph handles and returns
    handles, as the module's ``forward`` returns tensors.
    """
    def register(fn):
        EXPORT_RULES[cls] = fn
        return fn
    return register


def rule_for(module: nn.Module) -> Optional[Callable]:
    for cls in type(module).__mro__:
        if cls in EXPORT_RULES:
            return EXPORT_RULES[cls]
    return None


@dataclass
class Edge:
    """Static synapses from population ``source`` into a population: ``weight`` ``[size, source size]``
    (a scipy CSR matrix, float64)."""

    source: str
    weight: object


@dataclass
class Node:
    """One population.

    ``role``: 'neuron' (a LIF population of the model), 'logic' (a coincidence neuron: AND / AND-NOT of
    spike trains), 'relay' (added by backends to delay a spike train) or 'input' (spikes given by the
    host, e.g. the encoded cue). Parameters are float64 arrays of ``size`` values. ``host`` holds the
    currents computed on the host, ``[T, B, size]``; ``spikes`` the spikes of an input node.
    ``group`` is the core group the population belongs to (a mechanism gets its own).
    ``reset`` ('zero' or 'subtract') and ``v_init`` (every sample starts from ``v = v_init * vth``,
    ``u = 0``) are the population's, as in ``neuron.lif_step``.
    ``host_affine`` / ``host_offset`` describe ``host`` as a function of the graph's host inputs, where
    the rule that made the host current gave one (``NetworkGraph.host_current(..., encoding=...)``):
    ``host[t] = sum_k host_affine[k] @ inputs[k][t] + host_offset`` (what an exchange format such as NIR
    needs in place of the values).
    """

    name: str
    shape: Tuple[int, ...]
    role: str
    group: str
    du: np.ndarray
    dv: np.ndarray
    vth: np.ndarray
    bias: np.ndarray
    edges: List[Edge] = field(default_factory=list)
    host: Optional[np.ndarray] = None
    spikes: Optional[np.ndarray] = None
    reset: str = "zero"
    v_init: float = 0.0
    host_affine: Optional[Dict[str, object]] = None
    host_offset: Optional[np.ndarray] = None

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1

    def decays(self) -> tuple:
        """``(du, dv)`` as numbers: Loihi's LIF has one of each per population (an error otherwise)."""
        du, dv = np.unique(self.du), np.unique(self.dv)
        if du.size != 1 or dv.size != 1:
            raise ExportError(f"{self.name}: Loihi's LIF has one du and one dv per population; this one has "
                              f"{du.size} and {dv.size} different values")
        return float(du[0]), float(dv[0])


@dataclass
class Readout:
    """How the host turns the spikes of ``source`` into logits: ``mean over steps and tokens of
    spikes @ weight.T + bias`` (``weight`` ``[C, D]``, the source shaped ``[tokens, D]``)."""

    source: str
    weight: np.ndarray
    bias: np.ndarray

    def logits(self, spikes: np.ndarray) -> np.ndarray:
        """``spikes`` ``[T, B, tokens * D]`` -> logits ``[B, C]``."""
        t, b, _ = spikes.shape
        per_token = spikes.reshape(t, b, -1, self.weight.shape[1]).astype(np.float64)
        return per_token.mean(axis=(0, 2)) @ self.weight.T + self.bias


class Spikes:
    """Handle to the spikes of a population. ``shape`` excludes time and batch."""

    def __init__(self, graph: "NetworkGraph", name: str, shape: Sequence[int]) -> None:
        self.graph, self.name, self.shape = graph, name, tuple(shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def current(self) -> "Current":
        """The spikes as a current through unit weights."""
        from scipy import sparse

        return Current(self.graph, self.shape, {self.name: sparse.identity(self.size, format="csr")})


class Current:
    """Handle to a current ``[T, B, *shape]``: ``sum_s W_s @ spikes_s + host + bias``.

    ``affine`` (``{input: matrix}``) and ``offset``, when known, give the host part as an affine function
    of the graph's host inputs at each step: ``host[t] = sum_k affine[k] @ inputs[k][t] + offset``.
    """

    def __init__(self, graph: "NetworkGraph", shape: Sequence[int], terms: Optional[dict] = None,
                 host: Optional[np.ndarray] = None, bias: Optional[np.ndarray] = None,
                 affine: Optional[dict] = None, offset: Optional[np.ndarray] = None) -> None:
        self.graph, self.shape = graph, tuple(shape)
        self.terms = dict(terms or {})
        self.host = host
        self.bias = np.zeros(self.size) if bias is None else np.asarray(bias, dtype=np.float64)
        self.affine = None if host is None or affine is None else dict(affine)
        self.offset = None if self.affine is None else (np.zeros(self.size) if offset is None else offset)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    def __add__(self, other: "Current") -> "Current":
        if isinstance(other, Spikes):
            other = other.current()
        if not isinstance(other, Current) or other.shape != self.shape:
            raise ExportError(f"cannot add {getattr(other, 'shape', other)} to a current of shape {self.shape}")
        terms = dict(self.terms)
        for name, w in other.terms.items():
            terms[name] = terms[name] + w if name in terms else w
        host = self.host if other.host is None else (other.host if self.host is None else self.host + other.host)
        affine, offset = _add_affine(self, other)
        return Current(self.graph, self.shape, terms, host, self.bias + other.bias, affine, offset)

    def without_bias(self) -> "Current":
        return Current(self.graph, self.shape, self.terms, self.host, affine=self.affine, offset=self.offset)

    def scaled(self, factor: float) -> "Current":
        return Current(self.graph, self.shape, {n: w * factor for n, w in self.terms.items()},
                       None if self.host is None else self.host * factor, self.bias * factor,
                       None if self.affine is None else {k: m * factor for k, m in self.affine.items()},
                       None if self.offset is None else self.offset * factor)


def _add_affine(a: "Current", b: "Current"):
    """The affine description of ``a.host + b.host`` (None where either host part has none)."""
    if a.host is None:
        return b.affine, b.offset
    if b.host is None:
        return a.affine, a.offset
    if a.affine is None or b.affine is None:
        return None, None
    affine = dict(a.affine)
    for name, m in b.affine.items():
        affine[name] = affine[name] + m if name in affine else m
    return affine, a.offset + b.offset


def _is_selection(current: "Current") -> bool:
    """True if every entry of ``current`` is one spike (or nothing): unit weights, one per row."""
    if current.host is not None or np.any(current.bias != 0):
        return False
    rows = np.zeros(current.size)
    for w in current.terms.values():
        if w.nnz and not np.all(w.data == 1.0):
            return False
        rows += np.asarray((w != 0).sum(axis=1)).reshape(-1)
    return bool(np.all(rows <= 1))


def _check_reset(name: str, reset, v_init) -> None:
    if reset not in EXPORTABLE_RESETS:
        raise ExportError(f"{name}: reset={reset!r} has no export rule (exportable: {', '.join(EXPORTABLE_RESETS)})")
    if isinstance(v_init, bool) or not isinstance(v_init, (int, float)) or not 0.0 <= v_init < 1.0:
        raise ExportError(f"{name}: v_init={v_init!r} has no export rule (a fraction of the threshold in [0, 1))")


def _as_params(value: torch.Tensor, shape: Tuple[int, ...]) -> np.ndarray:
    return value.detach().to(torch.float64).expand(shape).reshape(-1).numpy().copy()


class NetworkGraph:
    """Populations in the order they were created (a topological order of the synapses), the host's
    input spikes and currents for a batch of samples, and the readout.

    Built by ``export_graph``; rules add to it through the methods below.
    """

    def __init__(self, model: nn.Module, timesteps: int, batch: int) -> None:
        self.timesteps, self.batch = timesteps, batch
        self.nodes: Dict[str, Node] = {}
        self.readout: Optional[Readout] = None
        self.host_inputs: Dict[str, Tuple[int, ...]] = {}  # name -> per-step shape, of encodings given
        self.host_input_values: Dict[str, torch.Tensor] = {}  # name -> [T, B, *shape] for these samples
        self._names = {id(m): n for n, m in model.named_modules()}
        self._group: List[str] = []

    # ---- naming and dispatch
    def name_of(self, module: nn.Module) -> str:
        return self._names.get(id(module), type(module).__name__) or "model"

    def call(self, module: nn.Module, *args, **kwargs):
        """Apply ``module``'s rule to graph handles (what ``module(*args, **kwargs)`` does to tensors)."""
        rule = rule_for(module)
        if rule is None:
            raise ExportError(f"{self.name_of(module)} ({type(module).__name__}) has no export rule: it cannot be "
                              f"mapped to LIF populations and static synapses (exportable mechanisms register one "
                              f"with spiking_attn.graph.export_rule)")
        return rule(module, self, *args, **kwargs)

    def group(self, name: str):
        """Context manager: populations created inside belong to core group ``name``."""
        graph = self

        class _Group:
            def __enter__(self):
                graph._group.append(name)

            def __exit__(self, *exc):
                graph._group.pop()

        return _Group()

    def _add(self, node: Node) -> Spikes:
        if node.name in self.nodes:
            raise ExportError(f"population {node.name!r} is created twice (a module used twice in one model?)")
        self.nodes[node.name] = node
        return Spikes(self, node.name, node.shape)

    # ---- handles
    def host_current(self, values: torch.Tensor, encoding=None) -> Current:
        """A current computed on the host, ``[T, B, *shape]``.

        ``encoding``, optional: ``(fn, inputs)`` saying how the host computes it at each step, where
        ``inputs`` maps names to the per-step host inputs ``[T, B, *in_shape]`` and ``fn`` takes
        ``{name: [K, *in_shape]}`` to ``[K, *shape]``. ``fn`` must be affine (an encoding layer in eval
        mode, plus constants such as positions); it is read off by probing and checked on ``inputs``.
        """
        values = values.detach().to(torch.float64)
        shape = tuple(values.shape[2:])
        host = values.reshape(self.timesteps, self.batch, -1).numpy().copy()
        affine = offset = None
        if encoding is not None:
            affine, offset = self._affine_encoding(*encoding, host)
        return Current(self, shape, host=host, affine=affine, offset=offset)

    def _affine_encoding(self, fn, inputs: dict, host: np.ndarray):
        """``({name: CSR [size, input size]}, offset)`` of the affine ``fn``, checked against ``host``."""
        from scipy import sparse

        shapes = {name: tuple(x.shape[2:]) for name, x in inputs.items()}
        for name, x in inputs.items():
            if tuple(x.shape[:2]) != (self.timesteps, self.batch):
                raise ExportError(f"host input {name!r} has shape {tuple(x.shape)}; expected [T={self.timesteps}, "
                                  f"B={self.batch}, ...]")
            known = self.host_inputs.get(name)
            if known is not None and known != shapes[name]:
                raise ExportError(f"host input {name!r} has shape {shapes[name]} here and {known} elsewhere")
        with torch.no_grad():
            zeros = {name: torch.zeros(1, *shp, dtype=torch.float64) for name, shp in shapes.items()}
            offset = fn(zeros).reshape(-1).to(torch.float64).numpy().copy()
            affine, approx = {}, np.broadcast_to(offset, host.shape).copy()
            for name, shp in shapes.items():
                n = int(np.prod(shp))
                probe = dict(zeros, **{name: torch.eye(n, dtype=torch.float64).reshape(n, *shp)})
                probe.update({k: v.expand(n, *v.shape[1:]) for k, v in zeros.items() if k != name})
                cols = fn(probe).reshape(n, -1).to(torch.float64).numpy() - offset  # [n, size]
                m = sparse.csr_matrix(cols.T)
                m.eliminate_zeros()
                affine[name] = m
                flat = inputs[name].detach().to(torch.float64).reshape(self.timesteps * self.batch, n).numpy()
                approx += (m @ flat.T).T.reshape(host.shape)
        scale = max(1.0, float(np.abs(host).max(initial=0.0)))
        if not np.allclose(approx, host, rtol=0.0, atol=1e-9 * scale):
            raise ExportError("the host's encoding is not affine in its inputs, so it has no weight-layer form "
                              f"(largest difference {float(np.abs(approx - host).max()):.3g})")
        self.host_inputs.update(shapes)
        self.host_input_values.update({k: v.detach().to(torch.float64) for k, v in inputs.items()})
        return affine, offset

    def step_inputs(self) -> Dict[str, np.ndarray]:
        """What the host gives the network at each step for this graph's samples, by input name, flattened:
        ``{name: [T, B, size]}`` (the encoded inputs of ``host_current(..., encoding)`` and the input
        populations' spikes): the inputs an exchange format's graph of this network is run with."""
        given = {k: v.reshape(self.timesteps, self.batch, -1).numpy() for k, v in self.host_input_values.items()}
        given.update({n: node.spikes.astype(np.float64) for n, node in self.nodes.items() if node.role == "input"})
        return given

    def input_spikes(self, name: str, spikes: torch.Tensor) -> Spikes:
        """Spikes given by the host ``[T, B, *shape]`` (binary), as a source population."""
        values = spikes.detach().to(torch.float64)
        if not bool(((values == 0) | (values == 1)).all()):
            raise ExportError(f"input {name!r} must be binary spikes to enter the network as spikes")
        shape = tuple(values.shape[2:])
        zeros = np.zeros(int(np.prod(shape)))
        node = Node(name, shape, "input", self._current_group(), zeros, zeros, zeros, zeros,
                    spikes=values.reshape(self.timesteps, self.batch, -1).numpy().astype(bool))
        return self._add(node)

    def dense(self, layer: nn.Module, x) -> Current:
        """A weight layer (``nn.Linear`` or ``LinearBN``, BatchNorm folded) applied to every token of ``x``:
        spikes, or a selection of spikes (``linear_map`` picking channels)."""
        from scipy import sparse

        from .layers import LinearBN

        where = self.name_of(layer)
        if isinstance(x, Spikes):
            x = x.current()
        if not isinstance(x, Current) or not _is_selection(x):
            raise ExportError(f"{where} reads a non-spike input: only the encoding layer may, and it runs on the host")
        if isinstance(layer, LinearBN):
            layer = layer.fold()
        if not isinstance(layer, nn.Linear):
            raise ExportError(f"{where} ({type(layer).__name__}) is not a weight layer the graph knows")
        w = layer.weight.detach().to(torch.float64).numpy()  # [out, in]
        if x.shape[-1] != w.shape[1]:
            raise ExportError(f"{where} expects {w.shape[1]} features, got shape {x.shape}")
        lead = int(np.prod(x.shape[:-1]))
        matrix = sparse.kron(sparse.identity(lead, format="csr"), sparse.csr_matrix(w), format="csr")
        bias = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.detach().to(torch.float64).numpy()
        terms = {name: (matrix @ sel).tocsr() for name, sel in x.terms.items()}
        return Current(self, x.shape[:-1] + (w.shape[0],), terms, bias=np.tile(bias, lead))

    def linear_map(self, x, fn: Callable[[torch.Tensor], torch.Tensor]) -> Current:
        """Any linear map ``fn`` of spikes (or of a current made of spikes) as a current. ``fn`` takes a
        ``[K, *x.shape]`` tensor and returns ``[K, *out_shape]``; it must be linear (``fn(0) = 0``)."""
        from scipy import sparse

        current = x.current() if isinstance(x, Spikes) else x
        basis = torch.eye(current.size, dtype=torch.float64).reshape(current.size, *current.shape)
        with torch.no_grad():
            if bool(fn(torch.zeros_like(basis[:1])).abs().max() != 0):
                raise ExportError("linear_map needs a linear function (fn(0) must be 0)")
            out = fn(basis)  # [size, *out_shape]
        out_shape = tuple(out.shape[1:])
        m = sparse.csr_matrix(out.reshape(current.size, -1).numpy().T)  # [out size, in size]
        m.eliminate_zeros()
        terms = {name: (m @ w).tocsr() for name, w in current.terms.items()}
        host = affine = offset = None
        if current.host is not None:
            host = current.host @ m.T.toarray()
            if current.affine is not None:
                affine = {k: (m @ a).tocsr() for k, a in current.affine.items()}
                offset = m @ current.offset
        return Current(self, out_shape, terms, host, m @ current.bias, affine, offset)

    def population(self, lif: nn.Module, current: Current, name: Optional[str] = None) -> Spikes:
        """The model's LIF population ``lif`` driven by ``current``."""
        from .neuron import LIFPopulation

        name = name or self.name_of(lif)
        if not isinstance(lif, LIFPopulation):
            raise ExportError(f"{name} ({type(lif).__name__}) is not a LIFPopulation")
        if lif.adaptive:
            raise ExportError(f"{name}: an adaptive threshold has no export rule yet (Lava's ATRLIF is not mapped)")
        _check_reset(name, lif.reset, lif.v_init)
        shape = current.shape
        try:
            params = {k: _as_params(getattr(lif, k), shape) for k in ("du", "dv", "vth", "bias")}
        except RuntimeError:
            raise ExportError(f"{name}: parameters of shape {tuple(lif.vth.shape)} do not broadcast to the "
                              f"population's shape {shape}") from None
        return self._node(name, "neuron", current, reset=lif.reset, v_init=float(lif.v_init), **params)

    def neurons(self, name: str, current: Current, *, du=1.0, dv=0.5, vth=1.0, bias=0.0, reset: str = "zero",
                v_init: float = 0.0) -> Spikes:
        """A population given by its parameters (numbers or per-neuron arrays), for graphs built by
        hand rather than exported from a model."""
        _check_reset(name, reset, v_init)
        n = current.size
        params = {k: np.broadcast_to(np.asarray(v, dtype=np.float64), (n,)).copy()
                  for k, v in (("du", du), ("dv", dv), ("vth", vth), ("bias", bias))}
        return self._node(name, "neuron", current, reset=reset, v_init=float(v_init), **params)

    def logic(self, name: str, current: Current, vth: float) -> Spikes:
        """A coincidence population without memory (``du = dv = 1``): fires where ``current > vth``.
        With unit weights from two spike trains and ``vth = 1.5`` it is their AND; with weights
        ``+1`` and ``-1`` and ``vth = 0.5``, ``a AND NOT b``."""
        n = current.size
        return self._node(name, "logic", current, du=np.ones(n), dv=np.ones(n), vth=np.full(n, float(vth)),
                          bias=np.zeros(n))

    def _current_group(self) -> str:
        return self._group[-1] if self._group else "cortex"

    def _node(self, name, role, current: Current, *, du, dv, vth, bias, reset="zero", v_init=0.0) -> Spikes:
        for source in current.terms:
            if source not in self.nodes:
                raise ExportError(f"{name}: its input {source!r} is not a population of the graph")
        edges = [Edge(src, w.tocsr()) for src, w in current.terms.items() if w.nnz]
        host, affine, offset = current.host, current.affine, current.offset
        if np.any(du != 1.0) and np.any(current.bias != 0):
            # a weight layer's bias is a constant input current: with du < 1 it is filtered like the rest of
            # the input, which a bias on v is not, so it goes in with the host's currents
            shape = (self.timesteps, self.batch, current.size)
            host = np.broadcast_to(current.bias, shape).copy() if host is None else host + current.bias
            if current.host is None:
                affine, offset = {}, current.bias.copy()
            elif affine is not None:
                offset = offset + current.bias
        else:
            bias = bias + current.bias
        node = Node(name, current.shape, role, self._current_group(), du, dv, vth, bias,
                    edges, host, reset=reset, v_init=v_init, host_affine=affine, host_offset=offset)
        return self._add(node)


def simulate(graph: NetworkGraph, record_membrane: bool = False) -> Dict[str, np.ndarray]:
    """Run the graph in torch time, float64: ``{population: spikes [T, B, size] bool}``.

    The same equations as ``neuron.lif_step``: from ``u = 0``, ``v = v_init * vth``,
    ``u = u (1 - du) + a``, ``v = v (1 - dv) + u + bias``, spike where ``v > vth``, then ``v = 0`` there
    (reset 'zero') or ``v = v - vth`` (reset 'subtract').
    """
    t_steps, batch = graph.timesteps, graph.batch
    out = {name: np.zeros((t_steps, batch, node.size), dtype=bool) for name, node in graph.nodes.items()}
    state = {name: (np.zeros((batch, node.size)), np.zeros((batch, node.size)) + node.v_init * node.vth)
             for name, node in graph.nodes.items()}
    for t in range(t_steps):
        for name, node in graph.nodes.items():
            if node.role == "input":
                out[name][t] = node.spikes[t]
                continue
            a = np.zeros((batch, node.size)) if node.host is None else node.host[t].copy()
            for edge in node.edges:
                a += (edge.weight @ out[edge.source][t].T.astype(np.float64)).T
            u, v = state[name]
            u = u * (1 - node.du) + a
            v = v * (1 - node.dv) + u + node.bias
            s = v > node.vth
            v = np.where(s, v - node.vth if node.reset == "subtract" else 0.0, v)
            state[name] = (u, v)
            out[name][t] = s
    return out


def export_graph(model: nn.Module, x: torch.Tensor, cue: Optional[torch.Tensor] = None) -> NetworkGraph:
    """The network graph of ``model`` for the samples ``x`` (and ``cue``), in float64 and eval mode.

    The host's share (the encoding layer's currents, the encoded cue) is computed here for these
    samples; the rest is populations and static synapses. Raises ``ExportError`` for a part that cannot
    be mapped, naming it.
    """
    import copy

    from .models import SpikingClassifier

    if isinstance(model, SpikingClassifier):
        timesteps, batch = model.config.timesteps, (x.shape[-3] if x.dim() in (3, 4) else 0)
    elif rule_for(model) is not None and isinstance(getattr(model, "timesteps", None), int):
        timesteps, batch = model.timesteps, x.shape[0]  # a converted torch model (SpikingSequential)
    else:
        raise ExportError(f"export takes a spiking classifier of this library or a converted torch model, got "
                          f"{type(model).__name__} (a dense model is converted first: spiking_attn.converters)")
    model = copy.deepcopy(model).to(torch.float64).eval()
    graph = NetworkGraph(model, timesteps, batch)
    with torch.no_grad():
        graph.call(model, x, cue=cue)
    return graph


def torch_population_spikes(model: nn.Module, x: torch.Tensor, cue: Optional[torch.Tensor] = None):
    """The spikes of every LIF population of ``model`` (float64, eval) on ``x``: ``{name: [T, B, size]}``,
    and the logits. The reference an exported graph is checked against."""
    import copy

    from .neuron import LIFPopulation

    model = copy.deepcopy(model).to(torch.float64).eval()
    spikes, hooks = {}, []
    for name, module in model.named_modules():
        if isinstance(module, LIFPopulation):
            def hook(mod, args, output, name=name):
                out = output.spikes if isinstance(output, tuple) else output
                spikes[name] = out.detach().reshape(out.shape[0], out.shape[1], -1).numpy().astype(bool)
            hooks.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            x = x.to(torch.float64)
            logits = (model(x) if cue is None else model(x, cue=cue)).numpy()
    finally:
        for h in hooks:
            h.remove()
    return spikes, logits

