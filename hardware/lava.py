"""Deploy a spiking model to Lava (lava-nc 0.10.0) and run it on Lava's CPU simulation of Loihi.

Pipeline: ``export_graph`` (``spiking_attn/graph.py``) walks the model through the export rules and
gives populations and static synapses; for ``fixed`` precision ``fixed_point.quantize`` turns them into
Loihi integers; ``build_network`` makes one Lava process per population and per synapse group, and
``deploy`` runs the samples and reads every population's spikes back.

What becomes what:

* a LIF population -> a Lava ``LIFReset`` process (Loihi's CUBA LIF whose u and v are zeroed every
  ``T`` steps: one sample per window; see below). One threshold per process: a per-neuron threshold is
  folded into that neuron's incoming weights and bias (threshold 1), which with reset to 0 and
  linear sub-threshold dynamics is the same neuron.
* a coincidence (AND, AND-NOT) population -> ``LIFReset`` with ``du = dv = 1`` and its threshold
  between one and two inputs; standard LIF + Dense only, for attention masks, thalamic gates and
  pulvinar routes alike.
* a synapse group -> ``Dense``, or ``Sparse`` when at most a quarter of the weights are non-zero
  (a weight layer applied per token is block-diagonal).
* the encoding layer's currents (analog) -> computed on the host and injected straight into the
  population's synaptic input by a ``RingBuffer`` source, at the step the population needs them;
  an encoded cue (binary) -> a ``RingBuffer`` source of spikes, read through ``Dense`` like any
  population.
* spikes of every population -> a ``RingBuffer`` sink each; the classifier's head is applied on the
  host to the head population's spikes.

Torch time vs Lava time. In torch every layer sees the previous layer's spikes of the same step; in
Lava every synapse group adds one step. A population's *depth* is one more than the deepest
population that drives it (inputs and host-only populations have depth 0); it runs torch step ``t``
at Lava step ``t + depth``. A synapse from a shallower population goes through a chain of relay
populations (one input of weight 1, threshold 1/2, no memory: each copies its input one step later)
so that every input arrives in the same step. Samples follow each other without gaps: sample ``s``
occupies steps ``s T .. s T + T - 1`` of each population (shifted by its depth), and the ``LIFReset``
of a population at depth ``d`` zeroes u and v at the first step of each of its windows, so no state
leaks from one sample to the next. What a population emits before its first window (driven by its
bias alone) reaches only deeper populations before their own first reset.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from spiking_attn.errors import SpikingAttnError
from spiking_attn.graph import NetworkGraph

PRECISIONS = ("float", "fixed")
SPARSE_DENSITY = 0.25  # synapse groups at most this dense become Lava Sparse processes


@dataclass
class Schedule:
    """Depth of every population and the relay chains that align the inputs of each one."""

    depth: Dict[str, int]
    relays: Dict[Tuple[str, int], str] = field(default_factory=dict)  # (source, k) -> relay name, k >= 1

    @property
    def max_depth(self) -> int:
        return max(self.depth.values()) if self.depth else 0

    def relay_chain(self, source: str, delay: int) -> str:
        """The population whose spikes are ``source``'s delayed by ``delay`` steps (``source`` itself for 0)."""
        return source if delay == 0 else self.relays[(source, delay)]


def schedule(nodes) -> Schedule:
    """Depths (the longest synapse path from an input) and the relays shorter paths need.
    ``nodes``: an ordered mapping name -> node with ``edges`` (a topological order)."""
    depth: Dict[str, int] = {}
    sched = Schedule(depth)
    for name, node in nodes.items():
        sources = [e.source for e in node.edges]
        depth[name] = 1 + max(depth[s] for s in sources) if sources else 0
        for s in sources:
            for k in range(1, depth[name] - 1 - depth[s] + 1):
                sched.relays.setdefault((s, k), f"{s}.relay{k}")
    for (source, k), relay in sched.relays.items():
        depth[relay] = depth[source] + k
    return sched


@dataclass
class DeployResult:
    """Spikes of every exported population from Lava and from the reference, aligned to torch time
    (``[T, B, size]`` bool each), the mapping, and timings."""

    precision: str
    lava: Dict[str, np.ndarray]
    reference: Dict[str, np.ndarray]
    lava_logits: np.ndarray
    reference_logits: np.ndarray
    schedule: Schedule
    lava_steps: int
    lava_seconds: float
    compile_seconds: float
    groups: Dict[str, str]

    def spike_agreement(self) -> float:
        """Fraction of identical spike bits over all populations and steps."""
        same = sum(int((self.lava[k] == self.reference[k]).sum()) for k in self.reference)
        total = sum(self.reference[k].size for k in self.reference)
        return same / total if total else 1.0

    def prediction_agreement(self, other_logits: Optional[np.ndarray] = None) -> float:
        ref = self.reference_logits if other_logits is None else other_logits
        return float((self.lava_logits.argmax(1) == ref.argmax(1)).mean())


def _fold_threshold(vth: np.ndarray):
    """(process threshold, per-neuron factor to multiply inputs and bias by)."""
    if np.all(vth == vth[0]):
        return float(vth[0]), np.ones_like(vth)
    return 1.0, 1.0 / vth


def build_network(graph, precision: str, samples: int):
    """Lava processes for ``graph`` (a ``NetworkGraph`` for float, a ``FixedGraph`` for fixed).

    Returns ``(processes, sinks, schedule, total_steps)``; ``processes`` maps a population name to its
    Lava process.
    """
    from . import lava_compat

    lava_compat.import_lava()
    from lava.proc.dense.process import Dense
    from lava.proc.io.sink import RingBuffer as Sink
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import Sparse

    fixed = precision == "fixed"
    nodes = graph.nodes
    sched = schedule(nodes)
    t_steps = graph.timesteps
    total = samples * t_steps + sched.max_depth
    procs, sinks = {}, {}

    def window_data(values: np.ndarray, depth: int) -> np.ndarray:
        """``values`` ``[T, B, size]`` -> ``[size, total]`` placed at each sample's steps."""
        size = values.shape[-1]
        data = np.zeros((size, total), dtype=np.int32 if fixed else np.float64)
        flat = values[:, :samples].transpose(1, 0, 2).reshape(samples * t_steps, size)  # [S*T, size]
        data[:, depth:depth + samples * t_steps] = flat.T
        return data

    def lif(name: str, size: int, depth: int, **params):
        return LIFReset(shape=(size,), reset_interval=t_steps, reset_offset=(depth + 1) % t_steps, name=name,
                        **params)

    def connect(source_proc, target_proc, weights, **kw):
        density = weights.nnz / max(1, weights.shape[0] * weights.shape[1])
        conn = Sparse(weights=weights, **kw) if density <= SPARSE_DENSITY else Dense(weights=weights.toarray(), **kw)
        source_proc.s_out.connect(conn.s_in)
        conn.a_out.connect(target_proc.a_in)
        return conn

    for name, node in nodes.items():
        d = sched.depth[name]
        if node.role == "input":
            procs[name] = Source(data=window_data(node.spikes.astype(np.float64), d).astype(
                np.int32 if fixed else np.float64))
            continue
        if fixed:
            procs[name] = lif(name, node.size, d, du=node.du, dv=node.dv, vth=node.vth,
                              bias_mant=node.bias_mant.astype(np.int32),
                              bias_exp=np.full(node.size, node.bias_exp, dtype=np.int32))
        else:
            vth, factor = _fold_threshold(node.vth)
            du, dv = np.unique(node.du), np.unique(node.dv)
            if du.size != 1 or dv.size != 1:
                raise SpikingAttnError(f"{name}: Lava's LIF has one du and one dv per population; this one has "
                                       f"{du.size} and {dv.size} different values")
            procs[name] = lif(name, node.size, d, du=float(du[0]), dv=float(dv[0]), vth=vth,
                              bias_mant=node.bias * factor)
        if node.host is not None:
            host = node.host if fixed else node.host * (1.0 if np.all(node.vth == node.vth[0]) else 1.0 / node.vth)
            src = Source(data=window_data(host, d))
            src.s_out.connect(procs[name].a_in)
            procs[f"{name}.host"] = src
    # relays: one input of weight 1 (2 in fixed point), threshold 1/2 (1 in fixed point: 64 < 128)
    for (source, k), relay in sched.relays.items():
        size = nodes[source].size
        if fixed:
            procs[relay] = lif(relay, size, sched.depth[relay], du=4095, dv=4095, vth=1)
        else:
            procs[relay] = lif(relay, size, sched.depth[relay], du=1.0, dv=1.0, vth=0.5)
    from scipy import sparse

    for (source, k), relay in sched.relays.items():
        previous = sched.relay_chain(source, k - 1)
        eye = sparse.identity(nodes[source].size, format="csr") * (2 if fixed else 1.0)
        connect(procs[previous], procs[relay], eye.astype(np.int32) if fixed else eye,
                **({"weight_exp": 0, "num_weight_bits": 8} if fixed else {}))
    for name, node in nodes.items():
        if node.role == "input":
            continue
        d = sched.depth[name]
        factor = 1.0 if fixed else _fold_threshold(node.vth)[1]
        for edge in node.edges:
            delay = d - 1 - sched.depth[edge.source]
            source = procs[sched.relay_chain(edge.source, delay)]
            if fixed:
                connect(source, procs[name], edge.weight.astype(np.int32), weight_exp=edge.weight_exp,
                        num_weight_bits=8)
            else:
                connect(source, procs[name], edge.weight.multiply(factor[:, None]).tocsr())
        sinks[name] = Sink(shape=(node.size,), buffer=total)
        procs[name].s_out.connect(sinks[name].a_in)
    return procs, sinks, sched, total


def run_network(procs, sinks, total: int, precision: str, timeout: float = 600.0):
    """Run ``total`` steps; returns ``{name: [size, total] spikes}``. The runtime is always stopped."""
    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    tag = "fixed_pt" if precision == "fixed" else "floating_pt"
    anchor = next(iter(sinks.values()))
    started = time.perf_counter()
    try:
        anchor.run(condition=RunSteps(num_steps=total), run_cfg=Loihi2SimCfg(select_tag=tag))
        data = {name: sink.data.get() for name, sink in sinks.items()}
    finally:
        try:
            anchor.stop()
        except Exception:  # a runtime that never started has nothing to stop
            pass
    return data, time.perf_counter() - started


def align(data: Dict[str, np.ndarray], sched: Schedule, timesteps: int, samples: int) -> Dict[str, np.ndarray]:
    """Lava's ``[size, total]`` recordings as torch-time spikes ``[T, S, size]``."""
    out = {}
    for name, values in data.items():
        d = sched.depth[name]
        window = np.asarray(values)[:, d:d + samples * timesteps] != 0  # [size, S*T]
        out[name] = window.T.reshape(samples, timesteps, -1).transpose(1, 0, 2)
    return out
