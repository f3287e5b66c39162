"""Operation counts and energy estimates: exact on hand-computed networks, in agreement with spikingjelly's
op counter where both count the same thing, complete over every module of every mechanism, and strict
about bad input."""
import json
import math

import pytest
import torch
from torch import nn

from spiking_attn.hardware.energy import (EnergyModelError, energy_model_names, estimate, format_table,
                                          load_energy_model)
from spiking_attn.mechanisms import MECHANISMS, mechanism_names
from spiking_attn.models import ModelConfig, build_model
from spiking_attn.neuron import LIFPopulation
from spiking_attn.opcount import OpCounter, UncountedModuleError, count_ops, count_rule, no_own_ops

SMALL = dict(in_features=8, num_tokens=6, num_classes=3, dim=16, heads=2, depth=1, timesteps=4)


class TwoLayer(nn.Module):
    """Spikes -> fc1 -> LIF -> fc2: small enough to count by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 3, bias=False)
        self.lif = LIFPopulation()
        self.fc2 = nn.Linear(3, 2)

    def forward(self, x):
        return self.fc2(self.lif(self.fc1(x)))


count_rule(TwoLayer)(no_own_ops)


# ------------------------------------------------------------------------- exact counts
def test_hand_computed_two_layer_network():
    net = TwoLayer()
    with torch.no_grad():
        net.fc1.weight.fill_(0.6)
    # [T=2, B=1, 4]: step 0 has two spikes (current 1.2 > 1: all three neurons fire), step 1 one spike
    # (current 0.6 after the reset: none fire)
    x = torch.tensor([[[1.0, 0.0, 1.0, 0.0]], [[0.0, 0.0, 0.0, 1.0]]])
    report = count_ops(net, x, event_driven=True)
    layers = report.per_layer
    assert layers["fc1"]["acs"] == 3 * 3  # three input spikes, fan-out 3
    assert layers["lif"]["neuron_updates"] == 2 * 3 and layers["lif"]["spikes"] == 3
    assert layers["lif"]["state_accesses"] == 12
    assert layers["fc2"]["acs"] == 3 * 2  # three spikes of the population, fan-out 2
    totals = report.totals()
    assert totals["macs"] == 0 and totals["masks"] == 0 and totals["acs"] == 15
    assert load_energy_model("45nm").energy(totals) == pytest.approx(15 * 0.9)
    loihi = load_energy_model("loihi")  # 15 synaptic ops, 3 quiet and 3 active updates, 3 spikes
    assert loihi.energy(totals) == pytest.approx(15 * 23.6 + 3 * 52 + 3 * 81 + 3 * 1.7)


def test_zero_input_costs_no_accumulates_and_double_spikes_double_them():
    layer = nn.Sequential(nn.Linear(8, 5))
    zero = torch.zeros(3, 2, 8)
    assert count_ops(layer, zero, event_driven=True).totals()["acs"] == 0
    g = torch.Generator().manual_seed(0)
    sparse = (torch.rand(3, 2, 8, generator=g) < 0.2).float()
    denser = sparse.clone()
    free = (denser == 0).nonzero()
    extra = free[torch.randperm(len(free), generator=g)[: int(sparse.sum())]]
    denser[tuple(extra.t())] = 1.0  # exactly twice the spikes
    once, twice = (count_ops(layer, t, event_driven=True).totals()["acs"] for t in (sparse, denser))
    assert once == sparse.sum() * 5 and twice == 2 * once


def test_a_dense_model_counts_every_mac_and_an_analog_input_repeated_over_time_counts_once():
    layer = nn.Sequential(nn.Linear(8, 5))
    onehot = torch.eye(8)[:4]  # binary, but a dense accelerator multiplies every value
    assert count_ops(layer, onehot, event_driven=False).totals() == pytest.approx(
        {**dict.fromkeys(count_ops(layer, onehot, event_driven=False).totals(), 0.0), "macs": 4 * 8 * 5,
         "weight_reads": 4 * 8 * 5, "activation_accesses": 4 * 8 + 4 * 5})
    model = build_model(ModelConfig(**SMALL, attention="sdsa"))
    x = torch.rand(5, 6, 8)
    embed = count_ops(model, x).per_sample().per_layer["embed.linear"]
    assert embed["macs"] == 6 * 8 * 16  # one step of the direct encoding, not T of them
    rate = build_model(ModelConfig(**SMALL, attention="sdsa", encoder="rate"))
    embed = count_ops(rate, x).per_layer["embed.linear"]
    assert embed["macs"] == 0 and embed["acs"] > 0  # rate-coded spikes: accumulates only


def test_sdsa_masks_and_sums_by_hand():
    from spiking_attn.attention import SpikingSelfAttention
    from spiking_attn.opcount import mask_events

    torch.manual_seed(1)
    attn = SpikingSelfAttention(8, heads=2, kind="sdsa").eval()
    x = (torch.rand(3, 2, 5, 8) < 0.4).float()
    seen = {}
    hooks = [getattr(attn, n).register_forward_hook(lambda m, a, o, n=n: seen.__setitem__(n, o))
             for n in ("q_lif", "k_lif", "v_lif", "attn_lif")]
    report = count_ops(attn, x, batch_size=100)
    for h in hooks:
        h.remove()
    q, k, v, kv = (seen[n] for n in ("q_lif", "k_lif", "v_lif", "attn_lif"))
    own = report.per_layer["model"]
    assert own["masks"] == (k.sum() + v.sum() + q.sum() + kv.expand_as(q).sum()).item()
    assert own["masks"] == mask_events(k, v) + mask_events(q, kv)
    assert own["adds"] == (k * v).sum().item()


# ------------------------------------------------------------- spikingjelly's op counter
def _spikingjelly_counts(model, x):
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    synop, mac = SynOpCounter(), MACCounter()
    model.eval()
    with torch.no_grad(), DispatchCounterMode([synop, mac]):
        model(x)
    matmuls = ("mm", "addmm", "bmm", "baddbmm")
    macs = sum(v for op, v in mac.get_counts()["Global"].items() if any(str(op).startswith(f"aten.{m}.")
                                                                      for m in matmuls))
    return synop.get_total(), macs


@pytest.mark.parametrize("attention", ["sdsa", "ssa"])
@pytest.mark.parametrize("mechanism", ["none", "basal_forebrain"])
def test_counts_agree_with_spikingjelly_op_counter(attention, mechanism):
    # the same model and data: our synaptic accumulates (weight layers on spikes, SSA's spike-count
    # products, the state tables read by arousal spikes) equal its synaptic operations, and our MACs
    # its matrix-product MACs once the repeated encoding step is counted T times, as it computes it
    torch.manual_seed(0)
    model = build_model(ModelConfig(**SMALL, attention=attention, mechanism=mechanism)).eval()
    x = torch.rand(6, 6, 8)
    synops, macs = _spikingjelly_counts(model, x)
    report = count_ops(model, x)
    ours = report.totals()
    weight_macs = sum(ops["macs"] for name, ops in report.per_layer.items() if report.types[name] == "Linear")
    assert ours["acs"] > 0 and synops > 0
    assert abs(ours["acs"] - synops) <= 0.01 * synops
    assert weight_macs > 0 and abs(weight_macs * SMALL["timesteps"] - macs) <= 0.01 * macs


# ------------------------------------------------------------ every module is counted
@pytest.mark.parametrize("mechanism", mechanism_names("classifier"))
@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_every_mechanism_is_counted_with_its_own_operations(mechanism, kind):
    torch.manual_seed(0)
    attention = dict(attention="sdsa") if kind == "spiking" else dict(dense_attention="softmax")
    # a low threshold, so that an untrained model's populations are active
    model = build_model(ModelConfig(**SMALL, num_cues=2, mechanism=mechanism, model=kind, vth=0.3, **attention))
    report = count_ops(model, 3 * torch.rand(4, 6, 8), torch.tensor([0, 1, 1, 0])).per_sample()
    own = report.per_layer.get("blocks.0.attn") or report.per_layer.get("blocks.0")
    assert own is not None and (own["masks"] + own["adds"] + own["macs"] + own["acs"]) > 0
    if kind == "dense":
        assert report.totals()["acs"] == 0 and report.totals()["neuron_updates"] == 0
    else:
        assert report.totals()["neuron_updates"] > 0


def test_a_per_step_gain_costs_its_macs_whatever_the_batch_and_readouts_are_left_out():
    torch.manual_seed(0)
    config = dict(SMALL, timesteps=1, vth=0.3, mechanism="basal_forebrain")
    model = build_model(ModelConfig(**config))
    x = 3 * torch.rand(4, 6, 8)
    one, four = (count_ops(model, x, batch_size=b).per_layer["blocks.0.attn.attn.q_lif"] for b in (1, 4))
    assert one["macs"] == four["macs"] == 4 * 6 * 16  # a gain per neuron per step, batch of 1 or 4
    assert not any("plasticity" in name for name in count_ops(model, x).per_layer)
    predictive = build_model(ModelConfig(**dict(config, mechanism="predictive")))
    layers = count_ops(predictive, x).per_layer
    assert "blocks.0.attn.reconstruct" not in layers and "blocks.0.attn.predict.0" in layers


def test_an_uncounted_module_type_is_an_error_naming_it():
    class Mystery(nn.Module):
        def forward(self, x):
            return x * 2

    model = nn.Sequential(nn.Linear(4, 4), Mystery())
    with pytest.raises(UncountedModuleError, match=r"'1' of type .*Mystery"):
        OpCounter(model)


# ------------------------------------------------------------------------ estimates
def _trained_pair(tmp_path):
    from spiking_attn.training import train

    common = dict(task="digits", epochs=1, dim=16, depth=1, heads=2, batch_size=128, progress=False, seed=0)
    train(model="spiking", out=tmp_path / "spiking", **common)
    train(model="dense", out=tmp_path / "dense", **common)
    return tmp_path / "spiking" / "checkpoint.pt", tmp_path / "dense" / "checkpoint.pt"


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    return _trained_pair(tmp_path_factory.mktemp("energy_ckpt"))


def test_estimate_with_a_given_twin_and_a_built_one(pair):
    from spiking_attn.checkpoint import load_model
    from spiking_attn.data import load_task

    data = load_task("digits")
    snn, ann = load_model(pair[0]), load_model(pair[1])
    x, y = data.x_test[:50], data.y_test[:50]
    given = estimate(snn, x, labels=y, twin=ann)
    assert given.twin == "given" and given.accuracy["snn"] is not None and given.accuracy["ann"] is not None
    built = estimate(snn, x, labels=y)
    assert built.accuracy["ann"] is None and "built" in built.twin
    assert built.totals("ann")["macs"] == given.totals("ann")["macs"]  # MACs depend on shapes only
    assert given.ratio == pytest.approx(given.energy("ann") / given.energy("snn"))
    assert estimate(ann, x, labels=y, twin=snn).energy("snn") == pytest.approx(given.energy("snn"))
    alone = estimate(snn, x, twin=False)
    assert alone.ann is None and alone.ratio is None
    rate, e = given.mean_firing_rate(), load_energy_model("45nm").energy_pJ
    assert given.bound() == pytest.approx(e["mac"] / e["ac"] / (rate * 4))
    assert "total" in format_table(given)
    # the firing rates come from the SpikeRecorder and agree with the counted spikes per population
    for name, rate in given.snn.firing_rates().items():
        layer = given.snn.per_layer[name]
        assert rate == pytest.approx(layer["spikes"] / layer["neuron_updates"])
    with pytest.raises(Exception, match="one spiking model and one dense model"):
        estimate(snn, x, twin=snn)


def test_cli_energy_writes_the_report_and_figure(pair, tmp_path, capsys):
    from spiking_attn.cli import main

    out = tmp_path / "energy"
    code = main(["energy", "--checkpoint", str(pair[0]), "--twin", str(pair[1]), "--samples", "40",
                 "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "ANN / SNN" in text and "embed.linear" in text
    report = json.loads((out / "energy.json").read_text())
    for key in ("energy_model", "snn", "ann", "ratio", "per_layer", "firing_rates", "accuracy"):
        assert key in report
    for key in ("energy_pJ", "synaptic_ops", "macs", "neuron_updates", "memory_bits"):
        assert key in report["snn"]
    assert set(report["ann"]) >= {"energy_pJ", "macs"}
    assert report["samples"] == 40 and report["accuracy"]["ann"] is not None
    assert report["ratio"] == pytest.approx(report["ann"]["energy_pJ"] / report["snn"]["energy_pJ"])
    assert (out / "energy_breakdown.png").stat().st_size > 1000
    # the memory-aware model prices bits; the estimate differs from the compute-only one
    assert main(["energy", "--checkpoint", str(pair[0]), "--samples", "10", "--energy-model", "45nm-memory",
                 "--out", str(tmp_path / "mem")]) == 0
    memory = json.loads((tmp_path / "mem" / "energy.json").read_text())
    assert memory["snn"]["memory_bits"] > 0 and memory["snn"]["breakdown_pJ"]["memory"] > 0


@pytest.mark.parametrize("args, message", [
    (["--energy-model", "nope"], "unknown energy model 'nope'"),
    (["--samples", "0"], "--samples must be an integer"),
    (["--samples", "-3"], "--samples must be an integer"),
    (["--samples", "100000"], "more than the 360 test samples"),
])
def test_cli_energy_bad_options(pair, tmp_path, capsys, args, message):
    from spiking_attn.cli import main

    out = tmp_path / "bad"
    assert main(["energy", "--checkpoint", str(pair[0]), "--out", str(out), *args]) != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists() or not any(out.iterdir())  # nothing half-written


def test_cli_energy_refuses_a_malformed_energy_model_file(pair, tmp_path, capsys):
    from spiking_attn.cli import main

    bad = tmp_path / "bad.toml"
    bad.write_text('name = "bad"\n[energy_pJ]\nmac = 4.6\nac = -0.9\n')
    out = tmp_path / "out"
    assert main(["energy", "--checkpoint", str(pair[0]), "--energy-model", str(bad), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert "energy_pJ.ac must not be negative" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_cli_energy_refuses_a_file_that_is_not_a_checkpoint_and_a_twin_of_the_same_kind(pair, tmp_path, capsys):
    from spiking_attn.cli import main

    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    assert main(["energy", "--checkpoint", str(junk), "--out", str(tmp_path / "a")]) != 0
    assert "not a checkpoint of this library" in capsys.readouterr().err
    assert main(["energy", "--checkpoint", str(pair[0]), "--twin", str(pair[0]), "--out", str(tmp_path / "b")]) != 0
    assert "give the other kind" in capsys.readouterr().err


# ---------------------------------------------------------------------- energy models
def test_built_in_energy_models_hold_the_published_figures():
    assert set(energy_model_names()) == {"45nm", "45nm-fp16", "45nm-int8", "45nm-memory", "loihi"}
    assert load_energy_model("45nm").energy_pJ["mac"] == 4.6 and load_energy_model("45nm").energy_pJ["ac"] == 0.9
    assert load_energy_model("45nm-fp16").energy_pJ["mac"] == 1.5
    assert load_energy_model("45nm-int8").energy_pJ["ac"] == 0.03
    loihi = load_energy_model("loihi").energy_pJ
    assert (loihi["ac"], loihi["neuron_update"], loihi["neuron_update_active"], loihi["spike"]) == (23.6, 52, 81, 1.7)
    assert load_energy_model("45nm-memory").energy_pJ["memory_bit"] == 3.12
    for name in energy_model_names():
        assert load_energy_model(name).sources  # every figure says where it comes from


def test_user_energy_models_in_json_and_toml(tmp_path):
    (tmp_path / "mine.toml").write_text('name = "mine"\n[energy_pJ]\nmac = 2.0\nac = 0.5\nneuron_update = 1.0\n')
    model = load_energy_model(str(tmp_path / "mine.toml"))
    assert model.energy_pJ["mask"] == 0.5 and model.energy_pJ["neuron_update_active"] == 1.0
    (tmp_path / "mine.json").write_text(json.dumps({"name": "j", "energy_pJ": {"mac": 1, "ac": 0.1}}))
    assert load_energy_model(str(tmp_path / "mine.json")).energy_pJ["mac"] == 1.0


@pytest.mark.parametrize("content, message", [
    ({"name": "x", "energy_pJ": {"ac": 0.9}}, "missing energy_pJ.mac"),
    ({"name": "x"}, "missing table 'energy_pJ'"),
    ({"name": "x", "energy_pJ": {"mac": -1, "ac": 0.9}}, "energy_pJ.mac must not be negative"),
    ({"name": "x", "energy_pJ": {"mac": "4.6", "ac": 0.9}}, "energy_pJ.mac must be a finite number"),
    ({"name": "x", "energy_pJ": {"mac": True, "ac": 0.9}}, "energy_pJ.mac must be a finite number"),
    ({"name": "x", "energy_pJ": {"mac": 4.6, "ac": 0.9, "macs": 1}}, "unknown energy_pJ field"),
    ({"name": "x", "energy_pJ": {"mac": 4.6, "ac": 0.9, "memory_bit": 1}}, "memory_bit needs bits.weight"),
    ({"name": "x", "energy_pJ": {"mac": 4.6, "ac": 0.9}, "bits": {"weight": 0, "state": 8, "activation": 8}},
     "bits.weight must be an integer"),
    ({"energy_pJ": {"mac": 4.6, "ac": 0.9}}, "'name' must be a non-empty string"),
    ({"name": "x", "energy_pJ": {"mac": 4.6, "ac": 0.9}, "extra": 1}, "unknown field"),
])
def test_malformed_energy_model_files_are_refused_naming_the_field(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(content))
    with pytest.raises(EnergyModelError, match=message):
        load_energy_model(str(path))


def test_non_finite_and_unparsable_energy_model_files(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text('{"name": "x", "energy_pJ": {"mac": NaN, "ac": 0.9}}')
    with pytest.raises(EnergyModelError, match="finite number"):
        load_energy_model(str(path))
    path.write_text("{not json")
    with pytest.raises(EnergyModelError, match="not valid JSON"):
        load_energy_model(str(path))
    assert math.isfinite(load_energy_model("45nm").energy({k: 1.0 for k in (
        "macs", "acs", "masks", "adds", "neuron_updates", "spikes", "weight_reads", "state_accesses",
        "activation_accesses")}))
