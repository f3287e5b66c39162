import json

import pytest
import torch

from spiking_attn import ModelConfig, build_model, train
from spiking_attn import auxiliary
from spiking_attn.cli import main
from spiking_attn.errors import SpikingAttnError
from spiking_attn.regularizers import (REGULARIZERS, RegularizerInputs, arousal_prior, head_diversity,
                                       population_spikes, rate_target, regularization)

SMALL = dict(in_features=6, num_tokens=5, num_classes=3, dim=16, depth=1, heads=2, timesteps=3, num_cues=4)


def _run(mechanism, kind="spiking"):
    model = build_model(ModelConfig(**SMALL, mechanism=mechanism, model=kind))
    x, cue = torch.rand(4, 5, 6), torch.randint(4, (4,))
    with auxiliary.collect() as reports, population_spikes(model) as spikes:
        logits = model(x, cue=cue)
    return model, logits, RegularizerInputs(reports, spikes, 0.1)


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_every_regulariser_acts_on_the_integrated_block_and_has_gradients(kind):
    model, logits, inputs = _run("integrated", kind)
    total, values = regularization({name: 1.0 for name in REGULARIZERS.names()}, inputs)
    assert set(values) == set(REGULARIZERS.names())
    for name, value in values.items():
        if kind == "dense" and name == "rate_target":
            assert float(value) == 0.0  # a dense twin has no populations
        else:
            assert float(value.detach()) > 0.0, name
    (total + logits.sum() * 0).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert grads["blocks.0.basal_forebrain.arousal.weight"] is not None  # arousal_prior reaches the estimator
    assert grads["blocks.0.predictive.precision"] is not None  # free_energy reaches the precisions


def test_regularisers_with_nothing_to_act_on_are_zero():
    _, _, inputs = _run("none")
    assert float(arousal_prior(inputs)) == 0.0
    assert float(REGULARIZERS.get("free_energy").compute(inputs)) == 0.0


def test_known_values():
    uniform = RegularizerInputs({"arousal": [torch.full((5, 3), 1 / 3)]}, [], 0.1)
    assert float(arousal_prior(uniform)) == pytest.approx(0.0, abs=1e-6)
    peaked = RegularizerInputs({"arousal": [torch.tensor([[1.0, 0.0, 0.0]] * 4)]}, [], 0.1)
    assert float(arousal_prior(peaked)) == pytest.approx(torch.log(torch.tensor(3.0)).item(), rel=1e-4)
    spikes = (torch.arange(100) < 10).float().reshape(4, 25)  # rate exactly 0.1
    assert float(rate_target(RegularizerInputs({}, [spikes], 0.1))) == pytest.approx(0.0)
    assert float(rate_target(RegularizerInputs({}, [spikes], 0.3))) == pytest.approx(0.04)
    same = torch.ones(2, 5, 3, 4)  # [B, N, H, Dh]: three identical heads
    assert float(head_diversity(RegularizerInputs({"heads": [same]}, [], 0.1))) == pytest.approx(1.0)
    distinct = torch.zeros(2, 5, 2, 4)
    distinct[..., 0, :2], distinct[..., 1, 2:] = 1.0, 1.0  # orthogonal heads
    assert float(head_diversity(RegularizerInputs({"heads": [distinct]}, [], 0.1))) == pytest.approx(0.0)


def test_training_logs_every_regulariser_per_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--task", "cue", "--mechanism", "integrated", "--dim", "16", "--depth", "1", "--heads",
                 "2", "-T", "2", "--epochs", "2", "--no-progress", "--out", str(out), "--reg", "arousal_prior=0.1",
                 "--reg", "free_energy=0.01", "--reg", "rate_target=1", "--reg", "head_diversity=0.1",
                 "--target-rate", "0.2"]) == 0
    history = json.loads((out / "metrics.json").read_text())["history"]
    for name in REGULARIZERS.names():
        assert len(history[f"reg_{name}"]) == 2 and all(v >= 0 for v in history[f"reg_{name}"])
    resumed = train(task="cue", resume=out, progress=False, figures=False)
    assert resumed["history"] == json.loads((out / "metrics.json").read_text())["history"]


@pytest.mark.parametrize("reg, text", [
    ("bogus=1", "unknown regularizer 'bogus'"),
    ("rate_target=-1", "weight of regularizer 'rate_target' must be a finite number >= 0"),
    ("rate_target", "--reg takes NAME=WEIGHT"),
    ("rate_target=lots", "the weight must be a number"),
])
def test_bad_regulariser_options(tmp_path, capsys, reg, text):
    code = main(["train", "--task", "cue", "--epochs", "1", "--no-progress", "--out", str(tmp_path / "r"), "--reg", reg])
    assert code in (1, 2)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and text in err[0]
    assert not (tmp_path / "r").exists()
    with pytest.raises(SpikingAttnError):
        train(task="cue", epochs=1, out=tmp_path / "r", regularizers={"rate_target": 1.0}, target_rate=2.0)
