"""Output files and folders: written atomically, with the user's permissions, and nothing left on failure.

* ``atomic_write(path, write)``: ``write`` fills a temporary file in the same folder, which is then
  renamed into place; on any failure (Ctrl-C included) the temporary file is removed. The file gets
  the mode a plain ``open()`` would give (0666 minus the umask), not the 0600 of a temporary file.
* ``remove_partial_files(folder)``: what a writer killed mid-write (SIGKILL) left behind; a multi-process
  run calls it after one of its processes failed.
* ``RunFolder``: the output folder of a run. It refuses a folder that already holds a run unless asked
  to overwrite or resume. It creates missing parents, and when the run fails before its first
  checkpoint it removes everything it created, parents included.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, List

from .errors import SpikingAttnError, check_path

RUN_MARKERS = ("checkpoint.pt", "metrics.json")  # a folder holding either of these holds a run
RUN_FILES = (*RUN_MARKERS, "training.png", "spikes_attention.png")  # what a training run writes


def file_mode() -> int:
    """The permission bits a newly created file gets under the current umask."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def partial_affixes(name: str) -> tuple:
    """How the name of ``atomic_write``'s temporary file for ``name`` begins and ends (a random part between)."""
    return f".{name}.", ".tmp"


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call ``write(tmp_path)``, then rename ``tmp_path`` to ``path``; remove it on failure."""
    path = Path(path)
    prefix, suffix = partial_affixes(path.name)
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_partial_files(folder: str | os.PathLike, names=RUN_FILES) -> List[Path]:
    """Remove the temporary files ``atomic_write`` left in ``folder`` for ``names`` (a writer killed by a
    signal cannot remove its own); return what was removed."""
    folder = Path(folder)
    patterns = ["*".join(partial_affixes(name)) for name in names]
    removed = [tmp for pattern in patterns for tmp in folder.glob(pattern)] if folder.is_dir() else []
    for tmp in removed:
        tmp.unlink(missing_ok=True)
    return removed


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented JSON, atomically."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=False)
            f.write("\n")
    atomic_write(path, write)


class RunFolder:
    """The output folder of one run, as a context manager.

    Args:
        path: the folder (``--out``).
        markers, files, keep_if: what marks a folder as holding a result, what a run writes (removed on
            overwrite), and the file whose presence keeps the folder after a failure (the defaults are
            a training run's; other commands pass their own).
        overwrite: replace a run already in the folder (the files a run writes, ``RUN_FILES``, are removed
            on entry; other files are left alone).
        resume: the folder is an earlier run being continued.

    On an exception inside the ``with`` block (an interrupt included), if the run has not saved a
    checkpoint, every folder this object created is removed again; a folder that existed before is
    left as it was. After a checkpoint, the folder stays: the run can be resumed.
    """

    def __init__(self, path: str | os.PathLike, *, overwrite: bool = False, resume: bool = False,
                 markers=RUN_MARKERS, files=RUN_FILES, keep_if: str = "checkpoint.pt") -> None:
        self.path = Path(check_path(path, "out"))
        self.overwrite, self.resume = overwrite, resume
        self.markers, self.files, self.keep_if = tuple(markers), tuple(files), keep_if
        self._created: List[Path] = []

    def __enter__(self) -> Path:
        path = self.path
        if path.exists() and not path.is_dir():
            raise SpikingAttnError(f"out {str(path)!r} exists and is not a folder")
        holds_run = path.is_dir() and any((path / name).exists() for name in self.markers)
        if holds_run and not (self.overwrite or self.resume):
            raise SpikingAttnError(f"out {str(path)!r} already holds a run; pass --overwrite to replace it "
                                   f"or --resume {path} to continue it")
        if holds_run and self.overwrite and not self.resume:
            for name in self.files:
                (path / name).unlink(missing_ok=True)
        missing = []
        for folder in (path, *path.parents):
            if folder.exists():
                break
            missing.append(folder)
        for folder in reversed(missing):  # outermost first
            folder.mkdir()
            self._created.append(folder)
        return path

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None or (self.path / self.keep_if).exists():
            return
        for folder in reversed(self._created):  # innermost first
            shutil.rmtree(folder, ignore_errors=True)
