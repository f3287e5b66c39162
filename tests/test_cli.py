import json
import subprocess
import sys

import pytest

from spiking_attn.cli import main

TINY = ["--task", "cue", "--dim", "16", "--depth", "1", "--heads", "2", "--timesteps", "2", "--no-progress"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.mark.parametrize("argv, code, text", [
    (["train", "--bogus"], 2, "unrecognized arguments"),
    (["train", "--task", "imagenet", "--out", "x"], 2, "invalid choice"),
    (["train", "--model", "quantum", "--out", "x"], 2, "invalid choice"),
    (["train", "--epochs", "three", "--out", "x"], 2, "invalid int"),
    (["train"], 2, "--out"),
    (["fly"], 2, "invalid choice"),
])
def test_usage_errors_are_one_line(capsys, argv, code, text):
    assert main(argv) == code
    assert text in one_line_error(capsys)


@pytest.mark.parametrize("flag, value, text", [
    ("--epochs", "0", "epochs must be an integer in [1, 1000000], got 0"),
    ("--timesteps", "-1", "timesteps must be a positive integer"),
    ("--dim", "15", "divisible"),
])
def test_bad_values_are_one_line(capsys, tmp_path, flag, value, text):
    assert main(["train", *TINY, "--out", str(tmp_path / "o"), flag, value]) == 1
    assert text in one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_corrupt_resume_checkpoint(capsys, tmp_path):
    (tmp_path / "checkpoint.pt").write_bytes(b"\x00garbage")
    assert main(["train", "--resume", str(tmp_path)]) == 1
    assert "corrupt" in one_line_error(capsys)


def test_train_stop_and_resume_via_cli(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--epochs", "2", "--stop-after", "1", "--out", str(out)]) == 0
    assert "stopped after epoch 1" in capsys.readouterr().out
    assert not (out / "metrics.json").exists()
    assert main(["train", "--resume", str(out), "--no-progress"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 2 and metrics["epochs_done"] == 2
    for key in ("test_accuracy", "firing_rates", "timesteps", "epochs", "model"):
        assert key in metrics


def test_console_script_has_no_traceback():
    exe = [sys.executable, "-m", "spiking_attn.cli"]
    proc = subprocess.run([*exe, "train", "--out", "x", "--epochs", "-3"], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "spiking-attn: error: epochs must be an integer in [1, 1000000], got -3"
