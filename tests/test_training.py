import json
from pathlib import Path
import pickle

import pytest
import torch

from spiking_attn.checkpoint import load_model, read_checkpoint
from spiking_attn.errors import CheckpointError, SpikingAttnError
from spiking_attn.models import ModelConfig
from spiking_attn.training import train

TINY = dict(task="cue", dim=16, depth=1, heads=2, timesteps=2, progress=False, figures=False)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    metrics = train(**{**TINY, "figures": True}, epochs=2, out=out)
    return out, metrics


def test_outputs_and_metrics(finished_run):
    out, metrics = finished_run
    for name in ("checkpoint.pt", "metrics.json", "training.png", "spikes_attention.png"):
        assert (out / name).stat().st_size > 0
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["model"] == "spiking" and saved["epochs"] == 2 and saved["timesteps"] == 2
    assert 0.0 <= saved["test_accuracy"] <= 1.0
    assert saved["test_accuracy"] == metrics["test_accuracy"]
    assert "blocks.0.attn.q_lif" in saved["firing_rates"]
    assert all(0.0 <= r <= 1.0 for r in saved["firing_rates"].values())
    assert not list(out.glob(".*tmp"))  # no temporary files left behind


def test_checkpoint_is_plain_data(finished_run):
    out, metrics = finished_run
    payload = torch.load(out / "checkpoint.pt", weights_only=True)
    assert payload["config"]["dim"] == 16
    model = load_model(out / "checkpoint.pt")
    data_x = torch.rand(3, model.config.num_tokens, model.config.in_features)
    assert model(data_x).shape == (3, model.config.num_classes)


def test_same_seed_same_weights_and_resume_matches(tmp_path):
    straight = train(**TINY, epochs=3, seed=7, out=tmp_path / "a")
    part = train(**TINY, epochs=3, seed=7, out=tmp_path / "b", stop_after=1)
    assert part["completed"] is False and part["epochs_done"] == 1
    resumed = train(task="cue", resume=tmp_path / "b", progress=False, figures=False)
    assert resumed["completed"] and resumed["history"] == straight["history"]
    a = read_checkpoint(tmp_path / "a" / "checkpoint.pt")["state_dict"]
    b = read_checkpoint(tmp_path / "b" / "checkpoint.pt")["state_dict"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_rejects_conflicting_options(finished_run):
    out, _ = finished_run
    with pytest.raises(SpikingAttnError, match="timesteps"):
        train(task="cue", resume=out, timesteps=8, progress=False)


def test_corrupt_and_truncated_checkpoints(finished_run, tmp_path):
    out, _ = finished_run
    raw = (out / "checkpoint.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(raw[: len(raw) // 2])
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "spiking-attn", "x": print}))
    for name in ("trunc.pt", "junk.pt", "evil.pt", "missing.pt"):
        with pytest.raises(CheckpointError):
            load_model(tmp_path / name)


def test_checkpoint_from_another_config(finished_run):
    out, _ = finished_run
    other = ModelConfig(in_features=12, num_tokens=12, num_classes=4, dim=32, depth=1, heads=2, timesteps=2)
    with pytest.raises(CheckpointError, match="another config"):
        load_model(out / "checkpoint.pt", expected_config=other)
    payload = read_checkpoint(out / "checkpoint.pt")
    payload["config"]["dim"] = 32  # config and weights disagree
    torch.save(payload, out / "mismatch.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(out / "mismatch.pt")


def test_bad_training_arguments(tmp_path):
    with pytest.raises(SpikingAttnError, match="epochs"):
        train(**TINY, epochs=0, out=tmp_path / "e")
    with pytest.raises(SpikingAttnError, match="timesteps"):
        train(**{**TINY, "timesteps": -2}, epochs=1, out=tmp_path / "t")
    with pytest.raises(SpikingAttnError, match="task"):
        train(**{**TINY, "task": "imagenet"}, epochs=1, out=tmp_path / "x")
    assert not any(tmp_path.iterdir())  # failed runs leave no folders behind


def test_dense_twin_trains(tmp_path):
    metrics = train(**{**TINY, "timesteps": 1, "figures": True}, model="dense", epochs=2, out=tmp_path / "d")
    assert metrics["model"] == "dense" and metrics["firing_rates"] == {}
    assert (tmp_path / "d" / "spikes_attention.png").stat().st_size > 0  # the dense attention maps


DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("name", ["v1_spiking_learn_threshold", "v1_dense"])
def test_version_1_checkpoints_load_and_give_the_same_outputs(name):
    # written by the foundation release (checkpoint version 1) with non-default neuron parameters
    model = load_model(DATA / f"{name}.pt")
    io = torch.load(DATA / f"{name}_io.pt", weights_only=True)
    with torch.no_grad():
        # to float32 rounding, not bit for bit: the stored logits come from another CPU, whose BLAS kernels
        # (chosen by the instruction sets they find) may round the last bit of a product differently
        torch.testing.assert_close(model(io["x"]), io["logits"], rtol=1e-5, atol=1e-6)
    config = model.config
    assert config.mechanism == "none" and config.num_cues == 0
    if config.model == "spiking":
        # version 1's learn_threshold also trained the bias: the migration keeps that
        assert config.learn_threshold and config.learn_bias
        assert isinstance(model.head_lif.bias, torch.nn.Parameter)
        assert float(model.head_lif.vth.detach()) == pytest.approx(0.8)
    assert read_checkpoint(DATA / f"{name}.pt")["version"] == 2  # migrated on reading


def test_unknown_checkpoint_version(tmp_path):
    payload = read_checkpoint(DATA / "v1_dense.pt")
    payload["version"] = 7
    torch.save(payload, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="version 7"):
        load_model(tmp_path / "future.pt")


def test_learned_neuron_parameters_stay_in_range_during_training(tmp_path):
    metrics = train(**TINY, epochs=2, lr=0.5, learn_threshold=True, learn_decay=True, out=tmp_path / "r")
    model = load_model(tmp_path / "r" / "checkpoint.pt")
    for name, value in model.state_dict().items():
        if name.endswith((".dv", ".du")):
            assert 0.0 <= float(value.min()) and float(value.max()) <= 1.0, name
        if name.endswith(".vth"):
            assert float(value.min()) > 0.0, name
    assert metrics["completed"]


def test_resume_refuses_a_checkpoint_that_does_not_fit_the_task(finished_run, tmp_path):
    out, _ = finished_run
    payload = read_checkpoint(out / "checkpoint.pt")
    payload["config"].update(in_features=12, num_cues=0)  # the version-1 cue task: cue as a 12th feature
    folder = tmp_path / "old_cue"
    folder.mkdir()
    torch.save(payload, folder / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="does not fit task 'cue'.*in_features=12 .*num_cues=0"):
        train(task="cue", resume=folder, progress=False, figures=False)


def test_foreach_adamw_equals_the_per_tensor_loop_bit_for_bit():
    # training uses AdamW(foreach=True) for speed; the values must be those of the plain loop
    from spiking_attn.models import ModelConfig, build_model

    torch.manual_seed(0)
    nets = [build_model(ModelConfig(in_features=8, num_tokens=8, num_classes=10, dim=16, depth=1, heads=2))
            for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    start = [p.detach().clone() for p in nets[0].parameters()]
    opts = [torch.optim.AdamW(net.parameters(), lr=6e-3, weight_decay=0.01, foreach=foreach)
            for net, foreach in zip(nets, (False, True))]
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        for a, b in zip(nets[0].parameters(), nets[1].parameters()):
            g = torch.randn(a.shape, generator=gen)
            a.grad, b.grad = g.clone(), g.clone()
        for opt in opts:
            opt.step()
    for a, b, a0 in zip(nets[0].parameters(), nets[1].parameters(), start):
        assert torch.equal(a, b) and not torch.equal(a, a0)


def test_too_few_steps_for_batchnorm_statistics_warn(tmp_path, caplog):
    # 2 epochs of one batch each: the running statistics keep 0.9^2 = 81 % of their start, and the
    # evaluation reads them; a user should hear it before the test accuracy sits at chance
    from spiking_attn.training import warn_if_batchnorm_stays_at_its_start

    with caplog.at_level("WARNING", logger="spiking_attn.training"):
        train(**TINY, epochs=2, batch_size=100000, out=tmp_path / "few")
    messages = [r.getMessage() for r in caplog.records if r.name == "spiking_attn.training"]
    assert len(messages) == 1 and "2 optimiser steps leave 81% of the BatchNorm running statistics" in messages[0]
    assert "at least 29 steps" in messages[0]
    net = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    assert warn_if_batchnorm_stays_at_its_start(net, 28) == pytest.approx(0.9 ** 28)
    assert warn_if_batchnorm_stays_at_its_start(net, 29) is None  # 0.9^29 = 0.047
    assert warn_if_batchnorm_stays_at_its_start(torch.nn.Linear(3, 3), 1) is None  # no BatchNorm
    caplog.clear()
    with caplog.at_level("WARNING", logger="spiking_attn.training"):
        train(**TINY, epochs=2, out=tmp_path / "enough")
    assert not [r for r in caplog.records if r.name == "spiking_attn.training"]
