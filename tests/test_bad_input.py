"""Every bad input gets one clear error: the command line, the Python API and checkpoints.

Property-based: hypothesis generates bad values for every option and parameter. A command must exit
non-zero with exactly one line on stderr, no traceback, and nothing left on disk; an API call must
raise this library's error type (``SpikingAttnError``, a ``ValueError``; ``DTypeError`` is also a
``TypeError``). Valid random configs must run a forward pass. Interrupts end with status 130.
"""
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from spiking_attn import (LIFPopulation, ModelConfig, SpikeRecorder, build_model, evaluate, lif_sequence,
                          save_checkpoint, spike_driven_report, train)
from spiking_attn.checkpoint import load_model, read_checkpoint
from spiking_attn.cli import main
from spiking_attn.errors import CheckpointError, ResourceError, SpikingAttnError, check_tensor
from spiking_attn.mechanisms import MECHANISMS

BASE = ["--task", "cue", "--dim", "16", "--depth", "1", "--heads", "2", "--timesteps", "2", "--epochs", "1",
        "--no-progress"]
SCRIPT = Path(sys.executable).with_name("spiking-attn")

not_an_int = st.sampled_from(["x", "1.5", "", "1e3", "--", "nan", "ten"])
not_positive = st.one_of(st.integers(max_value=0).map(str), not_an_int)
absurd = st.integers(min_value=10**7, max_value=10**12).map(str)


def unknown(choices):
    return st.text(min_size=1, max_size=12).filter(lambda s: s not in choices)


CLI_BAD = {
    "--epochs": st.one_of(not_positive, st.integers(min_value=10**6 + 1).map(str)),
    "--timesteps": st.one_of(not_positive, absurd),
    "--dim": st.one_of(not_positive, absurd),
    "--depth": st.one_of(not_positive, absurd),
    "--heads": not_positive,
    "--batch-size": st.one_of(not_positive, absurd),
    "--stop-after": not_positive,
    "--lr": st.one_of(st.floats(max_value=0.0, allow_nan=False).map(repr), st.floats(min_value=10.5).map(repr),
                      st.sampled_from(["inf", "-inf", "nan", "fast"])),
    "--seed": st.one_of(st.integers(max_value=-1).map(str), st.integers(min_value=2**32).map(str), not_an_int),
    "--task": unknown(("digits", "cue")),
    "--model": unknown(("spiking", "dense")),
    "--mechanism": unknown(tuple(MECHANISMS.names())),
    "--attention": unknown(("ssa", "sdsa")),
    "--engine": unknown(("native", "spikingjelly")),
    "--encoder": unknown(("direct", "rate", "latency")),
    "--surrogate": unknown(("atan", "sigmoid", "fast_sigmoid")),
    "--out": st.sampled_from(["", " ", "\x00bad"]),
}


def _assert_one_line(captured) -> str:
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0] and lines[0].startswith("spiking-attn: ")
    return lines[0]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(option=st.sampled_from(sorted(CLI_BAD)), data=st.data())
def test_every_bad_option_is_one_line_and_leaves_nothing(capsys, option, data):
    value = data.draw(CLI_BAD[option])
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "a" / "run"
        argv = ["train", *BASE, "--out", str(out), option, value]
        code = main(argv)
        line = _assert_one_line(capsys.readouterr())
        assert code in (1, 2), (argv, code, line)
        assert not (Path(tmp) / "a").exists()
        assert list(Path(tmp).iterdir()) == []


@pytest.mark.parametrize("resume", ["missing", "file", "junk", "json", "pickle"])
def test_bad_resume_folders(capsys, tmp_path, resume):
    folder = tmp_path / "run"
    if resume != "missing":
        folder.mkdir()
    if resume == "file":
        folder.rmdir()
        folder.write_text("not a folder")
    elif resume == "junk":
        (folder / "checkpoint.pt").write_bytes(b"\x00garbage")
    elif resume == "json":
        (folder / "checkpoint.pt").write_text(json.dumps({"format": "spiking-attn"}))
    elif resume == "pickle":
        torch.save({"format": "spiking-attn", "payload": SpikeRecorder}, folder / "checkpoint.pt")
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(["train", "--resume", str(folder), "--no-progress"]) == 1
    line = _assert_one_line(capsys.readouterr())
    assert "weights_only" not in line  # never advice to unpickle an untrusted file
    if resume in ("json", "pickle"):
        assert "is not a checkpoint of this library" in line
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


BAD_CONFIG = {
    "in_features": st.one_of(st.integers(max_value=0), st.floats(), st.just("8"), st.none(), st.booleans()),
    "dim": st.one_of(st.integers(max_value=0), st.just(15), st.floats(), st.none()),
    "depth": st.one_of(st.integers(max_value=0), st.just(2.0), st.just("2")),
    "heads": st.one_of(st.integers(max_value=0), st.just(3), st.just(True)),
    "timesteps": st.one_of(st.integers(max_value=0), st.just(4.0)),
    "mlp_ratio": st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan")), st.just(0.001),
                           st.just("4"), st.none()),
    "dv": st.one_of(st.floats(min_value=1.0, exclude_min=True), st.floats(max_value=0.0, exclude_max=True),
                    st.just(float("nan")), st.just("0.5"), st.none()),
    "vth": st.one_of(st.floats(max_value=0.0), st.just(float("inf")), st.just(float("nan")), st.just("1"),
                     st.none()),
    "model": unknown(("spiking", "dense")),
    "attention": unknown(("ssa", "sdsa")),
    "encoder": st.one_of(unknown(("direct", "rate", "latency")), st.integers()),
    "surrogate": unknown(("atan", "sigmoid", "fast_sigmoid")),
    "engine": unknown(("native", "spikingjelly")),
    "learn_threshold": st.one_of(st.just("no"), st.integers(), st.none()),
    "causal": st.one_of(st.just("yes"), st.just(1)),
    "per_channel": st.just("true"),
    "mechanism": st.one_of(unknown(tuple(MECHANISMS.names())), st.integers()),
    "mechanism_options": st.one_of(st.just({"areas": 3}), st.just([1, 2]), st.just("x")),
    "num_cues": st.one_of(st.integers(max_value=-1), st.just(2.5), st.just(True)),
}


@settings(max_examples=150, deadline=None)
@given(field=st.sampled_from(sorted(BAD_CONFIG)), data=st.data())
def test_bad_config_fields_raise_the_library_error(field, data):
    value = data.draw(BAD_CONFIG[field])
    with pytest.raises(SpikingAttnError) as info:
        ModelConfig(**{"in_features": 8, "num_tokens": 4, "num_classes": 3, field: value})
    assert field in str(info.value) or (field in ("in_features", "dim", "heads") and "divisible" in str(info.value))


BAD_LIF = {
    "du": st.one_of(st.floats(min_value=1.0, exclude_min=True), st.just(-0.1), st.just(float("nan")), st.none()),
    "dv": st.one_of(st.just(5.0), st.just(-1.0), st.just("0.5")),
    "vth": st.one_of(st.just(-1.0), st.just(0.0), st.just(float("inf")), st.just("1")),
    "bias": st.one_of(st.just(float("nan")), st.just(float("inf")), st.just([0.1])),
    "theta_step": st.one_of(st.just(-1.0), st.just(0.5)),  # 0.5 without theta_decay
    "surrogate": st.one_of(unknown(("atan", "sigmoid", "fast_sigmoid")), st.just(3)),
    "engine": unknown(("native", "spikingjelly")),
    "learn_threshold": st.one_of(st.just("no"), st.just(1)),
    "detach_reset": st.just("no"),
    "shape": st.one_of(st.just((0,)), st.just((2.5,)), st.just("16")),
}


@settings(max_examples=100, deadline=None)
@given(field=st.sampled_from(sorted(BAD_LIF)), data=st.data())
def test_bad_neuron_parameters_raise_the_library_error(field, data):
    value = data.draw(BAD_LIF[field])
    with pytest.raises(SpikingAttnError):
        LIFPopulation(**{field: value})


@pytest.mark.parametrize("bad", [
    lambda: lif_sequence(torch.tensor(1.0)),
    lambda: lif_sequence(torch.ones(0, 4)),
    lambda: lif_sequence(torch.ones(3, 4, dtype=torch.int32)),
    lambda: lif_sequence([[1.0]]),
    lambda: lif_sequence(torch.ones(3, 4), gain=torch.ones(5)),
    lambda: lif_sequence(torch.ones(3, 4), threshold_shift="x"),
    lambda: build_model({"in_features": 8}),
    lambda: SpikeRecorder(None),
    lambda: SpikeRecorder(torch.nn.Linear(2, 2), keep="all"),
    lambda: save_checkpoint("x.pt", torch.nn.Linear(2, 2)),
    lambda: save_checkpoint(None, build_model(ModelConfig(8, 4, 3))),
    lambda: spike_driven_report(None, torch.ones(1)),
    lambda: load_model(42),
    lambda: train(lr="fast", out="never"),
    lambda: train(epochs=1.5, out="never"),
    lambda: train(out=5),
    lambda: train(progress="yes", out="never"),
    lambda: train(task="cue", seed=-1, out="never"),
    lambda: train(task="cue", colour="red", out="never"),
])
def test_bad_api_calls_raise_the_library_error(bad, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SpikingAttnError):
        bad()
    assert list(tmp_path.iterdir()) == []


def test_evaluate_rejects_bad_arguments():
    model = build_model(ModelConfig(8, 4, 3, dim=16, depth=1, heads=2, timesteps=2))
    x, y = torch.rand(5, 4, 8), torch.randint(3, (5,))
    for call in (lambda: evaluate(model, x, y[:3]), lambda: evaluate(model, x[:0], y[:0]),
                 lambda: evaluate(model, x, y, batch_size=0), lambda: evaluate(model, x, [0, 1, 2, 0, 1]),
                 lambda: evaluate(None, x, y)):
        with pytest.raises(SpikingAttnError):
            call()


@settings(max_examples=25, deadline=None)
@given(model=st.sampled_from(["spiking", "dense"]), attention=st.sampled_from(["ssa", "sdsa"]),
       dense_attention=st.sampled_from(["softmax", "ssa", "sdsa"]), heads=st.sampled_from([1, 2, 4]),
       depth=st.integers(1, 2), timesteps=st.integers(1, 3), encoder=st.sampled_from(["direct", "rate", "latency"]),
       surrogate=st.sampled_from(["atan", "sigmoid", "fast_sigmoid"]), engine=st.sampled_from(["native", "spikingjelly"]),
       causal=st.booleans(), per_channel=st.booleans(), learn=st.booleans(), num_cues=st.integers(0, 3),
       dtype=st.sampled_from([torch.float32, torch.float64]), seed=st.integers(0, 1000))
def test_valid_random_configs_run_forward_and_backward(model, attention, dense_attention, heads, depth, timesteps,
                                                        encoder, surrogate, engine, causal, per_channel, learn,
                                                        num_cues, dtype, seed):
    if engine == "spikingjelly" and surrogate == "fast_sigmoid":
        surrogate = "atan"
    config = ModelConfig(in_features=6, num_tokens=5, num_classes=3, model=model, dim=8, depth=depth, heads=heads,
                         attention=attention, dense_attention=dense_attention, timesteps=timesteps, encoder=encoder,
                         surrogate=surrogate, engine=engine, causal=causal, per_channel=per_channel,
                         learn_threshold=learn, learn_decay=learn, num_cues=num_cues)
    g = torch.Generator().manual_seed(seed)
    net = build_model(config)
    x = torch.rand(3, 5, 6, generator=g, dtype=dtype)  # float64 input: cast to the model's dtype
    cue = torch.randint(num_cues, (3,), generator=g) if num_cues else None
    logits = net(x, cue=cue, generator=g)
    assert logits.shape == (3, 3) and logits.dtype == torch.float32 and bool(torch.isfinite(logits).all())
    logits.sum().backward()


def test_checkpoint_problems_name_the_checkpoint(tmp_path):
    model = build_model(ModelConfig(8, 4, 3, dim=16, depth=1, heads=2))
    save_checkpoint(tmp_path / "ok.pt", model, {"epoch": 0})
    payload = read_checkpoint(tmp_path / "ok.pt")
    payload["state_dict"]["blocks.0.attn.q.linear.weight"][0, 0] = float("nan")
    torch.save(payload, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"nan\.pt.*'blocks\.0\.attn\.q\.linear\.weight' holds NaN"):
        load_model(tmp_path / "nan.pt")


def test_resume_rejects_a_negative_epoch(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "2", "--stop-after", "1", "--out", str(out)]) == 0
    payload = read_checkpoint(out / "checkpoint.pt")
    payload["training"]["epoch"] = -3
    torch.save(payload, out / "checkpoint.pt")
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 1
    assert "training epoch -3" in _assert_one_line(capsys.readouterr())


def test_output_folders(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--out", str(out)]) == 0
    old = os.umask(0o027)
    try:
        capsys.readouterr()
        assert main(["train", *BASE, "--out", str(out)]) == 1  # a run is there already
        assert "already holds a run; pass --overwrite" in _assert_one_line(capsys.readouterr())
        (out / "notes.txt").write_text("mine")
        assert main(["train", *BASE, "--out", str(out), "--overwrite", "--seed", "3"]) == 0
    finally:
        os.umask(old)
    assert json.loads((out / "metrics.json").read_text())["seed"] == 3
    assert (out / "notes.txt").read_text() == "mine"  # only the run's own files are replaced
    for name in ("checkpoint.pt", "metrics.json", "training.png"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o640  # 0666 minus the umask, not 0600

    # a failure after the folders were made removes them again, parents included
    import spiking_attn.training as training

    def fail(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(training, "_run", fail)
    capsys.readouterr()
    assert main(["train", *BASE, "--out", str(tmp_path / "a" / "b" / "c")]) == 1
    assert "disk on fire" in _assert_one_line(capsys.readouterr())
    assert not (tmp_path / "a").exists()


def test_absurd_sizes_are_refused_with_the_estimate(tmp_path):
    with pytest.raises(ResourceError, match=r"needs about [\d.]+ GiB .* but [\d.]+ GiB are available"):
        train(task="cue", timesteps=100_000, epochs=1, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()


def _run_script(args, cwd):
    assert SCRIPT.exists(), SCRIPT
    # SIGINT back to its default in the child: a test run started in the background by a
    # non-interactive shell ignores SIGINT, and an ignored signal is inherited
    return subprocess.Popen([str(SCRIPT), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _interrupt(proc, when):
    """Wait for ``when()``, send SIGINT, and return (status, stderr lines); never leaves the child running."""
    try:
        when(proc)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=300)
        return proc.returncode, err.strip().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _loading_torch(proc, timeout: float = 300.0):
    """Wait until the child has mapped libtorch: it is importing torch, inside the CLI's main()."""
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, "the command ended before it was interrupted"
        try:
            if "libtorch" in Path(f"/proc/{proc.pid}/maps").read_text():
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "torch was never loaded"
        time.sleep(0.005)


def test_interrupt_during_startup(tmp_path):
    proc = _run_script(["train", *BASE, "--epochs", "1000", "--out", "a/run"], tmp_path)
    code, err = _interrupt(proc, _loading_torch)
    assert code == 130 and err == ["spiking-attn: interrupted"], err
    assert list(tmp_path.iterdir()) == []


def _wait_for(path: Path, timeout: float = 300.0):
    def wait(proc):
        deadline = time.monotonic() + timeout
        while not path.exists():
            assert proc.poll() is None, "the command ended before it was interrupted"
            assert time.monotonic() < deadline, f"{path} did not appear"
            time.sleep(0.01)
    return wait


def test_interrupt_before_the_first_checkpoint_leaves_nothing(tmp_path):
    args = ["train", "--task", "digits", "--batch-size", "8", "--epochs", "50", "--no-progress", "--out", "a/b/run"]
    proc = _run_script(args, tmp_path)
    code, err = _interrupt(proc, _wait_for(tmp_path / "a" / "b" / "run"))
    assert code == 130 and err == ["spiking-attn: interrupted"], err
    assert list(tmp_path.iterdir()) == []


def test_interrupt_during_training_keeps_the_last_finished_epoch(tmp_path):
    proc = _run_script(["train", *BASE, "--epochs", "1000", "--out", "run"], tmp_path)
    code, err = _interrupt(proc, _wait_for(tmp_path / "run" / "checkpoint.pt"))
    assert code == 130 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("spiking-attn: interrupted; the last finished epoch is saved in run")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["checkpoint.pt"]  # no temporary files
    assert load_model(tmp_path / "run" / "checkpoint.pt").config.dim == 16


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64])
def test_the_finite_check_finds_every_non_finite_value_and_passes_overflowing_sums(dtype):
    from spiking_attn.errors import all_finite

    big = torch.finfo(dtype).max
    assert all_finite(torch.zeros(3, 4, dtype=dtype))
    assert all_finite(torch.full((1000,), big, dtype=dtype))  # the sum overflows; every value is finite
    assert all_finite(torch.tensor([big, -big, big], dtype=dtype))
    for bad in (float("nan"), float("inf"), -float("inf")):
        for where in (0, 57, 999):
            x = torch.ones(1000, dtype=dtype)
            x[where] = bad
            assert not all_finite(x)
    assert not all_finite(torch.tensor([float("inf"), -float("inf")], dtype=dtype))
    assert not all_finite(torch.tensor([big, big, float("nan")], dtype=dtype))
    x = torch.ones(5, requires_grad=True)
    assert all_finite(x)
    with pytest.raises(ValueError, match="NaN or Inf"):
        check_tensor(torch.tensor([[1.0, float("nan")]]), "x")
