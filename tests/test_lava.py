"""The Lava backend: network graphs, Loihi fixed point, core mapping, and runs on Lava's CPU simulation.

The references here are written independently of the library: a numpy LIF in torch time (float) and a
step-by-step integer implementation of Loihi's LIF and Dense (fixed), both from the rules in
../shared/REFERENCES.md.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from scipy import sparse
from torch import nn

from spiking_attn.graph import Current, ExportError, NetworkGraph, export_graph, simulate, torch_population_spikes
from spiking_attn.hardware import lava_compat
from spiking_attn.hardware.cores import CoreProfile, load_profile, map_cores
from spiking_attn.hardware.fixed_point import emulate, lif_fixed_step, quantize
from spiking_attn.hardware.lava import align, build_network, deploy, run_network
from spiking_attn.models import ModelConfig, build_model

from conftest import small_firing_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child_pids() -> set:
    """Live (non-zombie) child processes of this process, read from /proc. Python's multiprocessing
    resource tracker is left out: one per interpreter, started with the first shared memory, it ends
    with the interpreter."""
    me, children = os.getpid(), set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == me and fields[0] != "Z":
                with open(f"/proc/{entry}/cmdline") as f:
                    if "resource_tracker" not in f.read():
                        children.add(int(entry))
    return children


# ---------------------------------------------------------------- independent references
def numpy_lif_float(currents, du, dv, vth, bias):
    """Torch-time float LIF: ``currents`` ``[T, B, n]`` -> spikes (bool)."""
    u = np.zeros(currents.shape[1:])
    v = np.zeros(currents.shape[1:])
    out = np.zeros(currents.shape, dtype=bool)
    for t in range(currents.shape[0]):
        u = u * (1 - du) + currents[t]
        v = v * (1 - dv) + u + bias
        out[t] = v > vth
        v[out[t]] = 0.0
    return out


def loihi_lif_int(a_in, du, dv, vth, bias_mant, bias_exp):
    """Loihi's LIF one neuron at a time with Python integers: ``a_in`` ``[T]`` ints -> spikes, u, v."""
    u = v = 0
    spikes, us, vs = [], [], []
    for a in a_in:
        x = u * (4096 - (du + 1))
        u = (abs(x) >> 12) * (1 if x > 0 else -1 if x < 0 else 0) + (int(a) << 6)
        if u > 2 ** 23:
            u -= 2 ** 24
        elif u <= -2 ** 23:
            u += 2 ** 24
        y = v * (4096 - dv)
        bias = bias_mant << bias_exp if bias_exp >= 0 else bias_mant >> -bias_exp
        v = (abs(y) >> 12) * (1 if y > 0 else -1 if y < 0 else 0) + u + bias
        v = max(-(2 ** 23 - 1), min(2 ** 23 - 1, v))
        s = v > (vth << 6)
        if s:
            v = 0
        spikes.append(s)
        us.append(u)
        vs.append(v)
    return spikes, us, vs


def loihi_dense_int(weights, exp, spikes):
    """Loihi's Dense for binary spikes, one output at a time: sum of the weights that spiked, shifted."""
    out = []
    for row in weights:
        acc = int(sum(int(w) for w, s in zip(row, spikes) if s))
        out.append(acc << exp if exp > 0 else acc >> -exp)
    return out


def independent_fixed(fixed):
    """Run a quantised graph with the per-neuron integer references above (torch time)."""
    spikes = {}
    t_steps, batch = fixed.timesteps, fixed.batch
    for name, node in fixed.nodes.items():
        if node.role == "input":
            spikes[name] = node.spikes
            continue
        a = np.zeros((t_steps, batch, node.size), dtype=np.int64)
        if node.host is not None:
            a += node.host
        for edge in node.edges:
            dense = edge.weight.toarray()
            for t in range(t_steps):
                for b in range(batch):
                    a[t, b] += loihi_dense_int(dense, edge.weight_exp, spikes[edge.source][t, b])
        out = np.zeros((t_steps, batch, node.size), dtype=bool)
        for b in range(batch):
            for i in range(node.size):
                s, _, _ = loihi_lif_int(a[:, b, i], node.du, node.dv, node.vth, int(node.bias_mant[i]), node.bias_exp)
                out[:, b, i] = s
        spikes[name] = out
    return spikes


def random_network(seed: int, residual: bool, timesteps: int = 5, batch: int = 3) -> NetworkGraph:
    """A hand-built graph: host currents -> a -> b -> c, with a skip a -> c when ``residual``."""
    rng = np.random.default_rng(seed)
    g = NetworkGraph(nn.Module(), timesteps, batch)
    host = torch.tensor(rng.uniform(0, 2.5, (timesteps, batch, 6)))
    a = g.neurons("a", g.host_current(host), dv=0.5, vth=1.0, bias=rng.uniform(-0.1, 0.2, 6))
    w_ab = sparse.csr_matrix(rng.normal(0.3, 0.6, (8, 6)))
    b = g.neurons("b", Current(g, (8,), {"a": w_ab}), dv=0.25, vth=rng.uniform(0.5, 1.5, 8), bias=0.05)
    w_bc = sparse.csr_matrix(rng.normal(0.2, 0.7, (5, 8)))
    terms = {"b": w_bc}
    if residual:
        terms["a"] = sparse.csr_matrix(rng.normal(0.3, 0.5, (5, 6)))
    g.neurons("c", Current(g, (5,), terms, bias=np.full(5, 0.1)), dv=0.5, vth=0.8)
    return g


def independent_float(graph: NetworkGraph):
    spikes = {}
    for name, node in graph.nodes.items():
        cur = np.zeros((graph.timesteps, graph.batch, node.size)) if node.host is None else node.host.copy()
        for edge in node.edges:
            cur += np.einsum("ij,tbj->tbi", edge.weight.toarray(), spikes[edge.source].astype(float))
        spikes[name] = numpy_lif_float(cur, node.du, node.dv, node.vth, node.bias)
    return spikes


def run_on_lava(graph, precision, tmp_path):
    procs, sinks, sched, total = build_network(graph, precision, graph.batch, str(tmp_path))
    data, _, _ = run_network(procs, sinks, total, precision, timeout=300)
    return align(data, sched, graph.timesteps, graph.batch), sched


small_model = small_firing_model  # trained-like statistics, so that every population fires


# ---------------------------------------------------------------- the 3.11 shim
def test_shim_is_still_needed():
    # When this fails, lava imports on this Python without help: delete hardware/lava_compat.py's shim.
    assert lava_compat.shim_needed(), "lava-nc now imports without the shim; remove the shim"


def test_shim_touches_lava_classes_only():
    import dataclasses

    lava_compat.import_lava()

    class Unhashable:
        __hash__ = None

    with pytest.raises(ValueError, match="mutable default"):
        @dataclasses.dataclass
        class Outside:  # defined here, not in lava: Python 3.11's rule still applies
            x: object = Unhashable()


def test_missing_lava_gives_install_instructions():
    code = ("import sys; sys.modules['lava'] = None\n"
            "from spiking_attn.hardware import lava_compat\n"
            "try:\n    lava_compat.import_lava()\nexcept Exception as e:\n    print(type(e).__name__, e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert "SpikingAttnError" in out and "pip install" in out and "lava-nc==0.10.0" in out


# ---------------------------------------------------------------- export graph == torch model
@pytest.mark.parametrize("mechanism, extra, cue", [
    ("none", {}, False),
    ("none", {"causal": True}, False),
    ("none", {"num_cues": 3}, True),  # the plain model's cue token
    ("thalamic", {"num_cues": 4}, True),
    ("thalamic", {"num_cues": 4}, False),
    ("pulvinar", {}, False),
    ("pulvinar", {"per_channel": True, "learn_threshold": True}, False),
])
def test_graph_reproduces_the_torch_model(mechanism, extra, cue):
    model = small_model(mechanism, **extra)
    x = torch.rand(6, 4, 8)
    c = torch.randint(0, extra["num_cues"], (6,)) if cue else None
    graph = export_graph(model, x, c)
    ours = simulate(graph)
    ref, logits = torch_population_spikes(model, x, c)
    assert ref and all(np.array_equal(ours[name], spikes) for name, spikes in ref.items())
    assert np.mean([s.mean() for s in ref.values()]) > 0.02  # not a silent network
    np.testing.assert_allclose(graph.readout.logits(ours[graph.readout.source]), logits, atol=1e-12)
    assert all(sum(e.weight.nnz for e in n.edges) or n.host is not None or n.role == "input"
               or np.any(n.bias) for n in graph.nodes.values())


def test_graph_groups_name_the_mechanisms():
    groups = {n.group for n in export_graph(small_model("thalamic", num_cues=4), torch.rand(2, 4, 8),
                                            torch.tensor([0, 1])).nodes.values()}
    assert {"cortex", "thalamic_gating:blocks.0.attn", "thalamic_gating:blocks.1.attn"} <= groups
    groups = {n.group for n in export_graph(small_model("pulvinar"), torch.rand(2, 4, 8)).nodes.values()}
    assert "pulvinar:blocks.0.attn" in groups


def test_unmappable_parts_are_named():
    torch.manual_seed(0)
    ssa = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                  attention="ssa"))
    with pytest.raises(ExportError, match=r"blocks\.0\.attn.*SSA.*--attention sdsa"):
        export_graph(ssa, torch.rand(2, 4, 8))
    bf = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                 mechanism="basal_forebrain"))
    with pytest.raises(ExportError, match=r"blocks\.0\.attn \(SpikingBasalForebrain\w*\) has no export rule"):
        export_graph(bf, torch.rand(2, 4, 8))
    saliency = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                       mechanism="saliency"))
    with pytest.raises(ExportError, match=r"blocks\.0\.attn \(saliency\): the inhibition of return is an adaptive"):
        export_graph(saliency, torch.rand(2, 4, 8))
    thalamus = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                       mechanism="synthetic_thalamus"))
    with pytest.raises(ExportError, match=r"blocks\.0\.attn \(synthetic thalamus\): the k-winner-take-all"):
        export_graph(thalamus, torch.rand(2, 4, 8))
    dense = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, model="dense"))
    with pytest.raises(ExportError, match="spiking classifier"):
        export_graph(dense, torch.rand(2, 4, 8))
    odd = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1))
    odd.head_lif.reset = "hard"  # not a reset the neuron knows (subtract and zero both export)
    with pytest.raises(ExportError, match=r"head_lif: reset='hard' has no export rule"):
        export_graph(odd, torch.rand(2, 4, 8))


# ---------------------------------------------------------------- fixed point
def test_fixed_lif_step_matches_the_integer_reference():
    rng = np.random.default_rng(1)
    from spiking_attn.hardware.fixed_point import FixedNode

    for du, dv, vth, bias_mant, bias_exp in [(4095, 2048, 4096, 0, 0), (100, 3000, 300, -1500, 3),
                                             (0, 0, 100000, 4095, 7), (4095, 4095, 1, 3, 0)]:
        a = rng.integers(-(2 ** 17), 2 ** 17, size=(40, 3))  # large enough to wrap u and clip v
        node = FixedNode("n", (3,), "neuron", "cortex", du, dv, vth, np.full(3, bias_mant), bias_exp, np.ones(3))
        u = v = np.zeros((1, 3), np.int64)
        ours = []
        for t in range(40):
            s, u, v = lif_fixed_step(node, u, v, a[t][None])
            ours.append((s[0].copy(), u[0].copy(), v[0].copy()))
        for i in range(3):
            spikes, us, vs = loihi_lif_int(a[:, i], du, dv, vth, bias_mant, bias_exp)
            assert [bool(o[0][i]) for o in ours] == spikes
            assert [int(o[1][i]) for o in ours] == us and [int(o[2][i]) for o in ours] == vs


def test_quantised_weights_survive_lavas_own_clipping():
    lava_compat.import_lava()
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    from spiking_attn.hardware.fixed_point import quantize_weights

    rng = np.random.default_rng(0)
    for w in (rng.normal(0, 1, (7, 9)), np.abs(rng.normal(0, 3, (4, 5))), -np.abs(rng.normal(0, 0.01, (3, 3)))):
        ints, exp = quantize_weights(sparse.csr_matrix(w), np.full(w.shape[0], 37.0))
        dense = ints.toarray()
        mode = determine_sign_mode(dense)
        assert np.array_equal(truncate_weights(clip_weights(dense, mode, 8), mode, 8), dense)
        approx = dense * 2.0 ** exp
        assert np.abs(approx - w * 37.0).max() <= 2.0 ** (exp + 1)  # within one (even) step


def test_sixteen_bit_weights_are_two_lava_synapse_groups():
    lava_compat.import_lava()
    from lava.utils.weightutils import clip_weights, determine_sign_mode, truncate_weights

    from spiking_attn.hardware.fixed_point import split_weights

    w = np.random.default_rng(2).normal(0, 1, (6, 10))
    scale = np.full(6, 500.0)
    (one, e1), = split_weights(sparse.csr_matrix(w), scale, 8)
    groups = split_weights(sparse.csr_matrix(w), scale, 16)
    assert len(groups) == 2 and np.array_equal(groups[0][0].toarray(), one.toarray())
    total = sum(g.toarray() * 2.0 ** e for g, e in groups)
    err8, err16 = np.abs(one.toarray() * 2.0 ** e1 - w * 500).max(), np.abs(total - w * 500).max()
    assert err16 <= 2.0 ** (groups[1][1] + 1) and err16 < err8 / 50
    for g, _ in groups:  # each group is already in the form Lava keeps
        mode = determine_sign_mode(g.toarray())
        assert np.array_equal(truncate_weights(clip_weights(g.toarray(), mode, 8), mode, 8), g.toarray())


def test_emulator_matches_the_independent_integer_reference():
    graph = random_network(3, residual=True)
    fixed = quantize(graph)
    ours = emulate(fixed)
    ref = independent_fixed(fixed)
    assert all(np.array_equal(ours[k], ref[k]) for k in ref)
    assert np.mean([s.mean() for s in ref.values()]) > 0.05


# ---------------------------------------------------------------- Lava against the references
@pytest.mark.parametrize("residual", [False, True])
def test_random_networks_on_lava_match_numpy_in_both_precisions(residual, tmp_path):
    graph = random_network(7 + residual, residual)
    lava_float, sched = run_on_lava(graph, "float", tmp_path)
    ref = independent_float(graph)
    assert all(np.array_equal(lava_float[k], ref[k]) for k in ref)
    if residual:
        assert sched.relays  # the skip path a -> c was delayed
    fixed = quantize(graph)
    lava_fixed, _ = run_on_lava(fixed, "fixed", tmp_path)
    ref_fixed = independent_fixed(fixed)
    assert all(np.array_equal(lava_fixed[k], ref_fixed[k]) for k in ref_fixed)
    assert np.mean([s.mean() for s in ref.values()]) > 0.05


MECHANISMS_ON_LAVA = [("none", {}), ("thalamic", {"num_cues": 4}), ("pulvinar", {}), ("cortico_thalamic", {})]
CORE_GROUPS = {"thalamic": "thalamic_gating:", "pulvinar": "pulvinar:", "cortico_thalamic": "thalamic_relay:"}


@pytest.mark.parametrize("mechanism, extra, precision, bits",
                         [(m, e, p, 16) for m, e in MECHANISMS_ON_LAVA for p in ("float", "fixed")]
                         + [("none", {}, "fixed", 8)])  # 8-bit weights checked on one model
def test_exportable_mechanisms_run_on_lava_spike_for_spike(mechanism, extra, precision, bits):
    model = small_model(mechanism, seed=1, **extra)
    x = torch.rand(3, 4, 8)
    cue = torch.randint(0, 4, (3,)) if extra else None
    before = child_pids()
    result = deploy(model, x, cue, precision=precision, weight_bits=bits)
    assert result.spike_agreement() == 1.0
    assert result.graph_matches_torch
    if precision == "float":
        assert result.prediction_agreement() == 1.0
    report = result.report()
    assert report["cores"] == len(report["mapping"]) >= 1
    assert all(c["neurons"] <= 8192 for c in report["mapping"])
    groups = {c["group"] for c in report["mapping"]}
    if mechanism != "none":
        assert any(g.startswith(CORE_GROUPS[mechanism]) for g in groups)
        # a mechanism's group never shares a core with the cortex
        assert all(c["group"] == report["mapping"][c["core"]]["group"] for c in report["mapping"])
    assert child_pids() <= before


def test_mapping_respects_a_small_profile_and_names_a_population_over_its_limit(tmp_path):
    model = small_model("thalamic", seed=2, num_cues=4)
    x, cue = torch.rand(2, 4, 8), torch.tensor([0, 3])
    tiny = CoreProfile("tiny", neurons_per_core=16, synapses_per_core=600, input_axons_per_core=64)
    result = deploy(model, x, cue, precision="fixed", profile=tiny)
    assert result.spike_agreement() == 1.0
    cores = result.report()["mapping"]
    assert len(cores) > 10
    assert all(c["neurons"] <= 16 and c["synapses"] <= 600 and c["input_axons"] <= 64 for c in cores)
    assert result.report()["inter_core_spikes"] > 0
    profile_file = tmp_path / "mine.json"
    profile_file.write_text(json.dumps({"name": "mine", "neurons_per_core": 64, "input_axons_per_core": 3}))
    with pytest.raises(ValueError, match=r"population 'blocks\.0\.attn\.attn\.q_lif'.*input_axons_per_core=3"):
        deploy(model, x, cue, precision="fixed", profile=str(profile_file))


def test_profiles_are_data_with_sources(tmp_path):
    for name in ("loihi2", "loihi1"):
        p = load_profile(name)
        assert p.neurons_per_core in (8192, 1024) and p.sources
    assert load_profile("loihi1").input_axons_per_core == 4096
    bad = tmp_path / "bad.json"
    bad.write_text('{"neurons_per_core": 0}')
    with pytest.raises(ValueError, match="neurons_per_core must be a positive integer"):
        load_profile(str(bad))
    with pytest.raises(ValueError, match="neither a built-in profile"):
        load_profile("loihi9")


def test_map_cores_splits_a_population_across_cores():
    w = sparse.csr_matrix(np.ones((10, 4)))
    mapping = map_cores({"p": (10, "cortex")}, lambda n: [("src", w)], {"src": 4},
                        CoreProfile("t", neurons_per_core=4))
    assert [c.neurons for c in mapping.cores] == [4, 4, 2]
    assert list(mapping.placement["p"]) == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2]


# ---------------------------------------------------------------- reliability and bad input
def test_a_run_over_its_timeout_is_stopped_and_leaves_no_process(tmp_path):
    from spiking_attn.hardware.lava import LavaTimeout

    before = child_pids()
    graph = random_network(0, residual=True, timesteps=4, batch=400)  # enough steps to outlast the timeout
    with pytest.raises(LavaTimeout, match="timeout"):
        procs, sinks, sched, total = build_network(graph, "float", graph.batch, str(tmp_path))
        run_network(procs, sinks, total, "float", timeout=0.5)
    assert child_pids() <= before


def test_a_runtime_whose_stop_hangs_is_killed(tmp_path, monkeypatch):
    """Lava's stop() can wait forever (after a process model raised); stop_runtime then kills the
    runtime's processes."""
    import time

    from lava.magma.core.run_conditions import RunSteps
    from lava.magma.core.run_configs import Loihi2SimCfg

    from spiking_attn.hardware.lava import stop_runtime

    before = child_pids()
    graph = random_network(1, residual=False, timesteps=2, batch=1)
    procs, sinks, sched, total = build_network(graph, "float", graph.batch, str(tmp_path))
    anchor = next(iter(sinks.values()))[0]
    anchor.run(condition=RunSteps(num_steps=1), run_cfg=Loihi2SimCfg(select_tag="floating_pt"))
    assert child_pids() - before  # the runtime's processes are up
    monkeypatch.setattr(anchor, "stop", lambda: time.sleep(3600))
    assert stop_runtime(anchor, timeout=1.0) is False
    time.sleep(1)
    assert child_pids() <= before


def test_deploy_rejects_bad_input():
    model = small_model()
    with pytest.raises(ValueError, match="precision"):
        deploy(model, torch.rand(2, 4, 8), precision="double")
    with pytest.raises(ValueError, match="inputs"):
        deploy(model, torch.rand(4, 8), precision="float")
    with pytest.raises(ValueError, match="inputs is empty"):
        deploy(model, torch.rand(0, 4, 8))
    with pytest.raises(ValueError, match="weight_bits must be 8 or 16"):
        deploy(model, torch.rand(2, 4, 8), precision="fixed", weight_bits=12)
    with pytest.raises(ValueError, match="timeout"):
        deploy(model, torch.rand(2, 4, 8), timeout=-1.0)
    dense = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=5, dim=8, heads=2, model="dense"))
    with pytest.raises(ValueError, match="dense twin"):
        deploy(dense, torch.rand(2, 4, 8))


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def trained_checkpoints(tmp_path_factory):
    from spiking_attn.training import train

    root = tmp_path_factory.mktemp("deploy_ckpt")
    common = dict(task="digits", epochs=1, dim=16, depth=1, heads=2, batch_size=128, progress=False, seed=0)
    train(model="spiking", out=root / "spiking", **common)
    train(model="dense", out=root / "dense", **common)
    return root


def test_cli_deploy_writes_the_report_and_figures(trained_checkpoints, tmp_path, capsys):
    from spiking_attn.cli import main

    out = tmp_path / "deploy"
    code = main(["deploy", "--checkpoint", str(trained_checkpoints / "spiking" / "checkpoint.pt"),
                 "--precision", "fixed", "--samples", "3", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "deploy.json").read_text())
    for key in ("precision", "samples", "spike_agreement", "prediction_agreement", "lava_accuracy", "torch_accuracy",
                "cores", "mapping", "steps_per_second", "emulator_speedup"):
        assert key in report
    assert report["precision"] == "fixed" and report["samples"] == 3 and report["spike_agreement"] == 1.0
    assert (out / "deploy_raster.png").stat().st_size > 0 and (out / "deploy_cores.png").stat().st_size > 0
    assert "spike agreement 1.0000" in capsys.readouterr().out
    # a second run into the same folder needs --overwrite
    assert main(["deploy", "--checkpoint", str(trained_checkpoints / "spiking" / "checkpoint.pt"),
                 "--samples", "1", "--out", str(out)]) == 1
    assert "--overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("args, code, message", [
    (["--precision", "double"], 2, "invalid choice"),
    (["--samples", "0"], 1, "--samples"),
    (["--samples", "100000"], 1, "more than the 360 test samples"),
    (["--profile", "loihi9"], 1, "neither a built-in profile"),
])
def test_cli_deploy_bad_options(trained_checkpoints, tmp_path, capsys, args, code, message):
    from spiking_attn.cli import main

    out = tmp_path / "nested" / "deploy"
    assert main(["deploy", "--checkpoint", str(trained_checkpoints / "spiking" / "checkpoint.pt"), "--out", str(out),
                 *args]) == code
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "nested").exists()  # a failed run leaves nothing behind


def test_cli_deploy_refuses_a_dense_checkpoint(trained_checkpoints, tmp_path, capsys):
    from spiking_attn.cli import main

    assert main(["deploy", "--checkpoint", str(trained_checkpoints / "dense" / "checkpoint.pt"),
                 "--out", str(tmp_path / "d")]) == 1
    assert "dense model" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def _processes_mentioning(marker: str) -> list:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                with open(f"/proc/{entry}/cmdline") as f:
                    if marker in f.read():
                        found.append(int(entry))
            except OSError:
                continue
    return found


@pytest.mark.parametrize("group", [False, True])
def test_ctrl_c_during_a_lava_run_leaves_no_process(trained_checkpoints, tmp_path, group):
    """Ctrl-C to the command alone, or to its whole process group as a terminal sends it: status 130,
    one line, and no process of the run left."""
    import signal
    import time

    out = tmp_path / f"interrupted_{group}"
    cmd = [sys.executable, "-m", "spiking_attn.cli", "deploy", "--checkpoint",
           str(trained_checkpoints / "spiking" / "checkpoint.pt"), "--samples", "300", "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"},
                            # SIGINT back to its default in the child: a test run started in the background by a
                            # non-interactive shell ignores SIGINT, and the child would inherit that
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while time.time() < deadline and len(_processes_mentioning(str(out))) < 5:  # Lava's runtime is up
        time.sleep(0.5)
    time.sleep(2)
    if group:
        os.killpg(proc.pid, signal.SIGINT)
    else:
        proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1] == "spiking-attn: interrupted"
    time.sleep(1)
    assert _processes_mentioning(str(out)) == []
    assert not out.exists()


def test_demo_has_an_energy_step_and_ends_with_a_deploy_step(tmp_path, capsys):
    from spiking_attn.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--epochs", "1", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "Lava fixed on 4 samples: spike agreement 1.0000" in text
    assert "ANN / SNN" in text and text.index("ANN / SNN") < text.index("Lava fixed")
    report = json.loads((out / "deploy" / "deploy.json").read_text())
    assert report["samples"] == 4 and report["precision"] == "fixed" and report["cores"] >= 1
    energy = json.loads((out / "energy" / "energy.json").read_text())
    assert energy["samples"] == 360 and energy["energy_model"]["name"] == "45nm" and energy["ratio"] > 0
    assert energy["accuracy"]["ann"] is None  # the twin was built, not trained
    assert (out / "energy" / "energy_breakdown.png").is_file()
