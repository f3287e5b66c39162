"""The extension points: a mechanism registered from outside the package trains with a cue through
``build_model`` and ``train`` without touching any other file; registries reject bad entries."""
import json
import re
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from spiking_attn import (MECHANISMS, MechanismSpec, ModelConfig, SpikeRecorder, build_model, load_model,
                          register_mechanism, spike_driven_report, train)
from spiking_attn.cli import main
from spiking_attn.errors import DTypeError, SpikingAttnError
from spiking_attn.neuron import population
from spiking_attn.registry import Registry


@dataclass(frozen=True)
class ToyOptions:
    gain: float = 1.0


class SpikingToyGate(nn.Module):
    """Cue spikes drive a gate population; a token's spikes pass where the gate fired (an AND)."""

    def __init__(self, config, options: ToyOptions) -> None:
        super().__init__()
        lif = config.lif_kwargs()
        self.gain = options.gain
        self.pre_lif = population(config.dim, lif)
        self.cue_proj = nn.Linear(config.num_cues, config.dim)
        self.gate_lif = population(config.dim, lif)
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x, cue=None):
        s = self.pre_lif(x)  # [T, B, N, D]
        if cue is None:
            return x + self.out(s)
        gate = self.gate_lif(self.cue_proj(cue) * self.gain)  # [T, B, D]
        return x + self.out(s * gate.unsqueeze(2))


class DenseToyGate(nn.Module):
    def __init__(self, config, options: ToyOptions) -> None:
        super().__init__()
        self.gain = options.gain
        self.pre_act = nn.ReLU()
        self.cue_proj = nn.Linear(config.num_cues, config.dim)
        self.gate_act = nn.Sigmoid()
        self.out = nn.Linear(config.dim, config.dim)

    def forward(self, x, cue=None):
        s = self.pre_act(x)  # [B, N, D]
        if cue is None:
            return x + self.out(s)
        return x + self.out(s * self.gate_act(self.cue_proj(cue) * self.gain).unsqueeze(1))


@pytest.fixture
def toy_gate():
    spec = register_mechanism(MechanismSpec("toy_gate", "a cue-driven channel gate (test only)", SpikingToyGate,
                                            DenseToyGate, options=ToyOptions))
    try:
        yield spec
    finally:
        MECHANISMS.unregister("toy_gate")


def test_toy_mechanism_trains_with_a_cue_through_train(toy_gate, tmp_path):
    metrics = train(task="cue", mechanism="toy_gate", mechanism_options={"gain": 2.0}, epochs=2, dim=16, depth=1,
                    heads=2, timesteps=2, out=tmp_path / "run", progress=False, figures=False)
    assert metrics["mechanism"] == "toy_gate" and metrics["completed"]
    assert "blocks.0.gate_lif" in metrics["firing_rates"]
    config = ModelConfig.from_dict(json.loads((tmp_path / "run" / "metrics.json").read_text())["config"])
    assert config.mechanism_options == {"gain": 2.0} and config.num_cues == 12
    model = load_model(tmp_path / "run" / "checkpoint.pt")  # rebuilt through the registry
    assert isinstance(model.blocks[0], SpikingToyGate) and model.blocks[0].gain == 2.0
    assert model.cue_embed is None  # the mechanism reads the cue itself: no cue token
    x = torch.rand(3, 12, 11)
    with SpikeRecorder(model) as rec, torch.no_grad():
        model(x, cue=torch.tensor([0, 5, 11]))
    gate = rec.spikes["blocks.0.gate_lif"]  # [T, B, D]
    assert gate.shape == (2, 3, 16) and not torch.equal(gate[:, 0], gate[:, 2])  # gate firing differs by cue
    assert spike_driven_report(model, x, cue=torch.tensor([0, 5, 11])).non_binary == ["embed.linear"]
    resumed = train(task="cue", resume=tmp_path / "run", progress=False, figures=False)
    assert resumed["test_accuracy"] == metrics["test_accuracy"]  # nothing left to train: same model


def test_toy_mechanism_dense_twin_and_cli(toy_gate, tmp_path, capsys):
    spiking = build_model(ModelConfig(8, 4, 3, num_cues=5, dim=16, depth=1, heads=2, mechanism="toy_gate"))
    dense = build_model(ModelConfig(8, 4, 3, num_cues=5, dim=16, depth=1, heads=2, mechanism="toy_gate",
                                    model="dense"))
    assert {n: p.shape for n, p in spiking.named_parameters()} == {n: p.shape for n, p in dense.named_parameters()}
    assert main(["train", "--list-mechanisms"]) == 0
    listed = capsys.readouterr().out
    assert "none" in listed and re.search(r"^toy_gate +a cue-driven channel gate", listed, re.M)
    out = tmp_path / "cli"
    assert main(["train", "--task", "cue", "--mechanism", "toy_gate", "--model", "dense", "--epochs", "1",
                 "--dim", "16", "--depth", "1", "--heads", "2", "--no-progress", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["mechanism"] == "toy_gate"


def test_mechanism_registry_rejects_bad_entries(toy_gate):
    with pytest.raises(SpikingAttnError, match="already registered"):
        register_mechanism(toy_gate)
    with pytest.raises(DTypeError, match="MechanismSpec"):
        register_mechanism("toy")
    with pytest.raises(SpikingAttnError, match="lower-case"):
        register_mechanism(MechanismSpec("Bad Name", "", SpikingToyGate, DenseToyGate))
    with pytest.raises(DTypeError, match="dataclass"):
        register_mechanism(MechanismSpec("toy_two", "", SpikingToyGate, DenseToyGate, options=dict))
    with pytest.raises(SpikingAttnError, match="unknown option"):
        ModelConfig(8, 4, 3, mechanism="toy_gate", mechanism_options={"gian": 2.0})
    with pytest.raises(DTypeError, match="plain data"):
        ModelConfig(8, 4, 3, mechanism="toy_gate", mechanism_options={"gain": torch.tensor(2.0)})
    with pytest.raises(SpikingAttnError, match="unknown mechanism"):
        MECHANISMS.get("hypothalamus")
    assert ModelConfig(8, 4, 3, mechanism="toy_gate").mechanism_options == {"gain": 1.0}  # defaults stored


def test_registry_basics():
    reg = Registry("widget")
    reg.register("a", 1)
    reg.register("b", 2)
    assert reg.names() == ("a", "b") and "a" in reg and len(reg) == 2
    reg.register("a", 3, replace=True)
    assert reg.get("a") == 3
    assert reg.unregister("b") == 2 and "b" not in reg
    with pytest.raises(SpikingAttnError, match="unknown widget 'c'; choose one of: a"):
        reg.get("c")
    with pytest.raises(DTypeError):
        reg.register(5, 1)


def test_register_task_checks_its_argument():
    from spiking_attn import register_task

    with pytest.raises(DTypeError, match="TaskSpec"):
        register_task({"name": "x"})
