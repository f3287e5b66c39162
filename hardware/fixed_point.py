"""Loihi fixed point: quantise a network graph to Loihi's integers, and emulate it bit for bit.

The rules are those of lava-nc 0.10.0's ``fixed_pt`` LIF and Dense models (../shared/REFERENCES.md
has them with their sources); every line below that looks odd is one of them:

* synapses: 8-bit weights with one exponent per synapse group (a Lava ``Dense``): ``a = (sum of the
  weights of the inputs that spiked) << weight_exp`` (an arithmetic ``>>`` for a negative exponent,
  which floors). With weights of both signs Lava keeps only even values in [-256, 254]; this module
  produces weights that Lava's clipping and truncation leave unchanged.
* current: ``u = sign(x) (|x| >> 12)`` with ``x = u (4096 - (du + 1))`` (the current decay uses
  ``du + 1``), then ``u += a << 6``; u wraps at 24 bits (above ``+2^23`` subtract ``2^24``, at or below
  ``-2^23`` add ``2^24``).
* voltage: ``v = clip(sign(y) (|y| >> 12) + u + (bias_mant << bias_exp), -(2^23 - 1), 2^23 - 1)`` with
  ``y = v (4096 - dv)``; the bias is not shifted by 6.
* spike where ``v > vth << 6`` (strict), then ``v = 0``; u is not reset. A population with reset by
  subtraction (``SubtractiveLIF``, lava_processes/subtractive_lif.py) instead takes the same integer
  threshold off: ``v = v - (vth << 6)``.
* every sample starts from ``u = 0`` and ``v = v_start`` (0 for Lava's LIF).

Quantisation of a population (``quantize``): the threshold becomes ``vth_int`` (17 bits), as large as
the calibration samples allow: their largest synaptic input must stay within a signed 16-bit
activation (2^15 units, which also keeps u far inside 24 bits) and the bias within its 13-bit
mantissa and 3-bit exponent; at most 16384. A float unit of membrane is ``64 vth_int / vth`` integer units (per neuron: a
per-neuron threshold is folded into that neuron's weights and bias, so the process has one
threshold). The starting membrane ``v_init * vth`` is ``v_start = round(v_init * (vth_int << 6))``,
the same for every neuron of a population. Decays: ``du_int = 4096 du - 1`` (a current decay of 1,
"current = input", is ``du_int = 4095``), ``dv_int = 4096 dv`` (4095 at most). Host currents are
rounded to integers in the synaptic-input unit.

Weights: with ``weight_bits=8`` a connection is one 8-bit synapse group. With ``weight_bits=16``
(the default) a second group with its own exponent carries the rounding error of the first; both
are ordinary Loihi synapse groups between the same populations, and the target sums them. On the
thalamic-gating quadrant model 8 bits flip about 5 % of the float model's predictions, 16 bits
about 0.5 % (``benchmarks/bench_lava.py``).

``emulate`` runs the quantised graph in torch time (every population sees its inputs of the same
step) in int64 numpy over a whole batch at once; Lava's pipelined run, aligned by depth, gives the
same spikes (``hardware/lava.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from spiking_attn.graph import NetworkGraph, simulate

U_LIMIT = 2 ** 23
VTH_MAX = 16384  # integer threshold at most (17 bits allowed); the peak-current and bias caps usually bind first
PEAK_INPUT = 2 ** 15  # the largest calibrated synaptic input, in integer units: a signed 16-bit activation
WEIGHT_BITS = (8, 16)
BIAS_MANT_MAX = 4095
WEIGHT_EXP_RANGE = (-8, 7)


@dataclass
class FixedEdge:
    source: str
    weight: object  # scipy CSR, int64 values Lava accepts unchanged
    weight_exp: int


@dataclass
class FixedNode:
    name: str
    shape: Tuple[int, ...]
    role: str
    group: str
    du: int
    dv: int
    vth: int
    bias_mant: np.ndarray  # int64 [size]
    bias_exp: int
    scale: np.ndarray  # float [size]: integer synaptic-input units per float unit of current
    edges: List[FixedEdge] = field(default_factory=list)
    host: Optional[np.ndarray] = None  # int64 [T, B, size]
    spikes: Optional[np.ndarray] = None
    reset: str = "zero"  # or 'subtract': v - (vth << 6) after a spike
    v_start: int = 0  # the membrane every sample starts from

    @property
    def size(self) -> int:
        return int(np.prod(self.shape)) if self.shape else 1


@dataclass
class FixedGraph:
    timesteps: int
    batch: int
    nodes: Dict[str, FixedNode]
    readout: object
    source: NetworkGraph


def check_weight_bits(bits) -> int:
    if isinstance(bits, bool) or bits not in WEIGHT_BITS:
        from spiking_attn.graph import ExportError

        raise ExportError(f"weight_bits must be 8 or 16, got {bits!r}")
    return bits


def decay_int(value: float, offset: int) -> int:
    """A float decay in [0, 1] as Loihi's 12-bit register (``offset``: 1 for du, 0 for dv)."""
    return int(min(4095, max(0, round(4096 * float(value)) - offset)))


def split_weights(w, rows_scale: np.ndarray, bits: int = 16):
    """Synapse groups that together carry ``w`` (rows scaled as in ``quantize_weights``): one 8-bit
    group for ``bits=8``; for ``bits=16`` a second group, with its own exponent, carries what the
    first rounded away. Both are ordinary Loihi synapses from the same source to the same target;
    the target sums them. Returns ``[(W_int, weight_exp), ...]``."""
    first, exp = quantize_weights(w, rows_scale)
    groups = [(first, exp)]
    if bits == 16:
        rest = (w.multiply(rows_scale[:, None]) - first.astype(np.float64) * 2.0 ** exp).tocsr()
        rest.eliminate_zeros()
        if rest.nnz:
            groups.append(quantize_weights(rest, np.ones(w.shape[0])))
    return groups


def quantize_weights(w, rows_scale: np.ndarray):
    """Float weights ``w`` (CSR ``[out, in]``) in integer synaptic units (row i times ``rows_scale[i]``):
    ``(W_int, weight_exp)`` with ``W_int << weight_exp`` approximating them, ``W_int`` already in the
    form Lava's clipping and truncation keep."""
    scaled = w.multiply(rows_scale[:, None]).tocsr()
    data = scaled.data
    if data.size == 0 or np.all(data == 0):
        return scaled.astype(np.int64), 0
    mixed = data.min() < 0 < data.max()
    top = 254.0 if mixed else 255.0
    exp = int(np.clip(np.ceil(np.log2(np.abs(data).max() / top)), *WEIGHT_EXP_RANGE))
    if mixed:
        ints = 2 * np.round(data / 2.0 ** (exp + 1))
        ints = np.clip(ints, -256, 254)
    else:
        ints = np.clip(np.round(data / 2.0 ** exp), -255, 255)
    out = scaled.copy()
    out.data = ints.astype(np.int64)
    out = out.astype(np.int64)
    out.eliminate_zeros()
    return out.tocsr(), exp


def peak_currents(graph: NetworkGraph, spikes: Optional[Dict[str, np.ndarray]] = None) -> Dict[str, np.ndarray]:
    """The largest |input current + bias| into each neuron of ``graph`` over its samples and steps
    (``spikes``: its float simulation, computed if not given). A graph exported from calibration
    samples gives the peaks ``quantize`` sizes the integer thresholds by."""
    spikes = simulate(graph) if spikes is None else spikes
    return {name: _peak_current(node, spikes) for name, node in graph.nodes.items() if node.role != "input"}


def quantize(graph: NetworkGraph, peaks: Optional[Dict[str, np.ndarray]] = None, weight_bits: int = 16) -> FixedGraph:
    """Loihi integers for every population and synapse of ``graph`` (the module docstring has the rules).

    ``peaks``: the largest current into each neuron (``peak_currents`` of a calibration graph); by
    default measured on ``graph``'s own samples. ``weight_bits``: 8 (one 8-bit synapse group per
    connection) or 16 (two groups, ``split_weights``).
    """
    check_weight_bits(weight_bits)
    if peaks is None:
        peaks = peak_currents(graph)
    nodes: Dict[str, FixedNode] = {}
    for name, node in graph.nodes.items():
        size = node.size
        if node.role == "input":
            nodes[name] = FixedNode(name, node.shape, node.role, node.group, 0, 0, 0, np.zeros(size, np.int64), 0,
                                    np.ones(size), spikes=node.spikes)
            continue
        theta = node.vth
        peak = peaks[name] / theta  # per neuron, in thresholds
        bias_rel = np.abs(node.bias) / theta
        limit = VTH_MAX
        if peak.max() > 0:
            limit = min(limit, PEAK_INPUT / peak.max())
        if bias_rel.max() > 0:
            limit = min(limit, (BIAS_MANT_MAX << 7) / 64.0 / bias_rel.max())
        vth_int = int(max(1, np.floor(limit)))
        scale = vth_int / theta  # synaptic-input units per float unit, per neuron
        edges = []
        for edge in node.edges:
            for w_int, exp in split_weights(edge.weight, scale, weight_bits):
                edges.append(FixedEdge(edge.source, w_int, exp))
                _product(edges[-1])  # prepared with the network, as Lava compiles before it runs
        bias_v = node.bias * scale * 64.0  # in membrane units
        bias_exp = 0
        while np.abs(bias_v).max() / 2 ** bias_exp > BIAS_MANT_MAX and bias_exp < 7:
            bias_exp += 1
        bias_mant = np.clip(np.round(bias_v / 2 ** bias_exp), -4096, BIAS_MANT_MAX).astype(np.int64)
        host = None if node.host is None else np.round(node.host * scale).astype(np.int64)
        du, dv = node.decays()
        v_start = int(np.floor(node.v_init * (vth_int << 6) + 0.5))
        nodes[name] = FixedNode(name, node.shape, node.role, node.group, decay_int(du, 1), decay_int(dv, 0), vth_int,
                                bias_mant, bias_exp, scale, edges, host, reset=node.reset, v_start=v_start)
    return FixedGraph(graph.timesteps, graph.batch, nodes, graph.readout, graph)


def _peak_current(node, reference) -> np.ndarray:
    """The largest |input current + bias| per neuron over the samples and steps (float)."""
    t_steps, batch = next(iter(reference.values())).shape[:2]
    total = np.zeros((t_steps, batch, node.size)) if node.host is None else node.host.copy()
    for edge in node.edges:
        s = reference[edge.source].astype(np.float64)  # [T, B, src]
        for t in range(t_steps):
            total[t] += (edge.weight @ s[t].T).T
    return np.abs(total + node.bias).max(axis=(0, 1))


DENSE_LIMIT = 8_000_000  # synapse groups up to this many entries are multiplied as dense BLAS matrices


def _block_diagonal(w) -> Optional[np.ndarray]:
    """``B`` if ``w == kron(I_k, B)`` for some k > 1 (a weight layer applied to every token), else None."""
    rows, cols = w.shape
    for k in range(min(rows, cols), 1, -1):
        if rows % k or cols % k:
            continue
        rb, cb = rows // k, cols // k
        block = w[:rb, :cb].toarray()
        if w.nnz == k * np.count_nonzero(block):
            from scipy import sparse

            if (sparse.kron(sparse.identity(k, format="csr", dtype=w.dtype), sparse.csr_matrix(block)) != w).nnz == 0:
                return block
    return None


def _product(edge: FixedEdge):
    """A function computing ``spikes @ W.T`` exactly, chosen once per synapse group."""
    fn = getattr(edge, "_product", None)
    if fn is not None:
        return fn
    w = edge.weight
    bound = float(np.abs(w).sum(axis=1).max()) if w.nnz else 0.0
    dtype = np.float32 if bound < 2 ** 24 else np.float64  # integer sums stay exact
    block = _block_diagonal(w) if w.nnz else None
    if block is not None:
        bt = block.astype(dtype).T
        k = w.shape[1] // block.shape[1]

        def fn(flat):
            return (flat.reshape(-1, block.shape[1]).astype(dtype, copy=False) @ bt).reshape(flat.shape[0],
                                                                                          k * block.shape[0])
    elif w.shape[0] * w.shape[1] <= DENSE_LIMIT:
        wt = w.toarray().astype(dtype).T

        def fn(flat):
            return flat.astype(dtype, copy=False) @ wt
    else:
        ws = w.astype(dtype)

        def fn(flat):
            return np.asarray((ws @ flat.T.astype(dtype, copy=False)).T)
    edge._product = fn
    return fn


def _delivered(edge: FixedEdge, flat: np.ndarray) -> np.ndarray:
    """``flat`` float32 spikes ``[M, src]`` -> what the synapse group delivers, ``[M, dst]``: the integer
    sums shifted by the weight exponent, held exactly in floating point (a power-of-two scaling of an
    integer is exact; for a negative exponent the result is floored, as Lava's arithmetic shift)."""
    acc = _product(edge)(flat)
    if edge.weight_exp > 0:
        acc *= 2.0 ** edge.weight_exp
    elif edge.weight_exp < 0:
        acc *= 1.0 / 2 ** -edge.weight_exp
        np.floor(acc, out=acc)
    return acc


def _decay(x: np.ndarray, keep: int) -> np.ndarray:
    """``sign(x * keep) * (|x * keep| >> 12)``: the product shifted right by 12, rounded toward zero
    (an arithmetic shift floors; adding 4095 to negative values first turns that into truncation)."""
    y = x * keep
    y += (y >> 63) & 4095
    y >>= 12
    return y


def lif_fixed_step(node: FixedNode, u: np.ndarray, v: np.ndarray, a: np.ndarray):
    """One bit-accurate step of Loihi's LIF (int64 arrays ``[B, size]``): returns ``(spikes, u, v)``.
    A sample starts from ``u = 0``, ``v = node.v_start``."""
    if node.du == 4095:  # the current is the input of the step: (4096 - 4096) * u = 0
        u = a << 6
    else:
        u = _decay(u, 4096 - (node.du + 1))
        u += a << 6
    if u.size and (u.max() > U_LIMIT or u.min() <= -U_LIMIT):  # 24-bit wrap, asymmetric as on Loihi
        u = np.where(u > U_LIMIT, u - 2 * U_LIMIT, u)
        u = np.where(u <= -U_LIMIT, u + 2 * U_LIMIT, u)
    v = _decay(v, 4096 - node.dv)
    v += u
    v += node.bias_mant << node.bias_exp
    if v.size and (v.max() > U_LIMIT - 1 or v.min() < -(U_LIMIT - 1)):
        np.clip(v, -(U_LIMIT - 1), U_LIMIT - 1, out=v)
    s = v > (node.vth << 6)
    if node.reset == "subtract":
        v[s] -= node.vth << 6
    else:
        v[s] = 0
    return s, u, v


def _run_population(node: FixedNode, a: np.ndarray) -> np.ndarray:
    """``lif_fixed_step`` over all steps for input ``a`` ``[T, B, size]`` (exact integers held in float64):
    every quantity stays an integer below 2^53 and every scaling is by a power of two, so float64
    gives the integer results exactly, without conversions."""
    keep_u = (4096 - (node.du + 1)) / 4096.0
    keep_v = (4096 - node.dv) / 4096.0
    bias = (node.bias_mant << node.bias_exp).astype(np.float64)
    vth = float(node.vth << 6)
    subtract = node.reset == "subtract"
    spikes = np.zeros(a.shape, dtype=bool)
    u = np.zeros(a.shape[1:])
    v = np.full(a.shape[1:], float(node.v_start))
    for t in range(a.shape[0]):
        step = a[t].astype(np.float64) * 64.0
        if keep_u == 0.0:
            u = step
        else:
            u = np.trunc(u * keep_u)
            u += step
        if u.size and (u.max() > U_LIMIT or u.min() <= -U_LIMIT):
            u = np.where(u > U_LIMIT, u - 2 * U_LIMIT, u)
            u = np.where(u <= -U_LIMIT, u + 2 * U_LIMIT, u)
        v *= keep_v
        np.trunc(v, out=v)
        v += u
        v += bias
        if v.size and (v.max() > U_LIMIT - 1 or v.min() < -(U_LIMIT - 1)):
            np.clip(v, -(U_LIMIT - 1), U_LIMIT - 1, out=v)
        s = spikes[t]
        np.greater(v, vth, out=s)
        if subtract:
            v[s] -= vth
        else:
            v[s] = 0.0
    return spikes


def emulate(fixed: FixedGraph) -> Dict[str, np.ndarray]:
    """Run the quantised graph over its whole batch: ``{population: spikes [T, B, size] bool}``.

    The synapses carry no state and the graph has no cycles, so each population's input over all
    steps is formed at once (one exact matrix product per synapse group, summed in float64, where
    these integers are exact), and then its neurons run step by step (``_run_population``): the same
    numbers as stepping the whole network in torch time with ``lif_fixed_step``, far fewer calls."""
    t_steps, batch = fixed.timesteps, fixed.batch
    out: Dict[str, np.ndarray] = {}
    last_use = {edge.source: i for i, node in enumerate(fixed.nodes.values()) for edge in node.edges}
    as_float: Dict[str, np.ndarray] = {}  # a source's spikes as float32, kept while later synapses read them
    for i, (name, node) in enumerate(fixed.nodes.items()):
        if node.role == "input":
            out[name] = np.asarray(node.spikes, dtype=bool)
            continue
        # the input is a sum of integers: float32 holds it exactly while its bound stays below 2^24
        bound = 0.0 if node.host is None else float(np.abs(node.host).max(initial=0))
        for edge in node.edges:
            rows = np.abs(edge.weight).sum(axis=1).max() if edge.weight.nnz else 0
            bound += float(rows) * 2.0 ** max(edge.weight_exp, 0)
        dtype = np.float32 if bound < 2 ** 24 else np.float64
        a = None if node.host is None else node.host.astype(dtype)
        for edge in node.edges:
            if edge.source not in as_float:
                src = out[edge.source]
                as_float[edge.source] = src.reshape(-1, src.shape[-1]).astype(np.float32)
            acc = _delivered(edge, as_float[edge.source]).reshape(t_steps, batch, -1)
            if a is None:
                a = acc.astype(dtype, copy=False)
            else:
                a += acc
        if a is None:
            a = np.zeros((t_steps, batch, node.size), dtype=np.float32)
        for source in [src for src, last in last_use.items() if last == i and src in as_float]:
            del as_float[source]
        out[name] = _run_population(node, a)
    return out
