"""Accuracy floors at the default settings (about 1 min on 2 cores).

Each floor sits at least two test samples (2/360) below the lowest accuracy measured for seed 0 on the
project's machines: the spiking model gave 0.9639 (foundation kernel) and 0.9667 (this one); the dense
twin gave 0.9694 here with the foundation code and with this one, so its old floor of 0.97 passed or
failed by one sample depending on the CPU. Raising the recipe is issue 15's work.
"""
import pytest

from spiking_attn.training import train


@pytest.mark.parametrize("model, floor", [("spiking", 0.95), ("dense", 0.963)])
def test_digits_accuracy_at_default_epochs(tmp_path, model, floor):
    metrics = train(task="digits", model=model, timesteps=4, out=tmp_path, progress=False, figures=False)
    assert metrics["epochs"] == 40
    assert metrics["test_accuracy"] >= floor, metrics["history"]["test_accuracy"]
