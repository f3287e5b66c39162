"""Populations with reset by subtraction and a starting membrane (converted models) on Lava.

The references are written here, apart from the library: the torch neuron (``lif_sequence``) for the
float precision, and a step-by-step integer implementation of Loihi's LIF with the subtractive reset
for the fixed precision (rules in ../shared/REFERENCES.md; the subtracted integer is the threshold as
Loihi compares it, ``vth << 6``).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import sparse
from torch import nn

from spiking_attn.graph import Current, ExportError, NetworkGraph, export_graph, simulate
from spiking_attn.hardware import lava_compat
from spiking_attn.hardware.fixed_point import FixedNode, _run_population, emulate, lif_fixed_step, quantize
from spiking_attn.hardware.lava import align, build_network, deploy, run_network
from spiking_attn.models import ModelConfig, build_model
from spiking_attn.neuron import lif_sequence


# ---------------------------------------------------------------- independent references
def loihi_subtractive_int(a_in, du, dv, vth, bias_mant, bias_exp, v_start, subtract=True):
    """Loihi's LIF for one neuron with Python integers, from ``u = 0``, ``v = v_start``; after a spike
    ``v - (vth << 6)`` (or 0 with ``subtract=False``). ``a_in`` ``[T]`` ints -> spikes, u, v."""
    u, v = 0, v_start
    spikes, us, vs = [], [], []
    for a in a_in:
        x = u * (4096 - (du + 1))
        u = (abs(x) >> 12) * (1 if x > 0 else -1 if x < 0 else 0) + (int(a) << 6)
        if u > 2 ** 23:
            u -= 2 ** 24
        elif u <= -2 ** 23:
            u += 2 ** 24
        y = v * (4096 - dv)
        v = (abs(y) >> 12) * (1 if y > 0 else -1 if y < 0 else 0) + u + (bias_mant << bias_exp)
        v = max(-(2 ** 23 - 1), min(2 ** 23 - 1, v))
        s = v > (vth << 6)
        if s:
            v = v - (vth << 6) if subtract else 0
        spikes.append(s)
        us.append(u)
        vs.append(v)
    return spikes, us, vs


def independent_fixed(fixed):
    """A quantised graph run neuron by neuron with the integer reference above (torch time)."""
    spikes = {}
    for name, node in fixed.nodes.items():
        if node.role == "input":
            spikes[name] = node.spikes
            continue
        a = np.zeros((fixed.timesteps, fixed.batch, node.size), dtype=np.int64)
        if node.host is not None:
            a += node.host
        for edge in node.edges:
            w = edge.weight.toarray().astype(np.int64)
            acc = np.einsum("ij,tbj->tbi", w, spikes[edge.source].astype(np.int64))
            a += acc << edge.weight_exp if edge.weight_exp >= 0 else acc >> -edge.weight_exp
        out = np.zeros(a.shape, dtype=bool)
        for b in range(fixed.batch):
            for i in range(node.size):
                out[:, b, i] = loihi_subtractive_int(a[:, b, i], node.du, node.dv, node.vth, int(node.bias_mant[i]),
                                                     node.bias_exp, node.v_start, node.reset == "subtract")[0]
        spikes[name] = out
    return spikes


def torch_float(graph: NetworkGraph):
    """Every population of a hand-built graph through the library's torch neuron, float64."""
    spikes = {}
    for name, node in graph.nodes.items():
        cur = np.zeros((graph.timesteps, graph.batch, node.size)) if node.host is None else node.host.copy()
        for edge in node.edges:
            cur += np.einsum("ij,tbj->tbi", edge.weight.toarray(), spikes[edge.source].astype(float))
        p = {k: torch.tensor(getattr(node, k)) for k in ("du", "dv", "vth", "bias")}
        out = lif_sequence(torch.tensor(cur), **p, reset=node.reset, v_init=node.v_init)
        spikes[name] = out.numpy().astype(bool)
    return spikes


def subtractive_network(seed: int, timesteps: int = 6, batch: int = 3) -> NetworkGraph:
    """Host currents -> a -> b -> c with a skip a -> c: integrate-and-fire populations with reset by
    subtraction starting at half their threshold (a, c), one with a leak and per-neuron thresholds
    (b, folded into its weights on Lava), and a plain reset-to-zero population (z) beside them."""
    rng = np.random.default_rng(seed)
    g = NetworkGraph(nn.Module(), timesteps, batch)
    host = torch.tensor(rng.uniform(0, 1.2, (timesteps, batch, 6)))
    g.neurons("a", g.host_current(host), du=1.0, dv=0.0, vth=1.3, bias=rng.uniform(-0.1, 0.2, 6),
              reset="subtract", v_init=0.5)
    g.neurons("b", Current(g, (8,), {"a": sparse.csr_matrix(rng.normal(0.1, 0.6, (8, 6)))}), du=1.0, dv=0.25,
              vth=rng.uniform(0.5, 1.5, 8), bias=0.05, reset="subtract", v_init=0.3)
    g.neurons("z", Current(g, (4,), {"a": sparse.csr_matrix(rng.normal(0.15, 0.5, (4, 6)))}), dv=0.5, vth=0.8)
    terms = {"b": sparse.csr_matrix(rng.normal(0.0, 0.5, (5, 8))),
             "a": sparse.csr_matrix(rng.normal(0.05, 0.4, (5, 6))),
             "z": sparse.csr_matrix(rng.normal(0.0, 0.4, (5, 4)))}
    g.neurons("c", Current(g, (5,), terms, bias=np.full(5, 0.02)), du=0.5, dv=0.0, vth=0.9, reset="subtract",
              v_init=0.5)
    return g


def with_zero_reset(graph: NetworkGraph) -> NetworkGraph:
    """The same graph with every population resetting to zero (what Lava's own LIF would compute)."""
    import copy
    import dataclasses

    other = copy.copy(graph)
    other.nodes = {k: dataclasses.replace(n, reset="zero") for k, n in graph.nodes.items()}
    return other


def run_on_lava(graph, precision, tmp_path):
    procs, sinks, sched, total = build_network(graph, precision, graph.batch, str(tmp_path))
    data, _, _ = run_network(procs, sinks, total, precision, timeout=300)
    return align(data, sched, graph.timesteps, graph.batch), sched


# ---------------------------------------------------------------- the emulator's step
def test_emulator_subtractive_step_matches_the_integer_reference():
    rng = np.random.default_rng(4)
    cases = [(4095, 0, 300, 0, 0, 9600), (4095, 0, 4096, 17, 2, 131072), (100, 3000, 300, -1500, 3, 100),
             (0, 0, 100000, 4095, 7, 0), (4095, 4095, 1, 3, 0, 32)]
    for du, dv, vth, bias_mant, bias_exp, v_start in cases:
        a = rng.integers(-(2 ** 12), 2 ** 14, size=(60, 3))
        a[40:] = rng.integers(-(2 ** 17), 2 ** 17, size=(20, 3))  # large enough to wrap u and clip v
        node = FixedNode("n", (3,), "neuron", "cortex", du, dv, vth, np.full(3, bias_mant), bias_exp, np.ones(3),
                         reset="subtract", v_start=v_start)
        u, v = np.zeros((1, 3), np.int64), np.full((1, 3), v_start, np.int64)
        ours = []
        for t in range(a.shape[0]):
            s, u, v = lif_fixed_step(node, u, v, a[t][None])
            ours.append((s[0].copy(), u[0].copy(), v[0].copy()))
        fired = 0
        for i in range(3):
            spikes, us, vs = loihi_subtractive_int(a[:, i], du, dv, vth, bias_mant, bias_exp, v_start)
            assert [bool(o[0][i]) for o in ours] == spikes
            assert [int(o[1][i]) for o in ours] == us and [int(o[2][i]) for o in ours] == vs
            fired += sum(spikes)
        assert fired > 3
        # the whole-population run (emulate's inner loop) from v_start gives the same spikes
        ran = _run_population(node, a[:, None, :].astype(np.float64))
        assert np.array_equal(ran[:, 0], np.array([o[0] for o in ours]))


def test_a_subtracting_neuron_keeps_its_excess_and_starts_at_v_init():
    # known values: IF neuron, threshold 1 (64 vth_int units = 64 * 100), start at half of it
    node = FixedNode("n", (1,), "neuron", "cortex", 4095, 0, 100, np.zeros(1, np.int64), 0, np.ones(1),
                     reset="subtract", v_start=3200)
    u, v = np.zeros((1, 1), np.int64), np.full((1, 1), 3200, np.int64)
    trace = []
    for a in (70, 70, 0, 10, 1):  # 70 units of input are 4480 of membrane
        s, u, v = lif_fixed_step(node, u, v, np.array([[a]]))
        trace.append((bool(s[0, 0]), int(v[0, 0])))
    # 3200 + 4480 = 7680 > 6400 fires and keeps 1280; 6400 itself does not fire (strict); 6464 does
    assert trace == [(True, 1280), (False, 5760), (False, 5760), (False, 6400), (True, 64)]


# ---------------------------------------------------------------- Lava against the references
def test_subtractive_network_on_lava_matches_torch_and_the_emulator(tmp_path):
    graph = subtractive_network(11)
    assert {n.reset for n in graph.nodes.values()} == {"zero", "subtract"}
    ref = torch_float(graph)
    sim = simulate(graph)
    assert all(np.array_equal(sim[k], ref[k]) for k in ref)
    lava_float, sched = run_on_lava(graph, "float", tmp_path)
    assert sched.relays  # the skip a -> c is delayed through relays
    assert all(np.array_equal(lava_float[k], ref[k]) for k in ref)
    fixed = quantize(graph)
    assert fixed.nodes["a"].v_start == 32 * fixed.nodes["a"].vth and fixed.nodes["z"].v_start == 0
    emulated = emulate(fixed)
    assert all(np.array_equal(emulated[k], v) for k, v in independent_fixed(fixed).items())
    lava_fixed, _ = run_on_lava(fixed, "fixed", tmp_path)
    assert all(np.array_equal(lava_fixed[k], emulated[k]) for k in emulated)
    for spikes in (ref, emulated):  # every population fires, and not at every step
        assert all(0.05 < s.mean() < 0.95 for s in spikes.values())
    # the subtractive reset matters here: resetting to zero gives other spikes
    zeroed = simulate(with_zero_reset(graph))
    assert any(not np.array_equal(zeroed[k], ref[k]) for k in ref)


# ---------------------------------------------------------------- a converted model end to end
@pytest.fixture(scope="module")
def converted():
    from spiking_attn.converters import convert

    torch.manual_seed(0)
    dense = build_model(ModelConfig(in_features=6, num_tokens=5, num_classes=3, dim=16, depth=1, heads=2,
                                    model="dense", dense_attention="sdsa"))
    x_cal = torch.rand(32, 5, 6)
    return convert(dense.eval(), x_cal, "rate", [8]).model, x_cal


@pytest.mark.parametrize("precision", ["float", "fixed"])
def test_a_converted_model_deploys_spike_for_spike(converted, precision):
    model, x_cal = converted
    c = model.config
    assert (c.dv, c.reset, c.v_init) == (0.0, "subtract", 0.5)
    thresholds = {float(m.vth) for n, m in model.named_modules() if n.endswith("lif")}
    assert len(thresholds) > 3  # one threshold per population, from the calibration
    x = torch.rand(3, 5, 6, generator=torch.Generator().manual_seed(5))
    # as deploy_checkpoint calls it: the integer network sized on calibration samples
    result = deploy(model, x, precision=precision, calibration=(x_cal, None))
    assert result.graph_matches_torch
    assert result.spike_agreement() == 1.0
    if precision == "float":
        assert result.prediction_agreement() == 1.0
    rates = [s.mean() for s in result.reference.values()]
    assert np.mean(rates) > 0.05 and min(rates) > 0  # every population fires


def test_export_refuses_what_it_cannot_map():
    g = NetworkGraph(nn.Module(), 2, 1)
    with pytest.raises(ExportError, match=r"n: reset='hard' has no export rule \(exportable: zero, subtract\)"):
        g.neurons("n", g.host_current(torch.zeros(2, 1, 3)), reset="hard")
    with pytest.raises(ExportError, match=r"n: v_init=1.5 has no export rule \(a fraction of the threshold in"):
        g.neurons("n", g.host_current(torch.zeros(2, 1, 3)), v_init=1.5)
    model = build_model(ModelConfig(in_features=6, num_tokens=5, num_classes=3, dim=8, depth=1, heads=2,
                                    reset="subtract", v_init=0.5))
    model.head_lif.reset = "hard"  # a reset no backend implements
    with pytest.raises(ExportError, match=r"head_lif: reset='hard' has no export rule"):
        export_graph(model, torch.rand(2, 5, 6))
    lava_compat.import_lava()
    from spiking_attn.hardware.lava_processes.subtractive_lif import SubtractiveLIF

    with pytest.raises(ValueError, match=r"SubtractiveLIF: reset must be one of \('subtract', 'zero'\), got 'hard'"):
        SubtractiveLIF(shape=(2,), reset="hard")
