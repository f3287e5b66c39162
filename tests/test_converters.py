"""The converter's building blocks: the QCFS activation, and its exact match with a reset-by-subtraction
integrate-and-fire population at T = L."""
import pytest
import torch

from torch import nn

from spiking_attn.converters.calibration import activation_scales, nearest_rank
from spiking_attn.converters.qcfs import QCFS, floor_ste
from spiking_attn.errors import SpikingAttnError
from spiking_attn.neuron import LIFPopulation


def test_qcfs_levels_clip_and_shift():
    act = QCFS(levels=4, clip=2.0)
    z = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 1.0, 1.9, 2.0, 5.0])
    # lambda * clip(floor(z L / lambda + 1/2) / L, 0, 1) with L = 4, lambda = 2: steps of 0.5, rounded
    expected = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert torch.equal(act(z), expected)
    assert "levels=4" in repr(act)


def test_qcfs_gradients_pass_the_floor_and_reach_the_clip():
    act = QCFS(levels=4, clip=2.0)
    z = torch.tensor([-1.0, 0.3, 1.1, 3.0], requires_grad=True)
    act(z).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # straight through inside [0, lambda], zero outside
    # d/d lambda: above the clip the output is lambda itself (1); inside, q - z / lambda; below, 0
    q = torch.floor(torch.tensor([0.3, 1.1]) * 4 / 2 + 0.5) / 4
    expected = float((q - torch.tensor([0.3, 1.1]) / 2).sum()) + 1.0
    assert float(act.clip.grad) == pytest.approx(expected)
    x = torch.tensor([0.2, 1.7], requires_grad=True)
    floor_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("levels, clip", [(4, 1.0), (8, 2.5), (16, 0.7)])
def test_a_subtractive_if_population_at_t_equal_l_reproduces_qcfs_exactly(levels, clip):
    # the conversion rule theta = lambda, dv = 0, reset by subtraction, v(0) = theta / 2: a constant input
    # held for T = L steps gives spike count * lambda / T equal to the QCFS output, value for value
    g = torch.Generator().manual_seed(levels)
    z = (torch.rand(4000, generator=g, dtype=torch.float64) * 1.6 - 0.3) * clip
    act = QCFS(levels=levels, clip=clip).double()
    lam = float(act.clip.detach())  # the stored lambda (the population stores vth in its own precision)
    pop = LIFPopulation(dv=0.0, vth=lam, reset="subtract", v_init=0.5).double()
    spikes = pop(z.expand(levels, -1).contiguous().unsqueeze(1))  # [T, 1, n]
    rate_out = spikes.sum(0).squeeze(0) * lam / levels
    with torch.no_grad():
        assert torch.allclose(rate_out, act(z), rtol=0, atol=1e-12)
    # the zero reset, the default of the model's populations, does not
    hard = LIFPopulation(dv=0.0, vth=lam).double()(z.expand(levels, -1).contiguous().unsqueeze(1)).sum(0).squeeze(0)
    assert not torch.allclose(hard * lam / levels, act(z).detach(), atol=1e-6)


def test_qcfs_bad_options():
    with pytest.raises(SpikingAttnError, match="levels"):
        QCFS(levels=0)
    with pytest.raises(SpikingAttnError, match="clip must be a positive finite number"):
        QCFS(clip=0.0)
    with pytest.raises(SpikingAttnError, match="clip must be a positive finite number"):
        QCFS(clip=float("nan"))


# ------------------------------------------------------------------- calibration
def test_activation_scales_max_and_nearest_rank_percentile_by_hand():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    x = torch.arange(1, 101, dtype=torch.float32).reshape(100, 1) - 10  # -9 .. 90
    # ReLU(2x): 9 zeros (x <= 0 gives 0: ten values -9..0), then 2, 4, ..., 180
    assert activation_scales(net, x, batch_size=7) == {"1": 180.0}
    outputs = torch.relu(2 * x).reshape(-1)
    assert activation_scales(net, x, mode="percentile", percentile=90)["1"] == 160.0  # rank 90 of 100
    assert nearest_rank(outputs, 90) == 160.0 and nearest_rank(outputs, 100) == 180.0
    assert nearest_rank(outputs, 0.5) == 0.0


def test_activation_scales_cover_every_activation_of_a_dense_twin_with_a_cue():
    from spiking_attn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_features=8, num_tokens=6, num_classes=3, dim=16, heads=2, depth=1,
                                    num_cues=2, mechanism="pulvinar", model="dense"))
    x, cue = torch.rand(10, 6, 8), torch.tensor([0, 1] * 5)
    scales = activation_scales(model, x, cue, batch_size=4)
    expected = {n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.GELU, QCFS))}
    assert set(scales) == expected and "blocks.0.attn.area_act" in scales  # the areas' shared activation
    assert all(v >= 0 for v in scales.values())
    seen = []
    hook = model.blocks[0].attn.area_act.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    with torch.no_grad():
        model.eval()(x, cue)
    hook.remove()
    assert scales["blocks.0.attn.area_act"] == max(float(o.max()) for o in seen)  # pooled over its calls


def test_activation_scales_bad_input():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.rand(4, 3)
    with pytest.raises(SpikingAttnError, match="calibration set is empty"):
        activation_scales(net, x[:0])
    with pytest.raises(SpikingAttnError, match="no module named 'nope'"):
        activation_scales(net, x, modules=["nope"])
    with pytest.raises(SpikingAttnError, match="mode"):
        activation_scales(net, x, mode="mean")
    with pytest.raises(SpikingAttnError, match="percentile must be a number in \\(0, 100\\]"):
        activation_scales(net, x, mode="percentile", percentile=0)
    with pytest.raises(SpikingAttnError, match="no activation module"):
        activation_scales(nn.Sequential(nn.Linear(3, 3)), x)
    with pytest.raises(Exception, match="NaN"):
        activation_scales(net, torch.full((2, 3), float("nan")))
    with pytest.raises(Exception):  # wrong shape: the model itself refuses it
        activation_scales(net, torch.rand(4, 5))


# --- the converter ---------------------------------------------------------------------------------

import dataclasses
import json

from spiking_attn import MECHANISMS, ModelConfig, SpikeRecorder, build_model, load_model, save_checkpoint
from spiking_attn import spike_driven_report
from spiking_attn.mechanisms import mechanism_names
from spiking_attn.converters import (ConversionError, TimeDifferenceModel, convert, finetune_qcfs, spiking_config,
                                     with_timesteps)
from spiking_attn.errors import ShapeError

TINY = dict(in_features=6, num_tokens=5, num_classes=3, dim=16, depth=1, heads=2, num_cues=4, model="dense")


def _dense(mechanism="none", **kw):
    torch.manual_seed(0)
    model = build_model(ModelConfig(**{**TINY, "mechanism": mechanism, **kw}))
    with torch.no_grad():  # trained-looking BatchNorm statistics, so activations are not all centred at zero
        for m in model.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 1.5)
                m.bias.uniform_(0.0, 0.5)
    return model.eval()


def _data(n=24, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(n, TINY["num_tokens"], TINY["in_features"], generator=gen), \
        torch.randint(0, TINY["num_cues"], (n,), generator=gen)


@pytest.mark.parametrize("mechanism", mechanism_names("classifier"))
@pytest.mark.parametrize("attention", ["softmax", "sdsa", "ssa"])
def test_td_summed_outputs_equal_the_dense_outputs_for_every_mechanism(mechanism, attention):
    dense = _dense(mechanism, dense_attention=attention)
    x, cue = _data()
    with torch.no_grad():
        reference = dense(x, cue)
        for steps in (1, 4, 7):
            td = TimeDifferenceModel(dense, steps)
            changes = td.steps(x, cue)
            assert changes.shape == (steps, *reference.shape)
            assert torch.allclose(changes.sum(0), reference, atol=1e-4, rtol=0)
    result = convert(dense, {"x": x, "cue": cue}, "td", [2, 8])
    assert all(r["mean_abs_output_error"] < 1e-4 for r in result.results)


def test_td_changes_are_not_all_at_the_first_step():
    dense = _dense(dense_attention="sdsa")
    x, cue = _data()
    with torch.no_grad():
        changes = TimeDifferenceModel(dense, 4).steps(x, cue)
    assert all(float(changes[t].abs().sum()) > 0 for t in range(4))


@pytest.mark.parametrize("attention", ["sdsa", "ssa"])
def test_rate_conversion_error_falls_with_t_and_the_spikes_are_binary(attention):
    dense = _dense(dense_attention=attention)
    x, cue = _data(48)
    result = convert(dense, {"x": x, "cue": cue}, "rate", [2, 8, 64])
    errors = [r["mean_abs_output_error"] for r in result.results]
    assert errors[2] < errors[1] < errors[0]
    model = result.model
    assert model.config.timesteps == 64 and model.config.reset == "subtract" and model.config.v_init == 0.5
    assert model.config.dv == 0.0 and model.config.attention == attention
    report = spike_driven_report(model, x, cue=cue)
    assert report.non_binary == ["embed.linear"]  # only the encoding layer reads analog input
    with SpikeRecorder(model) as rec:
        model(x, cue)
    assert all(bool(((s == 0) | (s == 1)).all()) for s in rec.spikes.values())


def test_rate_thresholds_are_the_calibrated_scales_and_weights_carry_them():
    dense = _dense(dense_attention="sdsa")
    x, cue = _data(48)
    scales = activation_scales(dense, x, cue, mode="max")
    result = convert(dense, {"x": x, "cue": cue}, "rate", 4, mode="max")
    model = result.model
    lam = scales["blocks.0.mlp.fc1_act"]
    assert float(model.blocks[0].mlp.fc1_lif.vth) == pytest.approx(lam)
    assert result.sources["blocks.0.mlp.fc1_lif"] == "blocks.0.mlp.fc1_act"
    assert torch.allclose(model.blocks[0].mlp.fc2.linear.weight, dense.blocks[0].mlp.fc2.linear.weight * lam)
    # SDSA's population after the token sum reads coincidences worth lambda_k * lambda_v each
    unit = scales["blocks.0.attn.k_act"] * scales["blocks.0.attn.v_act"]
    assert float(model.blocks[0].attn.attn_lif.vth) == pytest.approx(scales["blocks.0.attn.attn_act"] / unit)


def test_qcfs_conversion_takes_the_learned_clips_as_thresholds():
    dense = _dense(dense_attention="sdsa", dense_act="qcfs", qcfs_levels=4)
    with torch.no_grad():
        for i, m in enumerate(m for m in dense.modules() if isinstance(m, QCFS)):
            m.clip.fill_(0.5 + 0.1 * i)
    x, cue = _data()
    result = convert(dense, {"x": x, "cue": cue}, "qcfs", [4, 16])
    assert float(result.model.head_lif.vth) == pytest.approx(float(dense.head_act.clip.detach()))
    assert float(result.model.blocks[0].pre_mlp_lif.vth) == pytest.approx(float(dense.blocks[0].pre_mlp_act.clip.detach()))


def test_converted_checkpoint_round_trips_and_t_is_a_run_time_setting(tmp_path):
    dense = _dense(dense_attention="sdsa")
    x, cue = _data()
    model = convert(dense, {"x": x, "cue": cue}, "rate", [4, 8]).model
    save_checkpoint(tmp_path / "c.pt", model)
    loaded = load_model(tmp_path / "c.pt")
    with torch.no_grad():
        assert torch.equal(loaded(x, cue), model(x, cue))
        shorter = with_timesteps(loaded, 4)
        assert shorter.config.timesteps == 4 and not torch.equal(shorter(x, cue), loaded(x, cue))
    assert load_model(tmp_path / "c.pt", timesteps=4).config.timesteps == 4


BINARY_MECHANISMS = [m for m in mechanism_names("classifier") if m not in ("saliency", "synthetic_thalamus")]  # refused (below)


@pytest.mark.parametrize("mechanism", BINARY_MECHANISMS)
@pytest.mark.parametrize("method", ["rate", "qcfs"])
def test_every_convertible_mechanism_error_falls_with_t_and_spikes_stay_binary(mechanism, method):
    dense = _dense(mechanism, dense_attention="sdsa", dense_act="relu" if method == "rate" else "qcfs")
    x, cue = _data(48)
    result = convert(dense, {"x": x, "cue": cue}, method, [4, 32, 256])
    errors = [r["mean_abs_output_error"] for r in result.results]
    if method == "rate":
        assert errors[2] < errors[1] < errors[0], errors
    else:  # against the quantized twin the error stops falling near T = L (8 here): QCFS's own rounding remains
        assert errors[1] < errors[0] and errors[2] < errors[0], errors
    assert spike_driven_report(result.model, x, cue=cue).non_binary == ["embed.linear"]


def test_a_mechanism_part_idle_without_a_cue_needs_no_scale():
    dense = _dense("thalamic", dense_attention="sdsa", num_cues=0)  # no cue: the controller never runs
    x, _ = _data(24)
    with pytest.raises(SpikingAttnError, match="did not run"):
        activation_scales(dense, x)
    assert "blocks.0.attn.controller_act" not in activation_scales(dense, x, skip_idle=True)
    result = convert(dense, x, "rate", [4, 32])
    assert result.results[1]["mean_abs_output_error"] < result.results[0]["mean_abs_output_error"]


def test_mechanism_rules_fold_the_gate_and_route_nonlinearities():
    dense = _dense("thalamic", dense_attention="sdsa")
    x, cue = _data(48)
    model = convert(dense, {"x": x, "cue": cue}, "rate", 4).model
    gate, dense_gate = model.blocks[0].attn.gate, dense.blocks[0].attn.gate
    assert torch.allclose(gate.bias, (dense_gate.bias - dense_gate.vth) / 4 + 0.5) and torch.all(gate.vth == 1.0)
    dense = _dense("pulvinar", dense_attention="sdsa")
    model = convert(dense, {"x": x, "cue": cue}, "rate", 4).model
    sync = model.blocks[0].attn
    # the route drive is centred over source areas: each row of A routes sums to zero before the 1/A bias
    assert torch.allclose(sync.pulvinar.weight.reshape(4, 4, -1).sum(1), torch.zeros(4, 16), atol=1e-6)


def test_a_refused_module_type_is_named_with_its_reason():
    from spiking_attn.converters.rules import REFUSALS, refuse
    from spiking_attn.mechanisms.pulvinar import SpikingPulvinarSync

    dense = _dense("pulvinar", dense_attention="sdsa")
    x, cue = _data()
    refuse(SpikingPulvinarSync, "a reason given by the test")
    try:
        with pytest.raises(ConversionError, match=r"no rate conversion rule for: blocks\.0\.attn \(SpikingPulvinarSync: "
                                                  r"a reason given by the test\)") as info:
            convert(dense, {"x": x, "cue": cue}, "rate", 4)
        assert "--method td" in str(info.value)
    finally:
        del REFUSALS[SpikingPulvinarSync]


@pytest.mark.parametrize("method", ["rate", "qcfs"])
@pytest.mark.parametrize("mechanism, reason", [("saliency", r"SpikingSaliency: the softmax over locations"),
                                               ("synthetic_thalamus", r"SpikingSyntheticThalamus: the top-K selection")])
def test_refused_mechanisms_name_their_reason_and_convert_by_td(method, mechanism, reason):
    dense = _dense(mechanism, dense_attention="sdsa", dense_act="relu" if method == "rate" else "qcfs")
    x, cue = _data()
    with pytest.raises(ConversionError, match=rf"no {method} conversion rule for: blocks\.0\.attn \({reason}"):
        convert(dense, {"x": x, "cue": cue}, method, 4)
    result = convert(dense, {"x": x, "cue": cue}, "td", [2, 4])
    assert all(r["mean_abs_output_error"] < 1e-4 for r in result.results)


def test_a_converted_basal_forebrain_subtracts_its_shift_from_the_input_current():
    dense = _dense("basal_forebrain", dense_attention="sdsa")
    x, cue = _data(48)
    model = convert(dense, {"x": x, "cue": cue}, "rate", 4).model
    assert model.config.mechanism_options["shift"] == "current" and model.blocks[0].attn.shift == "current"
    # the trained form keeps its threshold shift, and a threshold-shift model is refused by the rule
    assert build_model(dataclasses.replace(dense.config, model="spiking")).blocks[0].attn.shift == "threshold"
    integrated = convert(_dense("integrated", dense_attention="sdsa"), {"x": x, "cue": cue}, "rate", 4).model
    assert integrated.blocks[0].basal_forebrain.shift == "current"


def test_converter_bad_input():
    dense = _dense(dense_attention="sdsa")
    x, cue = _data()
    with pytest.raises(ShapeError, match="calibration_data"):
        convert(dense, x[:, :, :3], "rate", 4)
    with pytest.raises(ShapeError, match="tokens"):
        convert(dense, x[:, :2], "rate", 4)
    with pytest.raises(SpikingAttnError, match="calibration set is empty"):
        convert(dense, x[:0], "rate", 4)
    with pytest.raises(SpikingAttnError, match="calibration_data must be a tensor"):
        convert(dense, [1, 2], "rate", 4)
    with pytest.raises(SpikingAttnError, match="method"):
        convert(dense, x, "ratecode", 4)
    with pytest.raises(SpikingAttnError, match="timesteps"):
        convert(dense, x, "rate", [4, 0])
    with pytest.raises(SpikingAttnError, match="timesteps"):
        convert(dense, x, "rate", [])
    spiking = build_model(dataclasses.replace(dense.config, model="spiking"))
    with pytest.raises(ConversionError, match="already spiking"):
        convert(spiking, x, "rate", 4)
    with pytest.raises(ConversionError, match="DenseClassifier"):
        convert("not a model", x, "rate", 4)
    with pytest.raises(SpikingAttnError, match="no cue"):
        convert(nn.Sequential(nn.Linear(6, 3)), x, "rate", 4, cue=cue)
    with pytest.raises(ConversionError, match="softmax attention.*--method td"):
        convert(_dense(), x, "rate", 4)
    with pytest.raises(ConversionError, match="gelu"):
        convert(_dense(dense_attention="sdsa", dense_act="gelu"), x, "rate", 4)
    with pytest.raises(ConversionError, match="no learned clip"):
        convert(dense, x, "qcfs", 4)
    with pytest.raises(ConversionError, match="spiking model"):
        spiking_config(spiking.config, "rate", 4)


def test_finetune_qcfs_makes_a_twin_that_converts():
    from spiking_attn.data import load_digits_tokens

    data = load_digits_tokens()
    torch.manual_seed(0)
    config = ModelConfig(in_features=data.in_features, num_tokens=data.num_tokens, num_classes=10, model="dense",
                         dim=16, depth=1, heads=2, dense_attention="sdsa")
    dense = build_model(config).eval()
    twin = finetune_qcfs(dense, data, levels=2, epochs=1, calibration=64)
    assert twin.config.dense_act == "qcfs" and twin.config.qcfs_levels == 2
    assert all(m.levels == 2 for m in twin.modules() if isinstance(m, QCFS))
    assert 0.0 <= twin.finetune_accuracy <= 1.0
    result = convert(twin, data.x_train[:32], "qcfs", [2, 4], evaluation={"x": data.x_test[:40], "y": data.y_test[:40]})
    assert [r["timesteps"] for r in result.results] == [2, 4] and result.dense_accuracy is not None
    with pytest.raises(SpikingAttnError, match="ReLU"):
        finetune_qcfs(twin, data)
    with pytest.raises(SpikingAttnError, match="TokenDataset"):
        finetune_qcfs(dense, data.x_train)
    with pytest.raises(SpikingAttnError, match="levels"):
        finetune_qcfs(dense, data, levels=0)
    with pytest.raises(SpikingAttnError, match="epochs"):
        finetune_qcfs(dense, data, epochs=0)
    with pytest.raises(SpikingAttnError, match="dense twin"):
        finetune_qcfs(build_model(dataclasses.replace(config, model="spiking")), data)


@pytest.mark.parametrize("clip_init", [4.0, None])
def test_finetune_qcfs_leaves_the_relus_the_twin_keeps(clip_init):
    """A thalamic controller's ReLU is not one of the twin's activations: it stays a ReLU, without a clip,
    whether the clips start at one value or at the calibrated scales."""
    from spiking_attn.data import load_task

    data = load_task("cue")
    torch.manual_seed(0)
    dense = build_model(ModelConfig(in_features=data.in_features, num_tokens=data.num_tokens,
                                    num_classes=data.num_classes, num_cues=data.num_cues, model="dense", dim=16,
                                    depth=1, heads=2, mechanism="thalamic", dense_attention="sdsa")).eval()
    twin = finetune_qcfs(dense, data, levels=2, epochs=1, calibration=32, clip_init=clip_init)
    assert isinstance(twin.blocks[0].attn.controller_act, nn.ReLU)
    assert isinstance(twin.blocks[0].attn.attn.q_act, QCFS)


# --- the command line --------------------------------------------------------------------------------

from spiking_attn.cli import main  # noqa: E402

SMALL_DIGITS = ["--dim", "16", "--depth", "1", "--heads", "2", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory):
    """Two tiny digits runs: a conversion-friendly dense twin and a spiking model."""
    root = tmp_path_factory.mktemp("convert")
    assert main(["train", "--model", "dense", "--dense-attention", "sdsa", *SMALL_DIGITS, "--out", str(root / "dense")]) == 0
    assert main(["train", *SMALL_DIGITS, "--timesteps", "2", "--out", str(root / "spiking")]) == 0
    return root


def _one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("method", ["rate", "td"])
def test_convert_cli_writes_the_checkpoint_the_json_and_the_figure(dense_runs, tmp_path, capsys, method):
    out = tmp_path / method
    argv = ["convert", "--checkpoint", str(dense_runs / "dense" / "checkpoint.pt"), "--method", method,
            "--timesteps", "2,8", "--calibration", "64", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"{method} conversion on digits" in printed
    info = json.loads((out / "conversion.json").read_text())
    assert info["method"] == method and 0 <= info["dense_accuracy"] <= 1
    assert [r["timesteps"] for r in info["results"]] == [2, 8]
    assert set(info["results"][0]) == {"timesteps", "accuracy", "mean_abs_output_error", "firing_rate"}
    assert (out / "accuracy_vs_T.png").stat().st_size > 1000
    model = load_model(out / "checkpoint.pt")
    if method == "td":
        assert model.config.model == "dense" and all(r["mean_abs_output_error"] < 1e-4 for r in info["results"])
    else:
        assert model.config.model == "spiking" and model.config.reset == "subtract"
        assert model.config.timesteps == info["saved_timesteps"]
        # the converted checkpoint is an ordinary spiking checkpoint: the energy command reads it
        assert main(["energy", "--checkpoint", str(out / "checkpoint.pt"), "--samples", "8",
                     "--out", str(tmp_path / "energy")]) == 0
        # T is a run-time setting: the same checkpoint costed at another T
        assert main(["energy", "--checkpoint", str(out / "checkpoint.pt"), "--samples", "8", "--timesteps", "3",
                     "--out", str(tmp_path / "energy3")]) == 0
        assert json.loads((tmp_path / "energy3" / "energy.json").read_text())["timesteps"] == 3
        capsys.readouterr()
        assert main(["energy", "--checkpoint", str(dense_runs / "dense" / "checkpoint.pt"), "--samples", "8",
                     "--timesteps", "3", "--out", str(tmp_path / "energy4")]) == 1
        assert "applies to a spiking checkpoint" in _one_line(capsys)
        for command in ("energy", "deploy"):
            assert main([command, "--checkpoint", str(out / "checkpoint.pt"), "--samples", "2", "--timesteps", "0",
                         "--out", str(tmp_path / f"{command}0")]) == 1
            assert "timesteps" in _one_line(capsys) and not (tmp_path / f"{command}0").exists()
        # ...and the Lava backend runs it spike for spike (reset by subtraction, membranes from half threshold)
        assert main(["deploy", "--checkpoint", str(out / "checkpoint.pt"), "--samples", "2", "--timesteps", "4",
                     "--out", str(tmp_path / "deploy")]) == 0
        deployed = json.loads((tmp_path / "deploy" / "deploy.json").read_text())
        assert deployed["spike_agreement"] == 1.0
    assert main(argv) == 1  # the folder now holds a conversion
    assert "--overwrite" in _one_line(capsys)


def test_convert_cli_bad_input(dense_runs, tmp_path, capsys):
    dense = str(dense_runs / "dense" / "checkpoint.pt")
    cases = [
        (["--checkpoint", str(dense_runs / "spiking" / "checkpoint.pt")], 1, "holds a spiking model"),
        (["--checkpoint", dense, "--calibration", "0"], 2, "calibration set cannot be empty"),
        (["--checkpoint", dense, "--calibration", "999999"], 1, "more than the"),
        (["--checkpoint", dense, "--timesteps", "4,x"], 2, "comma-separated integers"),
        (["--checkpoint", dense, "--timesteps", "0"], 2, "positive"),
        (["--checkpoint", dense, "--method", "magic"], 2, "invalid choice"),
        (["--checkpoint", str(tmp_path / "missing.pt")], 2, "is not a file"),
    ]
    for extra, code, text in cases:
        out = tmp_path / "o"
        assert main(["convert", *extra, "--out", str(out), "--no-progress"]) == code, extra
        assert text in _one_line(capsys)
        assert not out.exists()
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00not a checkpoint")
    assert main(["convert", "--checkpoint", str(junk), "--out", str(tmp_path / "o")]) == 1
    assert "not a checkpoint" in _one_line(capsys) and not (tmp_path / "o").exists()


def test_route_input_shift_is_subtracted_after_the_gain():
    from spiking_attn.attention import SpikingSelfAttention

    torch.manual_seed(0)
    attn = SpikingSelfAttention(8, 2, "sdsa").eval()
    x = (torch.rand(3, 2, 4, 8) > 0.5).float()
    gain, shift = 1 + torch.rand(3, 2, 1, 8), torch.rand(3, 2, 1, 8)
    with SpikeRecorder(attn, names=["q_lif"]) as rec:
        attn.route(x, gain=gain, input_shift=shift)
    expected = attn.q_lif(attn.q(x) * gain - shift)
    assert torch.equal(rec.spikes["q_lif"], expected)
    with SpikeRecorder(attn, names=["q_lif"]) as rec:
        attn.route(x, gain=gain, threshold_shift=shift)
    assert not torch.equal(rec.spikes["q_lif"], expected)  # a threshold shift is another thing


def test_convert_cli_fine_tunes_a_relu_twin_for_qcfs(dense_runs, tmp_path, capsys):
    from spiking_attn.training import evaluate
    from spiking_attn.data import load_task

    source = dense_runs / "dense" / "checkpoint.pt"
    out = tmp_path / "qcfs"
    assert main(["convert", "--checkpoint", str(source), "--method", "qcfs", "--finetune-epochs", "1",
                 "--qcfs-levels", "2", "--timesteps", "2,4", "--calibration", "64", "--out", str(out),
                 "--no-progress"]) == 0
    assert "QCFS fine-tuning (L=2, 1 epochs)" in capsys.readouterr().out
    info = json.loads((out / "conversion.json").read_text())
    data = load_task("digits")
    assert info["finetuned"]["source_accuracy"] == evaluate(load_model(source), data.x_test, data.y_test)["accuracy"]
    twin = load_model(out / "dense_qcfs.pt")
    assert twin.config.dense_act == "qcfs" and twin.config.qcfs_levels == 2
    assert info["dense_accuracy"] == info["finetuned"]["accuracy"]
