"""The benchmark scripts this project's README quotes refuse a repetition count they cannot time."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script", ["bench_lif_kernel.py", "bench_attention_block.py"])
@pytest.mark.parametrize("repeats", ["0", "-3"])
def test_benchmark_refuses_a_repeat_count_below_one(script, repeats):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--repeats", repeats],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert f"--repeats must be at least 1, got {repeats}" in proc.stderr
    assert "Traceback" not in proc.stderr
