"""Deploy a spiking model to Lava (lava-nc 0.10.0) and run it on Lava's CPU simulation of Loihi.

Pipeline: ``export_graph`` (``spiking_attn/graph.py``) walks the model through the export rules and
gives populations and static synapses; for ``fixed`` precision ``fixed_point.quantize`` turns them into
Loihi integers; ``build_network`` makes one Lava process per population and per synapse group, and
``deploy`` runs the samples and reads every population's spikes back.

What becomes what:

* a LIF population -> a Lava ``LIFReset`` process (Loihi's CUBA LIF whose u and v are zeroed every
  ``T`` steps: one sample per window; see below). One threshold per process: a per-neuron threshold is
  folded into that neuron's incoming weights and bias (threshold 1), which with linear sub-threshold
  dynamics is the same neuron (the initial membrane ``v_init * vth`` becomes ``v_init``, and a
  subtracted threshold 1).
* a population with reset by subtraction or a starting membrane ``v_init * vth`` (converted models)
  -> ``SubtractiveLIF`` (``lava_processes/subtractive_lif.py``): Lava's ``LIFReset`` models with the
  reset and the window's starting membrane overridden, in both precisions; every window (sample)
  starts from ``u = 0``, ``v = v_init * vth`` as the torch model does.
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

import os
import time
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

import numpy as np

from spiking_attn.errors import SpikingAttnError

PRECISIONS = ("float", "fixed")
CALIBRATION_SAMPLES = 256  # training samples whose currents size the fixed-point thresholds (deploy_checkpoint)
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


def _fold_threshold(vth: np.ndarray):
    """(process threshold, per-neuron factor to multiply inputs and bias by)."""
    if np.all(vth == vth[0]):
        return float(vth[0]), np.ones_like(vth)
    return 1.0, 1.0 / vth


def hardware_edges(nodes, sched: Schedule, fixed: bool) -> Dict[str, list]:
    """Every population's incoming synapse groups as built on hardware, relays included:
    ``{name: [(source, weights CSR, weight_exp or None)]}``; sources are relays where a path is delayed."""
    from scipy import sparse

    edges: Dict[str, list] = {}
    for (source, k), relay in sched.relays.items():
        eye = sparse.identity(nodes[source].size, format="csr", dtype=np.int64 if fixed else np.float64)
        edges[relay] = [(sched.relay_chain(source, k - 1), eye * (2 if fixed else 1), 0 if fixed else None)]
    for name, node in nodes.items():
        if node.role == "input":
            continue
        d = sched.depth[name]
        factor = None if fixed else _fold_threshold(node.vth)[1][:, None]
        edges[name] = []
        for edge in node.edges:
            src = sched.relay_chain(edge.source, d - 1 - sched.depth[edge.source])
            if fixed:
                edges[name].append((src, edge.weight, edge.weight_exp))
            else:
                edges[name].append((src, edge.weight.multiply(factor).tocsr(), None))
    return edges


def build_network(graph, precision: str, samples: int, record_dir: str, sched: Optional[Schedule] = None,
                  edges: Optional[Dict[str, list]] = None):
    """Lava processes for ``graph`` (a ``NetworkGraph`` for float, a ``FixedGraph`` for fixed).

    Every population's spikes are recorded by a ``MemmapSink`` into a file in ``record_dir``.
    ``sched`` and ``edges`` (``schedule``, ``hardware_edges``) are computed unless a caller already has them.
    Returns ``(processes, sinks, schedule, total_steps)``; ``processes`` maps a population name to its
    Lava process, ``sinks`` a population name to ``(sink process, memmap)``.
    """
    from . import lava_compat

    lava_compat.import_lava()
    from lava.proc.dense.process import Dense
    from .lava_processes.memmap_sink import MemmapSink
    from .lava_processes.subtractive_lif import SubtractiveLIF
    from lava.proc.io.source import RingBuffer as Source
    from lava.proc.lif.process import LIFReset
    from lava.proc.sparse.process import Sparse

    fixed = precision == "fixed"
    nodes = graph.nodes
    sched = schedule(nodes) if sched is None else sched
    edges = hardware_edges(nodes, sched, fixed) if edges is None else edges
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

    def lif(name: str, size: int, depth: int, reset: str = "zero", v_start=0, **params):
        """Lava's LIFReset, or SubtractiveLIF where the reset or the starting membrane differ from it."""
        window = dict(shape=(size,), reset_interval=t_steps, reset_offset=(depth + 1) % t_steps, name=name)
        if reset == "zero" and not np.any(v_start):
            return LIFReset(**window, **params)
        return SubtractiveLIF(**window, reset=reset, v_start=v_start, **params)

    def connect(source_proc, target_proc, weights, **kw):
        density = weights.nnz / max(1, weights.shape[0] * weights.shape[1])
        conn = Sparse(weights=weights, **kw) if density <= SPARSE_DENSITY else Dense(weights=weights.toarray(), **kw)
        source_proc.s_out.connect(conn.s_in)
        conn.a_out.connect(target_proc.a_in)
        return conn

    for name, node in nodes.items():
        d = sched.depth[name]
        if node.role == "input":
            procs[name] = Source(data=window_data(node.spikes, d))
            continue
        if fixed:
            factor = 1
            procs[name] = lif(name, node.size, d, node.reset, np.full(node.size, node.v_start, dtype=np.int32),
                              du=node.du, dv=node.dv, vth=node.vth, bias_mant=node.bias_mant.astype(np.int32),
                              bias_exp=np.full(node.size, node.bias_exp, dtype=np.int32))
        else:
            vth, factor = _fold_threshold(node.vth)
            du, dv = node.decays()
            procs[name] = lif(name, node.size, d, node.reset, np.full(node.size, node.v_init * vth),
                              du=du, dv=dv, vth=vth, bias_mant=node.bias * factor)
        if node.host is not None:
            src = Source(data=window_data(node.host * factor, d))
            src.s_out.connect(procs[name].a_in)
            procs[f"{name}.host"] = src
    # relays: one input of weight 1 (2 in fixed point), threshold 1/2 (1 in fixed point: 64 < 128), no memory
    for (source, k), relay in sched.relays.items():
        size = nodes[source].size
        if fixed:
            procs[relay] = lif(relay, size, sched.depth[relay], du=4095, dv=4095, vth=1)
        else:
            procs[relay] = lif(relay, size, sched.depth[relay], du=1.0, dv=1.0, vth=0.5)
    for name, incoming in edges.items():
        for src, weights, exp in incoming:
            kw = {"weight_exp": exp, "num_weight_bits": 8} if fixed else {}
            connect(procs[src], procs[name], weights.astype(np.int32) if fixed else weights, **kw)
        if name in nodes:
            path = os.path.join(record_dir, f"{len(sinks)}.spikes")
            values = MemmapSink.create(path, (nodes[name].size,), total)
            sink = MemmapSink(shape=(nodes[name].size,), buffer=total, path=path)
            procs[name].s_out.connect(sink.a_in)
            sinks[name] = (sink, values)
    return procs, sinks, sched, total


class LavaTimeout(SpikingAttnError):
    """A Lava run took longer than its timeout (it was stopped)."""


def run_network(procs, sinks, total: int, precision: str, timeout: float = 600.0):
    """Run ``total`` steps: one step first (Lava compiles and starts its processes), then the rest,
    timed. Returns ``(recordings {name: [size, total]}, seconds of the timed part, seconds of the
    first)``. The runtime is always stopped, on an error, a timeout or Ctrl-C too (``stop_runtime``)."""
    import signal
    import threading

    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    tag = "fixed_pt" if precision == "fixed" else "floating_pt"
    anchor = next(iter(sinks.values()))[0]
    use_alarm = threading.current_thread() is threading.main_thread() and timeout > 0

    running, timed_out = [True], []
    message = f"the Lava run took longer than its timeout of {timeout:g} s and was stopped"

    def on_alarm(signum, frame):
        if not running[0]:  # already stopping: the runtime is being shut down
            return
        timed_out.append(signum)
        # Raised again shortly, in case this one lands where Python ignores exceptions (a fork hook that
        # Lava's process start runs, say) and is swallowed.
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        raise LavaTimeout(message)

    def check_timeout() -> None:
        if timed_out:
            raise LavaTimeout(message)

    interrupted = []

    def on_interrupt(signum, frame):  # remembered, in case Lava's own code catches the KeyboardInterrupt
        interrupted.append(signum)
        raise KeyboardInterrupt

    def check_interrupt() -> None:
        if interrupted:
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGALRM, on_alarm) if use_alarm else None
    previous_int = signal.getsignal(signal.SIGINT) if use_alarm else None
    if use_alarm and previous_int is signal.default_int_handler:  # not where SIGINT is ignored on purpose
        signal.signal(signal.SIGINT, on_interrupt)
    if use_alarm:
        signal.setitimer(signal.ITIMER_REAL, timeout)
    started = time.perf_counter()
    try:
        anchor.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag=tag))
        check_interrupt()
        check_timeout()
        first = time.perf_counter() - started
        started = time.perf_counter()
        if total > 1:
            anchor.run(condition=RunSteps(num_steps=total - 1), run_cfg=Loihi2SimCfg(select_tag=tag))
            check_interrupt()
            check_timeout()
        seconds = time.perf_counter() - started
    finally:
        running[0] = False
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
        try:
            stop_runtime(anchor)
        finally:
            if use_alarm:
                signal.signal(signal.SIGALRM, previous)
                if previous_int is signal.default_int_handler:
                    signal.signal(signal.SIGINT, previous_int)
    data = {name: np.array(values).T for name, (sink, values) in sinks.items()}  # [size, total]
    return data, seconds, first


def stop_runtime(process, timeout: float = 20.0) -> bool:
    """Stop the Lava runtime ``process`` belongs to. Lava's ``stop()`` waits forever once one of its
    process models has raised, so it runs in a thread; if it has not returned after ``timeout``
    seconds, the runtime's own OS processes are killed and its shared memory released.
    Returns True if the normal stop worked."""
    import multiprocessing
    import threading

    runtime = getattr(process, "runtime", None)
    if runtime is None:
        return True
    worker = threading.Thread(target=process.stop, daemon=True)
    worker.start()
    worker.join(timeout)
    if not worker.is_alive():
        return True
    infrastructure = getattr(runtime, "_messaging_infrastructure", None)
    for actor in getattr(infrastructure, "actors", []):
        try:
            if actor.is_alive():
                actor.kill()
                multiprocessing.Process.join(actor, 5)  # Lava's own join() takes no timeout
        except (ValueError, OSError):  # already closed
            pass
    try:
        infrastructure.smm.shutdown()
    except Exception:  # nothing left to release
        pass
    return False


def align(data: Dict[str, np.ndarray], sched: Schedule, timesteps: int, samples: int) -> Dict[str, np.ndarray]:
    """Lava's ``[size, total]`` recordings as torch-time spikes ``[T, S, size]``."""
    out = {}
    for name, values in data.items():
        d = sched.depth[name]
        window = np.asarray(values)[:, d:d + samples * timesteps] != 0  # [size, S*T]
        out[name] = window.T.reshape(samples, timesteps, -1).transpose(1, 0, 2)
    return out


def _check_inputs(model, inputs, cue):
    import torch

    from spiking_attn.errors import DTypeError, check_tensor
    from spiking_attn.models import SpikingClassifier

    from spiking_attn.converters.torch_models import SpikingSequential

    if isinstance(model, SpikingSequential):  # a converted torch model: samples of its input shape, no cue
        check_tensor(inputs, "inputs", ndim=len(model.input_shape) + 1)
        if tuple(inputs.shape[1:]) != model.input_shape:
            raise SpikingAttnError(f"inputs must be [S, {', '.join(map(str, model.input_shape))}], got "
                                   f"{tuple(inputs.shape)}")
        if cue is not None:
            raise SpikingAttnError("a converted torch model takes no cue")
        if inputs.shape[0] < 1:
            raise SpikingAttnError("inputs must hold at least one sample")
        return
    if not isinstance(model, SpikingClassifier):
        kind = getattr(getattr(model, "config", None), "model", None)
        if kind == "dense":
            raise SpikingAttnError("deploy takes a spiking model; this is a dense twin (convert it first, or train "
                                   "with --model spiking)")
        raise DTypeError(f"deploy takes a spiking classifier of this library or a converted torch model, got "
                         f"{type(model).__name__}")
    check_tensor(inputs, "inputs", ndim=3)
    if inputs.shape[0] < 1:
        raise SpikingAttnError("inputs must hold at least one sample")
    if cue is not None and not isinstance(cue, torch.Tensor):
        raise DTypeError(f"cue must be a torch.Tensor or None, got {type(cue).__name__}")


def deploy(model, inputs, cue=None, *, precision: str = "float", profile="loihi2", labels=None,
           timeout: float = 600.0, calibration=None, weight_bits: int = 16) -> "Deployment":
    """Export ``model``, run ``inputs`` ``[S, N, F]`` (and ``cue``) through Lava, and compare.

    Args:
        model: a spiking classifier of this library (``SpikingClassifier``).
        inputs: the samples; ``cue``: their cues (index ``[S]`` or vector), if the model takes one.
        precision: 'float' (Lava's floating_pt models; the reference is the float64 torch model) or
            'fixed' (Loihi integers; the reference is this library's bit-accurate emulator).
        profile: core profile name ('loihi2', 'loihi1'), JSON file or ``CoreProfile``.
        labels: optional ``[S]`` labels, for the accuracies.
        timeout: seconds the Lava run may take before it is stopped.
        calibration: ``(inputs, cue)`` whose currents size the fixed-point thresholds (default: the
            samples being deployed). Give the same calibration to get the same integer network for
            any samples.
        weight_bits: fixed point only: 8 (one 8-bit synapse group per connection) or 16 (two groups,
            the second carrying the first's rounding error; see ``fixed_point``).

    Returns a ``Deployment`` with per-population spikes from Lava and from the reference (aligned to
    torch time), the logits of both, the core mapping and the spike traffic between cores.
    """
    from spiking_attn.errors import check_choice, check_number
    from spiking_attn.graph import export_graph, simulate, torch_population_spikes

    from . import cores as core_map
    from .fixed_point import check_weight_bits, emulate, peak_currents, quantize

    check_choice(precision, "precision", PRECISIONS)
    check_number(timeout, "timeout", low=0.0)
    check_weight_bits(weight_bits)
    _check_inputs(model, inputs, cue)
    profile = core_map.load_profile(profile)
    samples = int(inputs.shape[0])
    graph = export_graph(model, inputs, cue)
    float_spikes = simulate(graph)
    torch_spikes, torch_logits = torch_population_spikes(model, inputs, cue)
    if calibration is None:
        peaks = peak_currents(graph, float_spikes)
    else:
        cal_x, cal_cue = calibration
        _check_inputs(model, cal_x, cal_cue)
        peaks = peak_currents(export_graph(model, cal_x, cal_cue))
    fixed = quantize(graph, peaks, weight_bits)
    started = time.perf_counter()
    emulated = emulate(fixed)
    emulator_seconds = time.perf_counter() - started
    target = fixed if precision == "fixed" else graph
    if precision == "fixed":
        reference = emulated
    else:  # the model's own populations from torch; coincidence populations from the float graph
        reference = {name: torch_spikes.get(name, float_spikes[name]) for name in graph.nodes
                     if graph.nodes[name].role != "input"}
    sched = schedule(target.nodes)
    edges = hardware_edges(target.nodes, sched, precision == "fixed")

    def edges_of(name):
        return [(s, w) for s, w, _ in edges.get(name, [])]

    placed = {name: (node.size, node.group) for name, node in target.nodes.items() if node.role != "input"}
    placed.update({relay: (target.nodes[src].size, target.nodes[src].group) for (src, k), relay in sched.relays.items()})
    ordered = dict(sorted(placed.items(), key=lambda item: sched.depth[item[0]]))
    sizes = {name: node.size for name, node in target.nodes.items()}
    sizes.update({name: size for name, (size, _) in placed.items()})
    mapping = core_map.map_cores(ordered, edges_of, sizes, profile)
    import tempfile

    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    with tempfile.TemporaryDirectory(prefix="spiking-attn-lava-", dir=shm) as record_dir:
        procs, sinks, sched, total = build_network(target, precision, samples, record_dir, sched, edges)
        data, seconds, first = run_network(procs, sinks, total, precision, timeout)
    lava = align(data, sched, graph.timesteps, samples)
    counts = {name: spikes.sum(axis=(0, 1)) for name, spikes in lava.items()}
    for (source, k), relay in sched.relays.items():
        counts[relay] = counts.get(source, np.zeros(sizes[source]))  # a relay copies its source's spikes
    traffic = core_map.spike_traffic(mapping, edges_of, counts)
    readout = graph.readout
    lava_logits = readout.logits(lava[readout.source])
    return Deployment(
        precision=precision, samples=samples, weight_bits=weight_bits, lava=lava, reference={k: reference[k] for k in lava},
        lava_logits=lava_logits, torch_logits=torch_logits, emulator_logits=readout.logits(emulated[readout.source]),
        labels=None if labels is None else np.asarray(labels), schedule=sched, mapping=mapping, traffic=traffic,
        lava_steps=max(0, total - 1), lava_seconds=seconds, first_step_seconds=first,
        emulator_steps=samples * graph.timesteps, emulator_seconds=emulator_seconds,
        groups={name: node.group for name, node in target.nodes.items()},
        graph_matches_torch=all(np.array_equal(float_spikes[k], v) for k, v in torch_spikes.items()
                                if k in float_spikes))


@dataclass
class Deployment:
    """What ``deploy`` returns. Spikes are ``[T, S, size]`` bool per population, aligned to torch time."""

    precision: str
    samples: int
    weight_bits: int
    lava: Dict[str, np.ndarray]
    reference: Dict[str, np.ndarray]
    lava_logits: np.ndarray
    torch_logits: np.ndarray
    emulator_logits: np.ndarray
    labels: Optional[np.ndarray]
    schedule: Schedule
    mapping: object
    traffic: np.ndarray
    lava_steps: int
    lava_seconds: float
    first_step_seconds: float
    emulator_steps: int
    emulator_seconds: float
    groups: Dict[str, str]
    graph_matches_torch: bool

    def spike_agreement(self) -> float:
        """Fraction of identical spike bits over every exported population and step."""
        same = sum(int((self.lava[k] == self.reference[k]).sum()) for k in self.reference)
        total = sum(v.size for v in self.reference.values())
        return same / total if total else 1.0

    def prediction_agreement(self) -> float:
        """Lava's predictions against the float torch model's."""
        return float((self.lava_logits.argmax(1) == self.torch_logits.argmax(1)).mean())

    @property
    def steps_per_second(self) -> float:
        return self.lava_steps / self.lava_seconds if self.lava_seconds > 0 else float("inf")

    @property
    def emulator_speedup(self) -> float:
        emulator_rate = self.emulator_steps / max(self.emulator_seconds, 1e-9)
        return emulator_rate / self.steps_per_second

    def accuracy(self, logits: np.ndarray) -> Optional[float]:
        return None if self.labels is None else float((logits.argmax(1) == self.labels).mean())

    def report(self) -> dict:
        """The ``deploy.json`` record."""
        m = self.mapping
        return {
            "precision": self.precision, "samples": self.samples,
            "weight_bits": self.weight_bits if self.precision == "fixed" else None,
            "spike_agreement": self.spike_agreement(), "prediction_agreement": self.prediction_agreement(),
            "lava_accuracy": self.accuracy(self.lava_logits), "torch_accuracy": self.accuracy(self.torch_logits),
            "emulator_accuracy": self.accuracy(self.emulator_logits),
            "reference": "emulator (bit-accurate fixed point)" if self.precision == "fixed" else "torch model, float64",
            "graph_matches_torch": self.graph_matches_torch,
            "cores": len(m.cores), "profile": m.profile.name,
            "mapping": [c.to_dict() for c in m.cores],
            "groups": sorted(set(self.groups.values())),
            "inter_core_spikes": int(self.traffic.sum()),
            "populations": {k: {"neurons": int(v.shape[-1]), "depth": self.schedule.depth[k],
                                "firing_rate": float(v.mean()),
                                "agreement": float((v == self.reference[k]).mean())} for k, v in self.lava.items()},
            "relays": len(self.schedule.relays), "lava_steps": self.lava_steps,
            "steps_per_second": self.steps_per_second, "first_step_seconds": self.first_step_seconds,
            "emulator_steps_per_second": self.emulator_steps / max(self.emulator_seconds, 1e-9),
            "emulator_speedup": self.emulator_speedup,
        }


def deploy_checkpoint(path, *, precision: str = "float", samples: int = 8, profile="loihi2", timeout: float = 900.0,
                      out=None, weight_bits: int = 16, timesteps: Optional[int] = None) -> dict:
    """``spiking-attn deploy``: the first ``samples`` test samples of the checkpoint's task through Lava.
    With ``out``, writes ``deploy_raster.png``, ``deploy_cores.png`` and, last, ``deploy.json``.
    ``timesteps`` runs the model for another T than it was saved with (a converted model's T is a run-time
    setting). Returns the ``deploy.json`` record."""
    from pathlib import Path

    from spiking_attn.checkpoint import load_model, spiking_checkpoint
    from spiking_attn.data import checkpoint_test_samples
    from spiking_attn.errors import check_choice, check_int
    from spiking_attn.outputs import write_json

    check_choice(precision, "precision", PRECISIONS)
    check_int(samples, "samples", low=1)
    if timesteps is not None:
        check_int(timesteps, "timesteps", low=1, high=100000)
    payload, config = spiking_checkpoint(path, "deploy runs spiking models")
    task, data, rows = checkpoint_test_samples(payload, path, samples,
                                               "spiking_attn.hardware.lava.deploy(model, inputs)")
    model = load_model(path) if timesteps is None else load_model(path, timesteps=timesteps)
    cal = slice(0, min(CALIBRATION_SAMPLES, len(data.x_train)))  # the same integer network for any samples
    result = deploy(model, data.x_test[rows], data.context("test", rows).get("cue"), precision=precision,
                    profile=profile, labels=data.y_test[rows].numpy(), timeout=timeout, weight_bits=weight_bits,
                    calibration=(data.x_train[cal], data.context("train", cal).get("cue")))
    report = {"checkpoint": str(path), "task": task, "mechanism": config.mechanism, **result.report()}
    if out is not None:
        from .plots import plot_core_map, plot_raster

        out = Path(out)
        plot_raster(result, out / "deploy_raster.png")
        plot_core_map(result, out / "deploy_cores.png")
        write_json(out / "deploy.json", report)
    return report
