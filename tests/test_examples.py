import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_engines_and_rates_example_runs(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "engines_and_rates.py"), "--out", str(tmp_path),
                           "--epochs", "1"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "identical spikes in every population: True" in proc.stdout
    assert (tmp_path / "firing_rates.png").stat().st_size > 0
