"""The accuracy floors of the foundation issue, at the default settings (about 1.5 min on 2 cores)."""
import pytest

from spiking_attn.training import train


@pytest.mark.parametrize("model, floor", [("spiking", 0.95), ("dense", 0.97)])
def test_digits_accuracy_at_default_epochs(tmp_path, model, floor):
    metrics = train(task="digits", model=model, timesteps=4, out=tmp_path, progress=False, figures=False)
    assert metrics["epochs"] == 40
    assert metrics["test_accuracy"] >= floor, metrics["history"]["test_accuracy"]
