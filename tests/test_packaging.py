"""What a built wheel holds: a non-editable install must carry the C/C++ sources (the LIF kernel and the torch
operators are compiled from them on first use) and the hardware profiles and energy models."""
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_wheel_carries_the_sources_and_data_files(tmp_path):
    # built from a copy of the package's files alone: a build folder or egg-info left in the tree by an earlier
    # build lists files of its own, which would hide a file the configuration leaves out
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for folder in ("spiking_attn", "converters", "hardware"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path / "wheel")], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "wheel").glob("spiking_attn-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {f"spiking_attn/csrc/{p.name}" for p in (ROOT / "spiking_attn" / "csrc").iterdir() if p.is_file()}
    expected |= {f"spiking_attn/hardware/{p.parent.name}/{p.name}"
                 for folder in ("profiles", "energy_models") for p in (ROOT / "hardware" / folder).glob("*.json")}
    assert len(expected) >= 12
    assert expected <= names, sorted(expected - names)
