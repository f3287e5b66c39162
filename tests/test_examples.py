import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, out: Path, *args: str) -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--out", str(out), *args],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_engines_and_rates_example_runs(tmp_path):
    stdout = _run("engines_and_rates.py", tmp_path, "--epochs", "1")
    assert "identical spikes in every population: True" in stdout
    assert (tmp_path / "firing_rates.png").stat().st_size > 0


@pytest.mark.parametrize("script, figure, text", [
    ("thalamic_gates.py", "gate_firing.png", "cue 3 (bottom right): gate rate per head"),
    ("pulvinar_routing.py", "routing.png", "spiking routing (row i"),
    ("arousal_states.py", "arousal.png", "digit 9: arousal"),
    ("prediction_errors.py", "prediction_errors.png", "level 1:"),
    ("cortical_areas.py", "cortical_masks.png", "spiking area 3: mean mask"),
    ("saliency_glimpses.py", "saliency_glimpses.png", "spiking: most attended location per glimpse"),
    ("thalamus_workspace.py", "thalamus_workspace.png", "cue 3 (bottom right): tokens selected at step 0"),
    ("seq2seq_attention.py", "cross_attention.png", "-> decoded"),
])
def test_mechanism_examples_write_their_figure(tmp_path, script, figure, text):
    stdout = _run(script, tmp_path, "--epochs", "1")
    assert text in stdout
    assert (tmp_path / figure).stat().st_size > 0


def test_conversion_example_compares_the_three_methods(tmp_path):
    stdout = _run("conversion_methods.py", tmp_path, "--epochs", "1", "--finetune-epochs", "1")
    for method in ("rate:", "qcfs:", "td:"):
        assert method in stdout
    assert (tmp_path / "conversion_methods.png").stat().st_size > 0
