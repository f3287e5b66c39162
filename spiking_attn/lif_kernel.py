"""Loader for the compiled LIF kernel (``csrc/lif_kernel.c``), the fast path of the native engine.

The C file is compiled once with the system C compiler into ``$XDG_CACHE_HOME/spiking-attn`` (or
``~/.cache/spiking-attn``), keyed by a hash of the source and flags, written atomically and loaded
with ctypes. Columns of the ``[T, n]`` problem are split across ``torch.get_num_threads()`` threads;
ctypes releases the GIL, so they run in parallel. If no compiler is available the native engine
runs its pure-torch loop instead and logs that once; ``kernel_status()`` tells which is in use.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("csrc") / "lif_kernel.c"
FLAGS = ["-O3", "-std=gnu99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp-simd"]
SURROGATE_IDS = {"atan": 0, "sigmoid": 1, "fast_sigmoid": 2}
MIN_PARALLEL = 1 << 15  # below this many neurons one thread is faster than handing off work

_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "error": None}
_pool: dict = {"executor": None, "workers": 0, "pid": None}

_i64, _f32, _ptr, _int = ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiking-attn"


def _build() -> Path:
    compiler = shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")
    if compiler is None:
        raise RuntimeError("no C compiler found")
    source = SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join(FLAGS).encode() + platform.machine().encode()).hexdigest()[:16]
    target = _cache_dir() / f"lif_kernel_{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, str(SOURCE), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {SOURCE.name} failed: {proc.stderr.strip()[:500]}")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _load():
    with _lock:
        if _state["tried"]:
            return _state["lib"]
        _state["tried"] = True
        try:
            lib = ctypes.CDLL(str(_build()))
            lib.lif_forward.argtypes = [_ptr, _ptr, _i64, _i64, _i64, _i64, _f32, _f32, _f32, _f32]
            lib.lif_forward.restype = ctypes.c_int64
            lib.lif_backward.argtypes = [_ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _f32, _f32, _f32, _f32,
                                         _int, _f32, _int, _int, _ptr]
            lib.lif_backward.restype = ctypes.c_int
            _state["lib"] = lib
        except (OSError, RuntimeError) as exc:
            _state["error"] = str(exc)
            log.warning("LIF kernel unavailable (%s); the native engine uses its torch loop", exc)
        return _state["lib"]


def kernel_status() -> str:
    """'compiled' if the C kernel is in use, else 'torch (<reason>)'."""
    return "compiled" if _load() is not None else f"torch ({_state['error']})"


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can take ``x`` (float32 on CPU) and is built."""
    return x.dtype == torch.float32 and x.device.type == "cpu" and _load() is not None


def _chunks(n: int) -> list:
    workers = max(1, torch.get_num_threads()) if n >= MIN_PARALLEL else 1
    bounds = [n * k // workers for k in range(workers + 1)]
    return [(bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool of at least ``workers`` threads, made anew in a forked child (Lava forks)."""
    if _pool["executor"] is None or _pool["workers"] < workers or _pool["pid"] != os.getpid():
        _pool.update(executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spiking-attn-lif"),
                     workers=workers, pid=os.getpid())
    return _pool["executor"]


def _run(fn, chunks, args_for) -> None:
    """Call ``fn(*args_for(lo, hi))`` for every chunk, in parallel when there is more than one."""
    if len(chunks) == 1:
        fn(*args_for(*chunks[0]))
        return
    pool = _executor(len(chunks))
    for future in [pool.submit(fn, *args_for(lo, hi)) for lo, hi in chunks]:
        future.result()


def forward(x: torch.Tensor, du: float, dv: float, vth: float, bias: float) -> tuple:
    """Return ``(spikes, non_finite)`` for a float32, contiguous ``[T, ...]`` input.

    ``non_finite`` counts the NaN and infinite inputs, found in the same pass.
    """
    T, n = x.shape[0], x[0].numel()
    spikes = torch.empty_like(x)
    counts = {}
    lib = _load()

    def call(*args):
        counts[args[4]] = lib.lif_forward(*args)

    _run(call, _chunks(n), lambda lo, hi: (x.data_ptr(), spikes.data_ptr(), T, n, lo, hi, du, dv, vth, bias))
    return spikes, sum(counts.values())


def backward(grad_spikes, x, du, dv, vth, bias, surrogate, detach_reset, params):
    """Return ``(grad_x, [g_du, g_dv, g_vth, g_bias])`` from the saved input ``x`` (contiguous float32).

    The parameter sums are formed only if ``params`` is true (they are zeros otherwise).
    """
    grad_spikes = grad_spikes.contiguous()
    T, n = x.shape[0], x[0].numel()
    grad_x = torch.empty_like(x)
    chunks = _chunks(n)
    accs = {c: (ctypes.c_double * 4)() for c in chunks}
    status = {}
    lib = _load()

    def call(*args):
        status[args[5]] = lib.lif_backward(*args)

    _run(call, chunks, lambda lo, hi: (grad_spikes.data_ptr(), x.data_ptr(), grad_x.data_ptr(), T, n, lo, hi,
                                       du, dv, vth, bias, SURROGATE_IDS[surrogate.name], float(surrogate.alpha),
                                       int(detach_reset), int(bool(params)), accs[(lo, hi)]))
    if any(code != 0 for code in status.values()):
        raise MemoryError("LIF kernel could not allocate its work buffer")
    totals = [sum(acc[k] for acc in accs.values()) for k in range(4)]
    return grad_x, totals
