"""NIR export and import: the library's models written as NIR graphs and read back spike for spike, and
NIR graphs written by snnTorch read as models of this library (and the other way round)."""
from __future__ import annotations

import os

import nir
import numpy as np
import pytest
import snntorch as snn
import torch
from snntorch.export_nir import export_to_nir
from snntorch.import_nir import import_from_nir
from torch import nn

from spiking_attn.cli import main
from spiking_attn.converters.torch_models import SpikingSequential
from spiking_attn.errors import ShapeError, SpikingAttnError
from spiking_attn.graph import ExportError, NetworkGraph, simulate, torch_population_spikes
from spiking_attn.interop import nir as snir
from spiking_attn.models import ModelConfig, build_model
from spiking_attn.neuron import LIFPopulation, lif_reference

from conftest import small_firing_model


firing_model = small_firing_model


def population_spikes(net: snir.NIRNetwork, graph: NetworkGraph) -> dict:
    with torch.no_grad():
        values = net.run(**{k: torch.from_numpy(v) for k, v in graph.step_inputs().items()})
    return {k: v.reshape(v.shape[0], v.shape[1], -1).numpy() != 0 for k, v in values.items()}


# ---------------------------------------------------------------- the library's models, there and back
@pytest.mark.parametrize("mechanism, extra, cue", [
    ("none", {}, False),  # SDSA
    ("none", {"causal": True}, False),
    ("none", {"num_cues": 3}, True),  # the cue token: an Affine from the graph input "cue"
    ("thalamic", {"num_cues": 4}, True),  # the cue as input spikes; gate AND value masks
    ("pulvinar", {"per_channel": True, "learn_threshold": True}, False),  # per-neuron thresholds
    ("cortico_thalamic", {}, False),
])
def test_export_and_import_give_the_same_spikes_step_by_step(mechanism, extra, cue, tmp_path):
    model = firing_model(mechanism, **extra)
    x = torch.rand(5, 4, 8)
    c = torch.randint(0, extra["num_cues"], (5,)) if cue else None
    path = tmp_path / "model.nir"
    written = snir.export(model, x, c, path)
    assert path.is_file() and isinstance(written, nir.NIRGraph)
    net = snir.load(path, dtype=torch.float64)
    assert set(net.inputs) == ({"input", "cue"} if cue else {"input"})
    from spiking_attn.graph import export_graph

    ours = population_spikes(net, export_graph(model, x, c))
    ref, logits = torch_population_spikes(model, x, c)
    assert len(ref) >= 8
    for name, spikes in ref.items():
        assert np.array_equal(ours[name], spikes), name
    assert np.mean([s.mean() for s in ref.values()]) > 0.02  # not a silent network
    step = model.encode(x.double())
    inputs = {"input": step.reshape(*step.shape[:2], -1)}
    if cue:
        inputs["cue"] = model.encode_cue(c, 5, torch.float64)
    with torch.no_grad():
        per_step = net(**inputs)  # [T, B, classes]: each step's logits
    np.testing.assert_allclose(per_step.mean(0).numpy(), logits, atol=1e-12)
    report = snir.round_trip(model, x, c)
    assert report["identical"] and report["spike_agreement"] == 1.0 and report["prediction_agreement"] == 1.0


def test_the_written_neurons_follow_the_stated_equations():
    model = firing_model("none")
    graph = snir.export(model, torch.rand(2, 4, 8), dt=1e-3)
    q = graph.nodes["blocks.0.attn.q_lif"]  # du = 1, dv = 0.5 (the default LIF)
    assert isinstance(q, nir.LIF)
    np.testing.assert_allclose(q.tau, 1e-3 / 0.5)
    np.testing.assert_allclose(q.r, 2.0)
    assert np.all(q.v_leak == 0) and np.all(q.v_reset == 0)
    mask = graph.nodes["blocks.0.attn.k_and_v"]  # a coincidence neuron: no memory, threshold 1.5
    np.testing.assert_allclose(mask.tau, 1e-3)
    np.testing.assert_allclose(mask.v_threshold, 1.5)
    into = [src for src, dst in graph.edges if dst == "blocks.0.attn.k_and_v"]
    assert sorted(into) == ["blocks.0.attn.k_and_v.from.blocks.0.attn.k_lif",
                            "blocks.0.attn.k_and_v.from.blocks.0.attn.v_lif"]
    assert graph.metadata["dt"] == 1e-3 and graph.metadata["timesteps"] == model.config.timesteps


def cuba_graph(seed: int, residual: bool, du: float) -> NetworkGraph:
    """A random network graph built by hand: analog input -> a -> b (-> c, with a skip a -> c)."""
    rng = np.random.default_rng(seed)
    t, b = 5, 3
    graph = NetworkGraph(nn.Module(), t, b)
    weight = torch.from_numpy(rng.normal(0, 0.8, (6, 4)))
    offset = torch.from_numpy(rng.uniform(0, 0.3, 6))
    x = torch.from_numpy(rng.uniform(0, 1, (t, b, 4)))

    def encode(given):
        return given["input"] @ weight.T + offset

    current = graph.host_current(encode({"input": x.reshape(t * b, 4)}).reshape(t, b, 6), encoding=(encode, {"input": x}))
    a = graph.neurons("a", current, du=du, dv=rng.uniform(0.2, 0.9, 6), vth=rng.uniform(0.5, 1.5, 6),
                      bias=rng.uniform(0, 0.2, 6))

    def synapses(src, n):
        from scipy import sparse

        return type(current)(graph, (n,), {src.name: sparse.csr_matrix(rng.normal(0.3, 0.8, (n, src.size)))})

    bb = graph.neurons("b", synapses(a, 5), du=du, dv=0.5, vth=1.0, bias=rng.uniform(0, 0.1, 5))
    c_in = synapses(bb, 4) + (synapses(a, 4) if residual else type(current)(graph, (4,)))
    graph.neurons("c", c_in, du=1.0, dv=0.0 if residual else 0.3, vth=0.8)  # dv = 0: an IF neuron
    return graph


@pytest.mark.parametrize("seed, residual, du", [(0, False, 1.0), (1, True, 1.0), (2, False, 0.6), (3, True, 0.3)])
def test_random_graphs_and_residual_paths_round_trip(seed, residual, du):
    graph = cuba_graph(seed, residual, du)
    written = snir.export(graph)
    kinds = {n: type(written.nodes[n]).__name__ for n in ("a", "b", "c")}
    assert kinds["a"] == ("LIF" if du == 1 else "CubaLIF")
    assert kinds["c"] == ("IF" if residual else "LIF")
    net = snir.load(written, dtype=torch.float64)
    ours = population_spikes(net, graph)
    ref = simulate(graph)
    for name in ("a", "b", "c"):
        assert np.array_equal(ours[name], ref[name]), name
    assert all(ref[n].mean() > 0.05 for n in ("a", "b", "c"))


def random_chain(seed: int, conv: bool) -> SpikingSequential:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)

    def lif(shape):
        return LIFPopulation(du=float(rng.choice([1.0, 0.5])), dv=float(rng.uniform(0.2, 0.8)),
                             vth=torch.from_numpy(rng.uniform(0.3, 1.0, shape)), shape=shape)

    if conv:
        stages = [nn.Conv2d(1, 3, 3, padding=1), lif((3, 6, 6)), nn.Conv2d(3, 4, 3, stride=2), lif((4, 2, 2)),
                  nn.Flatten(), nn.Linear(16, 5), lif((5,)), nn.Linear(5, 3)]
        shape = (1, 6, 6)
    else:
        width = [7] + [int(w) for w in rng.integers(4, 9, 3)]
        stages = []
        for i in range(3):
            stages += [nn.Linear(width[i], width[i + 1]), lif((width[i + 1],))]
        stages.append(nn.Linear(width[-1], 3))
        shape = (7,)
    with torch.no_grad():
        for s in stages:
            if isinstance(s, (nn.Linear, nn.Conv2d)):
                s.weight.mul_(2.5)
                s.bias.uniform_(0.0, 0.4)
    return SpikingSequential(stages, timesteps=6, input_shape=shape).double().eval()


@pytest.mark.parametrize("seed, conv", [(0, False), (1, False), (2, True)])
def test_random_chains_round_trip(seed, conv):
    model = random_chain(seed, conv)
    x = torch.rand(4, *model.input_shape, dtype=torch.float64)
    report = snir.round_trip(model, x)
    assert report["identical"] and report["populations"] == 3
    assert report["max_logit_difference"] < 1e-12
    ref, _ = torch_population_spikes(model, x)
    assert np.mean([s.mean() for s in ref.values()]) > 0.05
    from spiking_attn.graph import export_graph

    graph = simulate(export_graph(model, x))  # the graph itself (what Lava runs): a Linear bias before a
    assert all(np.array_equal(graph[k], v) for k, v in ref.items())  # du < 1 population is an input current


def test_parts_nir_cannot_express_are_refused_by_name(tmp_path):
    torch.manual_seed(0)
    ssa = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                  attention="ssa"))
    with pytest.raises(ExportError, match=r"blocks\.0\.attn.*SSA.*--attention sdsa"):
        snir.export(ssa, torch.rand(2, 4, 8))
    subtract = random_chain(0, False)
    subtract.stages[1].reset = "subtract"
    with pytest.raises(ExportError, match=r"stages\.1: reset='subtract'.*no NIR form"):
        snir.export(subtract, torch.rand(2, 7, dtype=torch.float64))
    saliency = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, depth=1,
                                       mechanism="saliency"))
    with pytest.raises(ExportError, match=r"saliency"):
        snir.export(saliency, torch.rand(2, 4, 8))
    dense = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=8, heads=2, model="dense"))
    with pytest.raises(ExportError, match="spiking classifier"):
        snir.export(dense, torch.rand(2, 4, 8))
    with pytest.raises(SpikingAttnError, match="sample_input is required"):
        snir.export(firing_model())
    with pytest.raises(SpikingAttnError, match="dt must be a positive"):
        snir.export(firing_model(), torch.rand(2, 4, 8), dt=0.0)
    with pytest.raises(SpikingAttnError, match="does not exist"):
        snir.export(firing_model(), torch.rand(2, 4, 8), path=tmp_path / "no" / "model.nir")
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- snnTorch
def snntorch_net(reset="zero", delay=False):
    torch.manual_seed(3)
    net = nn.Sequential(
        nn.Linear(6, 8),
        snn.Synaptic(alpha=torch.full((8,), 0.6), beta=torch.full((8,), 0.8), threshold=torch.full((8,), 0.7),
                     init_hidden=True, reset_mechanism=reset, reset_delay=delay),
        nn.Linear(8, 5),
        snn.Leaky(beta=torch.full((5,), 0.75), threshold=torch.full((5,), 0.5), init_hidden=True,
                  reset_mechanism=reset, reset_delay=delay),
        nn.Linear(5, 3),
        snn.Leaky(beta=torch.full((3,), 0.9), threshold=torch.ones(3), init_hidden=True, output=True,
                  reset_mechanism=reset, reset_delay=delay),
    )
    with torch.no_grad():
        for mod in net:
            if isinstance(mod, nn.Linear):
                mod.weight.mul_(3.0)
    return net


def run_snntorch(net, x):
    from snntorch import utils

    utils.reset(net)
    with torch.no_grad():
        return torch.stack([net(x[t])[0] for t in range(x.shape[0])])


def test_a_graph_written_by_snntorch_imports_and_matches_snntorch(tmp_path):
    net = snntorch_net()
    path = tmp_path / "snntorch.nir"
    nir.write(path, export_to_nir(net, torch.rand(1, 6), ignore_dims=[0]))
    ours = snir.load(path)  # no dt in snnTorch's metadata: its own 1e-4
    assert [type(m).__name__ for m in ours.populations().values()] == ["NIRNeuron"] * 3
    lif = ours.layer("1").lif  # the Synaptic neuron: u decays by 1 - alpha, v by 1 - beta
    np.testing.assert_allclose(lif.du.numpy(), 0.4, rtol=1e-6)
    np.testing.assert_allclose(lif.dv.numpy(), 0.2, rtol=1e-6)
    x = torch.rand(12, 4, 6) * 2
    expected = run_snntorch(net, x)
    with torch.no_grad():
        got = ours(x)
    assert expected.sum() > 5 and torch.equal(got, expected)


def test_snntorch_default_neurons_lose_their_reset_in_its_own_export():
    """snnTorch writes every Leaky as a NIR LIF that resets to zero, whatever its reset_mechanism: a
    network with the default subtract reset (delayed by one step) reads back as the zero-reset one."""
    x = torch.rand(12, 4, 6) * 2
    default = snntorch_net(reset="subtract", delay=True)
    graph = export_to_nir(default, torch.rand(1, 6), ignore_dims=[0])
    with torch.no_grad():
        got = snir.load(graph)(x)
    assert torch.equal(got, run_snntorch(snntorch_net(), x))
    assert not torch.equal(got, run_snntorch(default, x))


def test_our_export_loads_in_snntorch_with_the_same_spikes():
    model = firing_model("none").float()
    x = torch.rand(5, 4, 8)
    graph = snir.export(model, x, fold_thresholds=True)  # snnTorch takes one threshold per layer
    net = import_from_nir(graph)
    names = {}
    for name, mod in net.named_modules():
        if isinstance(mod, (snn.Leaky, snn.Synaptic)):
            names[name] = mod
    seen = {k: [] for k in names}
    hooks = [m.register_forward_hook(lambda _m, _a, out, k=k: seen[k].append(out[0] if isinstance(out, tuple) else out))
             for k, m in names.items()]
    try:
        step = model.encode(x).reshape(model.config.timesteps, 5, -1)
        outs = run_snntorch(net, step)
    finally:
        for h in hooks:
            h.remove()
    ref, logits = torch_population_spikes(model, x)
    assert len(ref) >= 8 and {n.replace('.', '_') for n in ref} < set(names)  # plus the coincidence neurons
    for name, spikes in ref.items():
        theirs = torch.stack(seen[name.replace(".", "_")]).reshape(spikes.shape).numpy() != 0
        assert np.array_equal(theirs, spikes), name
    np.testing.assert_allclose(outs.mean(0).numpy(), logits, atol=1e-5)
    assert np.mean([s.mean() for s in ref.values()]) > 0.02


# ---------------------------------------------------------------- NIR nodes built by hand
def test_conv_pool_and_flatten_nodes_import():
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 1, (2, 1, 3, 3))
    w2 = rng.normal(0, 1, (3, 8))
    graph = nir.NIRGraph(nodes={
        "input": nir.Input(input_type={"input": np.array([1, 6, 6])}),
        "conv": nir.Conv2d(input_shape=(6, 6), weight=w1, stride=1, padding=1, dilation=1, groups=1, bias=np.zeros(2)),
        "lif1": nir.LIF(tau=np.full((2, 6, 6), 2e-4), r=np.full((2, 6, 6), 2.0), v_leak=np.zeros((2, 6, 6)),
                        v_threshold=np.full((2, 6, 6), 0.8)),
        "pool": nir.SumPool2d(kernel_size=np.array([3, 3]), stride=np.array([3, 3]), padding=np.array([0, 0])),
        "flat": nir.Flatten(input_type={"input": np.array([2, 2, 2])}, start_dim=0, end_dim=-1),
        "fc": nir.Linear(weight=w2),
        "lif2": nir.CubaLIF(tau_syn=np.full(3, 2e-4), tau_mem=np.full(3, 4e-4), r=np.full(3, 4.0), w_in=np.full(3, 2.0),
                            v_leak=np.full(3, 0.25), v_threshold=np.ones(3)),
        "output": nir.Output(output_type={"output": np.array([3])}),
    }, edges=[("input", "conv"), ("conv", "lif1"), ("lif1", "pool"), ("pool", "flat"), ("flat", "fc"),
              ("fc", "lif2"), ("lif2", "output")])
    net = snir.load(graph, dtype=torch.float64)
    x = torch.rand(7, 2, 1, 6, 6, dtype=torch.float64) * 2
    with torch.no_grad():
        got = net.run(x)
    t, b = x.shape[:2]
    conv = torch.nn.functional.conv2d(x.reshape(t * b, 1, 6, 6), torch.from_numpy(w1), padding=1).reshape(t, b, 2, 6, 6)
    s1 = lif_reference(conv, du=1.0, dv=0.5, vth=0.8)[0]  # r dt / tau = 1
    pooled = s1.reshape(t, b, 2, 2, 3, 2, 3).sum(dim=(4, 6))  # 3x3 sum pooling, stride 3
    current = pooled.reshape(t, b, 8) @ torch.from_numpy(w2).T
    s2 = lif_reference(current, du=0.5, dv=0.25, vth=1.0, bias=0.25 * 0.25)[0]  # gain (du w_in)(dv r) = 1
    assert torch.equal(got["lif1"], s1) and torch.equal(got["lif2"], s2) and s2.sum() > 0


def test_bad_graphs_and_inputs_are_refused_by_name(tmp_path):
    with pytest.raises(SpikingAttnError, match="does not exist"):
        snir.load(tmp_path / "missing.nir")
    broken = tmp_path / "broken.nir"
    broken.write_bytes(b"not an hdf5 file")
    with pytest.raises(SpikingAttnError, match="is not a readable NIR file"):
        snir.load(broken)
    lif = dict(tau=np.full(3, 2e-4), r=np.full(3, 2.0), v_leak=np.zeros(3), v_threshold=np.ones(3))
    nodes = {"input": nir.Input(input_type={"input": np.array([3])}), "w": nir.Linear(weight=np.eye(3)),
             "li": nir.LI(tau=np.full(3, 2e-4), r=np.ones(3), v_leak=np.zeros(3)),
             "output": nir.Output(output_type={"output": np.array([3])})}
    with pytest.raises(snir.NIRImportError, match=r"'li' is a LI, which has no counterpart"):
        snir.load(nir.NIRGraph(nodes=nodes, edges=[("input", "w"), ("w", "li"), ("li", "output")]))
    loop = dict(nodes, li=nir.LIF(**lif))
    with pytest.raises(snir.NIRImportError, match="recurrent loop"):
        snir.load(nir.NIRGraph(nodes=loop, edges=[("input", "w"), ("w", "li"), ("li", "w"), ("li", "output")]))
    reset = dict(nodes, li=nir.LIF(**lif, v_reset=np.full(3, 0.2)))
    with pytest.raises(snir.NIRImportError, match=r"'li': v_reset other than 0"):
        snir.load(nir.NIRGraph(nodes=reset, edges=[("input", "w"), ("w", "li"), ("li", "output")]))
    fast = dict(nodes, li=nir.LIF(**dict(lif, tau=np.full(3, 1e-5))))
    with pytest.raises(snir.NIRImportError, match=r"'li': tau below dt"):
        snir.load(nir.NIRGraph(nodes=fast, edges=[("input", "w"), ("w", "li"), ("li", "output")]))
    net = snir.load(nir.NIRGraph(nodes=dict(nodes, li=nir.LIF(**lif)),
                                 edges=[("input", "w"), ("w", "li"), ("li", "output")]))
    with pytest.raises(ShapeError, match=r"input has per-step shape \(4,\)"):
        net(torch.rand(5, 2, 4))
    with pytest.raises(ShapeError, match="input"):
        net(torch.rand(2, 3))
    with pytest.raises(SpikingAttnError, match="NaN|finite"):
        net(torch.full((5, 2, 3), float("nan")))
    with pytest.raises(SpikingAttnError, match="unknown input 'cue'"):
        net(torch.rand(5, 2, 3), cue=torch.rand(5, 2, 3))
    with pytest.raises(SpikingAttnError, match="dt must be a positive"):
        snir.load(nir.NIRGraph(nodes=dict(nodes, li=nir.LIF(**lif)),
                               edges=[("input", "w"), ("w", "li"), ("li", "output")]), dt=-1.0)


def test_two_inputs_must_agree_on_time_steps():
    model = firing_model("thalamic", num_cues=4)
    net = snir.load(snir.export(model, torch.rand(2, 4, 8), torch.tensor([0, 1])))
    with pytest.raises(ShapeError, match="time steps and batch must match"):
        net(input=torch.rand(4, 2, 32), cue=torch.rand(3, 2, 4).round())
    with pytest.raises(SpikingAttnError, match="missing input 'cue'"):
        net(torch.rand(4, 2, 32))


# ---------------------------------------------------------------- the command line
@pytest.fixture(scope="module")
def sdsa_checkpoint(tmp_path_factory):
    from spiking_attn.training import train

    out = tmp_path_factory.mktemp("nir_run")
    train(task="digits", model="spiking", epochs=1, seed=0, out=out, attention="sdsa", progress=False,
          figures=False, dim=16, depth=1, heads=2, timesteps=2)
    return out / "checkpoint.pt"


def test_cli_export_writes_a_graph_that_runs_like_the_model(sdsa_checkpoint, tmp_path, capsys):
    out = tmp_path / "model.nir"
    assert main(["export", "--checkpoint", str(sdsa_checkpoint), "--format", "nir", "--out", str(out),
                 "--samples", "4"]) == 0
    text = capsys.readouterr().out
    assert "spike agreement 1.0000, prediction agreement 1.0000" in text
    net = snir.load(out)
    assert net.metadata["timesteps"] == 2 and net.inputs == ["input"]
    assert main(["export", "--checkpoint", str(sdsa_checkpoint), "--format", "nir", "--out", str(out)]) != 0
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["model.nir"]


@pytest.mark.parametrize("args, message", [
    (["--format", "onnx"], "invalid choice: 'onnx'"),
    (["--samples", "0"], "samples"),
    (["--dt", "nan"], "dt must be a positive"),
])
def test_cli_export_bad_options(sdsa_checkpoint, tmp_path, capsys, args, message):
    base = ["export", "--checkpoint", str(sdsa_checkpoint), "--format", "nir", "--out", str(tmp_path / "m.nir")]
    if args[0] == "--format":
        base = base[:3] + base[5:]
    assert main(base + args) != 0
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not os.listdir(tmp_path)


def test_cli_export_refuses_a_corrupt_or_dense_checkpoint(tmp_path, capsys):
    bad = tmp_path / "checkpoint.pt"
    bad.write_bytes(b"garbage")
    assert main(["export", "--checkpoint", str(bad), "--format", "nir", "--out", str(tmp_path / "m.nir")]) != 0
    assert "checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "m.nir").exists()
