"""The spiking encoder-decoder (mechanism seq2seq) and its task, translate."""
import subprocess
import sys

import pytest
import torch

from spiking_attn import MECHANISMS, ModelConfig, build_model, load_model, spike_driven_report, train
from spiking_attn.data import PAD, make_translate_task
from spiking_attn.errors import DTypeError, ShapeError, SpikingAttnError
from spiking_attn.mechanisms.seq2seq import cross_attention_map, generate_text, sinusoidal_positions

CONFIG = dict(in_features=11, num_tokens=6, num_classes=11, dim=16, heads=2, depth=1, timesteps=3,
              mechanism="seq2seq", attention="ssa")


def _models(**extra):
    torch.manual_seed(0)
    spiking = build_model(ModelConfig(**{**CONFIG, **extra}))
    torch.manual_seed(0)
    dense = build_model(ModelConfig(**{**CONFIG, "model": "dense", **extra}))
    return spiking, dense


def _batch(n=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    source = torch.randint(11, (n, 6), generator=g)
    return torch.nn.functional.one_hot(source, 11).float(), torch.randint(11, (n, 6), generator=g)


def test_translate_task_reverses_and_pads():
    data = make_translate_task(num_train=200, num_test=20, seed=1)
    assert data.x_train.shape == (200, 8, 11) and data.y_train.shape == (200, 8) and data.sequence_labels
    source = data.x_train.argmax(-1)
    for s, t in zip(source, data.y_train):
        n = int((s != PAD).sum())
        assert torch.equal(t[:n], s[:n].flip(0)) and bool((t[n:] == PAD).all()) and bool((s[n:] == PAD).all())
    assert bool((data.x_test.argmax(-1) != PAD).all())  # test strings are all of length 8
    assert set(data.context("train", slice(0, 3))) == {"target"} and data.context("test") == {}
    copy, sort = make_translate_task("copy", num_train=20, num_test=2), make_translate_task("sort", num_train=20, num_test=2)
    assert torch.equal(copy.y_train, copy.x_train.argmax(-1))
    assert torch.equal(sort.y_train, sort.x_train.argmax(-1).sort(1).values)
    with pytest.raises(SpikingAttnError, match="kind"):
        make_translate_task("rotate")


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_twins_share_parameter_names_and_gradients_reach_every_parameter(positions):
    spiking, dense = _models(mechanism_options={"positions": positions})
    assert {n: p.shape for n, p in spiking.named_parameters()} == {n: p.shape for n, p in dense.named_parameters()}
    x, y = _batch(8)
    for model in (spiking, dense):
        logits = model(x, target=y)
        assert logits.shape == (8, 6, 11)
        logits.pow(2).sum().backward()
        assert [n for n, p in model.named_parameters() if p.grad is None] == []
    assert ("pos.table" in dict(spiking.named_parameters())) == (positions == "learned")


def test_sinusoidal_positions_are_the_papers():
    table = sinusoidal_positions(5, 6)
    assert float(table[0, 0]) == 0.0 and float(table[0, 1]) == 1.0
    assert float(table[3, 2]) == pytest.approx(torch.sin(torch.tensor(3 / 10000 ** (2 / 6))).item(), abs=1e-6)


def test_spiking_version_is_spike_driven_end_to_end():
    """One-hot symbols are spikes already: every weight layer, the embeddings included, reads binary input."""
    spiking, _ = _models()
    x, y = _batch()
    assert spike_driven_report(spiking, x, target=y).non_binary == []


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_a_future_position_never_influences_an_earlier_one(kind):
    spiking, dense = _models(vth=0.3)  # a low threshold: an untrained model's populations fire
    model = (spiking if kind == "spiking" else dense).eval()
    x, y = _batch(6)
    with torch.no_grad():
        base = model(x, target=y)
        for cut in (0, 2, 4):  # the decoder input at i is target[i - 1]: changing target[cut:] reaches i > cut
            changed = y.clone()
            changed[:, cut:] = (changed[:, cut:] + 1 + torch.arange(6 - cut)) % 11  # the future of the targets
            other = model(x, target=changed)
            # positions up to `cut` read none of the changed targets
            assert torch.equal(other[:, :cut + 1], base[:, :cut + 1])
            assert not torch.equal(other, base)


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_greedy_decoding_is_teacher_forcing_on_its_own_output(kind):
    spiking, dense = _models(vth=0.3)
    model = (spiking if kind == "spiking" else dense).eval()
    x, _ = _batch(4)
    with torch.no_grad():
        greedy = model(x)
        chosen = greedy.argmax(-1)
        assert torch.allclose(model(x, target=chosen), greedy, atol=1e-5)
        assert torch.equal(model.generate(x), chosen)
        # the same again, and the same in a batch of another size: no state carries over
        assert torch.equal(model(x), greedy)
        assert torch.allclose(model(x[:2]), greedy[:2], atol=1e-5)


def test_cross_attention_map_covers_the_source_positions():
    spiking, dense = _models()
    x, _ = _batch(3)
    for model in (spiking.eval(), dense.eval()):
        m = cross_attention_map(model, x)
        assert m.shape == (3, 6, 6) and bool((m >= 0).all())
    torch.testing.assert_close(cross_attention_map(dense, x).sum(-1), torch.ones(3, 6))  # softmax rows


def test_bad_input_is_refused_by_name():
    spiking, _ = _models()
    x, y = _batch(3)
    with pytest.raises(SpikingAttnError, match="takes no cue"):
        spiking(x, cue=torch.tensor([0, 1, 2]))
    with pytest.raises(ShapeError, match="x has 5 positions but the model has 6"):
        spiking(x[:, :5])
    with pytest.raises(ShapeError, match=r"target must have shape \[B, L\] = \[3, 6\]"):
        spiking(x, target=y[:, :4])
    with pytest.raises(DTypeError, match="target must be an integer tensor"):
        spiking(x, target=y.float())
    with pytest.raises(SpikingAttnError, match=r"target symbols must lie in \[0, 11\)"):
        spiking(x, target=y + 20)
    with pytest.raises(SpikingAttnError, match="positions"):
        ModelConfig(**CONFIG, mechanism_options={"positions": "rotary"})
    with pytest.raises(SpikingAttnError, match="not a block of the token classifier"):
        MECHANISMS.get("seq2seq").spiking_block(None, None)


def test_a_mechanism_and_a_task_of_different_scaffolds_are_refused(tmp_path):
    with pytest.raises(SpikingAttnError, match="builds a sequence model, but task 'digits' labels each sample with a class"):
        train(task="digits", mechanism="seq2seq", out=tmp_path / "a", progress=False, figures=False)
    with pytest.raises(SpikingAttnError, match="builds a classifier model, but task 'translate' labels each sample with a sequence"):
        train(task="translate", mechanism="thalamic", out=tmp_path / "b", progress=False, figures=False)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_train_resume_and_generate_from_the_command_line(tmp_path):
    kw = dict(task="translate", model="dense", dim=16, depth=1, heads=2, progress=False, figures=False)
    part = train(**kw, epochs=2, stop_after=1, out=tmp_path / "run")
    assert part["completed"] is False and part["mechanism"] == "seq2seq"
    done = train(task="translate", resume=tmp_path / "run", progress=False, figures=False)
    straight = train(**kw, epochs=2, out=tmp_path / "straight")
    assert done["history"] == straight["history"]
    checkpoint = tmp_path / "run" / "checkpoint.pt"
    model = load_model(checkpoint)
    expected = generate_text(checkpoint, "3 1 4 1 5")
    source = torch.tensor([3, 1, 4, 1, 5, PAD, PAD, PAD])
    decoded = model.generate(torch.nn.functional.one_hot(source, 11).float()[None])[0].tolist()
    assert expected.split() == [str(v) for v in decoded[:decoded.index(PAD)] if PAD in decoded] or \
        expected.split() == [str(v) for v in decoded]
    proc = subprocess.run([sys.executable, "-m", "spiking_attn.cli", "generate", "--checkpoint", str(checkpoint),
                           "--input", "3 1 4 1 5"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == expected
    for bad, message in (("3 x 4", "must hold integers"), ("3 10", r"must lie in \[0, 9\]"),
                         ("1 2 3 4 5 6 7 8 9", "reads at most 8"), ("", "is empty")):
        proc = subprocess.run([sys.executable, "-m", "spiking_attn.cli", "generate", "--checkpoint", str(checkpoint),
                               "--input", bad], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1 and "Traceback" not in proc.stderr
        assert pytest.importorskip("re").search(message, proc.stderr), proc.stderr
    classifier = train(task="digits", model="dense", dim=16, depth=1, heads=2, epochs=1, progress=False, figures=False,
                       out=tmp_path / "digits")
    assert classifier["completed"]
    with pytest.raises(SpikingAttnError, match="generate needs an encoder-decoder"):
        generate_text(tmp_path / "digits" / "checkpoint.pt", "1 2")


def test_energy_counts_both_twins_and_the_converter_refuses_with_the_reason():
    from spiking_attn.converters import ConversionError, convert
    from spiking_attn.hardware.energy import estimate

    spiking, dense = _models(vth=0.3)
    x, y = _batch(4)
    dense.load_state_dict({k: v for k, v in spiking.state_dict().items() if k in dense.state_dict()})
    report = estimate(spiking.eval(), x, twin=dense.eval(), labels=y)
    assert report.snn.totals()["acs"] > 0 and report.ann.totals()["macs"] > 0
    assert report.snn.totals()["macs"] == 0  # one-hot symbols are spikes: no analog layer anywhere
    assert "decoder_blocks.0" in report.snn.per_layer and "decoder_blocks.0.cross_attn" in report.snn.per_layer
    assert 0.0 <= report.accuracy["snn"] <= 1.0
    with pytest.raises(ConversionError, match="'seq2seq' \\(sequence scaffold\\) has no conversion yet: .*greedy decoding"):
        convert(dense, x, "td", 4)
