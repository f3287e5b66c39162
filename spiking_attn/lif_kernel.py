"""The compiled LIF engine: ``csrc/lif_kernel.c`` built on first use and driven through ctypes.

The C source is compiled once with the system C compiler into ``$XDG_CACHE_HOME/spiking-attn`` (or
``~/.cache/spiking-attn``), keyed by a hash of the sources and flags, written atomically. It holds a
float32 and a float64 instance of the same code. Columns of the ``[T, n]`` problem are split across
``torch.get_num_threads()`` threads; ctypes releases the GIL, so they run in parallel. If no compiler
is available, the native engine runs ``neuron.run_reference`` instead and logs that once;
``kernel_status()`` tells which is in use.

``run`` is one autograd node for the whole sequence. Parameters and modulation reach the kernel as
operands (``data[t*tstride + ((c // div) % mod) * mod2 + (c // div2) % mod2]`` for column ``c``), derived
here from their shapes: scalars, per-channel, per-sample, per-token and per-sample-and-channel
tensors are read in place; any other broadcastable shape is expanded once. The forward pass saves only the input (plus ``z = h - threshold`` when the
surrogate is not one the kernel knows); the backward pass recomputes the membrane in cache. The
gradient of a time-varying gain or shift whose outer run spans the batch (per step and sample, say) is
summed inside the kernel in the operand's own layout, with the columns split across threads at sample
boundaries so that no two threads write one element.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import math
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import torch

from .errors import DTypeError, NonFiniteError, ShapeError, SpikingAttnError
from .surrogate import ATan, FastSigmoid, Sigmoid, surrogate_name

log = logging.getLogger(__name__)

CSRC = Path(__file__).with_name("csrc")
SOURCES = (CSRC / "lif_kernel.c", CSRC / "lif_kernel_body.h")
FLAGS = ["-O3", "-std=gnu99", "-fPIC", "-shared", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-Wno-psabi"]
# Below this many neurons (per step) one thread is faster than handing work to the pool. On this
# project's 2-core machines one thread won at every size timed, up to [4, 32, 64, 512]; set it lower
# where cores are many.
MIN_PARALLEL = 1 << 22
OPERANDS = ("du", "dv", "vth", "bias", "theta_decay", "theta_step", "gain", "shift")  # slots of operand_t
F_DECAY_U, F_ADAPTIVE, F_GAIN, F_SHIFT, F_DETACH, F_PARAMS, F_ACC_GAIN, F_ACC_SHIFT = 1, 2, 4, 8, 16, 32, 64, 128
F_SUBTRACT = 256
F_ACC = {6: F_ACC_GAIN, 7: F_ACC_SHIFT}  # operand slot -> its in-kernel gradient accumulation flag
SG_TABLE = 3
SURROGATE_KINDS = {ATan: 0, Sigmoid: 1, FastSigmoid: 2}  # exact types; anything else uses the table path
SUFFIX = {torch.float32: "f32", torch.float64: "f64"}

_lock = threading.Lock()
_pool_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "error": None}
_pool: dict = {"executor": None, "workers": 0, "pid": None}

_i64, _int, _ptr, _dbl = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p, ctypes.c_double


class _Operand(ctypes.Structure):
    _fields_ = [("data", _ptr), ("tstride", _i64), ("div", _i64), ("mod", _i64), ("div2", _i64), ("mod2", _i64)]


_OperandArray = _Operand * len(OPERANDS)
_FlatOperands = ctypes.c_int64 * (6 * len(OPERANDS))
assert ctypes.sizeof(_FlatOperands) == ctypes.sizeof(_OperandArray)
_PointerArray = _ptr * len(OPERANDS)


def _after_fork_in_child() -> None:
    """A forked child (Lava forks its processes) starts with fresh locks and no thread pool: the parent's
    threads do not exist there, and a lock the parent held at the fork would never be released."""
    global _lock, _pool_lock
    _lock, _pool_lock = threading.Lock(), threading.Lock()
    _pool.update(executor=None, workers=0, pid=None)


os.register_at_fork(after_in_child=_after_fork_in_child)


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "spiking-attn"


def _c_compiler() -> Optional[str]:
    """The C compiler to use: ``$CC`` (default ``cc``), else ``gcc``; None if there is none."""
    return shutil.which(os.environ.get("CC", "cc")) or shutil.which("gcc")


def _cached_library(stem: str, sources: Sequence[Path], extra: str = "") -> Path:
    """The cache path of a library built from ``sources``: named by a hash of their bytes, ``FLAGS``, the
    machine and ``extra`` (whatever else the build depends on), so a change of any of them rebuilds it."""
    digest = hashlib.sha256()
    for source in sources:
        digest.update(source.read_bytes())
    digest.update(" ".join(FLAGS).encode() + platform.machine().encode() + extra.encode())
    return _cache_dir() / f"{stem}_{digest.hexdigest()[:16]}.so"


def _build() -> Path:
    compiler = _c_compiler()
    if compiler is None:
        raise RuntimeError("no C compiler found")
    target = _cached_library("lif_kernel", SOURCES)
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        proc = subprocess.run([compiler, *FLAGS, str(SOURCES[0]), "-o", tmp, "-lm"], capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"compiling {SOURCES[0].name} failed: {proc.stderr.strip()[:500]}")
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
            for suffix in SUFFIX.values():
                fwd = getattr(lib, f"lif_forward_{suffix}")
                fwd.argtypes = [_ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, ctypes.POINTER(_Operand), _int, _dbl]
                fwd.restype = _i64
                bwd = getattr(lib, f"lif_backward_{suffix}")
                bwd.argtypes = [_ptr, _ptr, _ptr, _ptr, _ptr, ctypes.POINTER(_ptr), _i64, _i64, _i64, _i64,
                                ctypes.POINTER(_Operand), _int, _int, _dbl, _dbl]
                bwd.restype = _int
            _state["lib"] = lib
        except (OSError, RuntimeError, AttributeError) as exc:
            _state["error"] = str(exc)
            log.warning("LIF kernel unavailable (%s); the native engine runs the torch reference loop", exc)
        return _state["lib"]


def kernel_status() -> str:
    """'compiled' if the C kernel is in use, else 'torch (<reason>)'."""
    return "compiled" if _load() is not None else f"torch ({_state['error']})"


def usable(x: torch.Tensor) -> bool:
    """Whether the kernel can take ``x`` (float32 or float64 on the CPU) and is built."""
    return x.dtype in SUFFIX and x.device.type == "cpu" and _load() is not None


def _chunks(n: int, align: int = 1) -> list:
    """Column ranges, one per worker, with bounds at multiples of ``align``."""
    if n < MIN_PARALLEL:
        return [(0, n)]
    workers = max(1, torch.get_num_threads())
    units = n // align
    bounds = [units * k // workers * align for k in range(workers)] + [n]
    return [(bounds[k], bounds[k + 1]) for k in range(workers) if bounds[k] < bounds[k + 1]]


def _executor(workers: int) -> ThreadPoolExecutor:
    """A thread pool of at least ``workers`` threads, made anew in a forked child (Lava forks)."""
    with _pool_lock:
        if _pool["executor"] is None or _pool["workers"] < workers or _pool["pid"] != os.getpid():
            old = _pool["executor"] if _pool["pid"] == os.getpid() else None  # a parent's pool has no threads here
            _pool.update(executor=ThreadPoolExecutor(max_workers=workers, thread_name_prefix="spiking-attn-lif"),
                         workers=workers, pid=os.getpid())
            if old is not None:
                old.shutdown(wait=False)
        return _pool["executor"]


def _run_chunks(fn, n: int, args_for, align: int = 1) -> list:
    """Call ``fn(*args_for(lo, hi))`` for every column chunk, in parallel when there is more than one."""
    chunks = _chunks(n, align)
    if len(chunks) == 1:
        return [fn(*args_for(*chunks[0]))]
    pool = _executor(len(chunks))
    return [f.result() for f in [pool.submit(fn, *args_for(lo, hi)) for lo, hi in chunks]]


# ---------------------------------------------------------------------------------------------------
# Operands: how a broadcastable tensor is read by column


@functools.lru_cache(maxsize=4096)
def _pattern(shape: tuple, population: tuple) -> Optional[tuple]:
    """``(div, mod, div2, mod2)`` if a contiguous tensor of ``shape`` (right-aligned to ``population``)
    varies over at most two unbroken runs of the population's dims, so column ``c`` reads element
    ``((c // div) % mod) * mod2 + (c // div2) % mod2``; else None."""
    aligned = (1,) * (len(population) - len(shape)) + tuple(shape)
    runs, start = [], None
    for i, size in enumerate((*aligned, 1)):
        if size != 1 and start is None:
            start = i
        elif size == 1 and start is not None:
            runs.append((start, i))
            start = None
    if len(runs) > 2 or any(aligned[i] != population[i] for a, b in runs for i in range(a, b)):
        return None
    described = [(math.prod(population[b:]), math.prod(population[a:b])) for a, b in runs]
    (div, mod), (div2, mod2) = (described + [(1, 1), (1, 1)])[:2]
    return div, mod, div2, mod2


def _operand(t: torch.Tensor, T: int, population: Sequence[int]) -> tuple:
    """``(data, tstride, div, mod, div2, mod2, per_step)`` for a tensor broadcastable to ``[T, *population]``."""
    if t.dim() == 0:  # a scalar, the common case: read in place by every column
        return (t, 0, 1, 1, 1, 1, False)
    n = math.prod(population)
    per_step = t.dim() == len(population) + 1 and t.shape[0] > 1
    if t.dim() == len(population) + 1 and not per_step:
        t = t[0]
    step_shape = t.shape[1:] if per_step else t.shape
    pattern = _pattern(tuple(step_shape), tuple(population))
    if pattern is None:
        full = (T, *population) if per_step else tuple(population)
        data, pattern = t.expand(full).contiguous(), (1, n, 1, 1)
    else:
        data = t.contiguous()
    step = math.prod(pattern[1::2])  # elements of one step: mod * mod2
    return (data, step if per_step else 0, *pattern, per_step)


class _KernelLIF(torch.autograd.Function):
    """The compiled kernel as one autograd node over the whole sequence."""

    @staticmethod
    def forward(ctx, x, du, dv, vth, bias, theta_decay, theta_step, gain, shift, options):
        surrogate, detach_reset, return_membrane, reset, v_init = options
        lib = _load()
        x = x.contiguous()
        T, population = x.shape[0], tuple(x.shape[1:])
        n = x[0].numel()
        inputs = (du, dv, vth, bias, theta_decay, theta_step, gain, shift)
        operands = [None if t is None else _operand(t, T, population) for t in inputs]
        need = ctx.needs_input_grad[1:9]
        unit_du = du.item() == 1 if du.numel() == 1 else bool((du == 1).all())
        flags = ((F_DECAY_U if need[0] or not unit_du else 0)
                 | (F_ADAPTIVE if theta_step is not None else 0)
                 | (F_GAIN if gain is not None else 0) | (F_SHIFT if shift is not None else 0)
                 | (F_DETACH if detach_reset else 0) | (F_SUBTRACT if reset == "subtract" else 0))
        kind = SURROGATE_KINDS.get(type(surrogate), SG_TABLE)
        spikes = torch.empty_like(x)
        membrane = torch.empty_like(x) if return_membrane else x.new_empty(0)
        z = torch.empty_like(x) if kind == SG_TABLE and any(ctx.needs_input_grad[:9]) else None
        structs = _structs(operands)
        fwd = getattr(lib, f"lif_forward_{SUFFIX[x.dtype]}")
        counts = _run_chunks(fwd, n, lambda lo, hi: (x.data_ptr(), spikes.data_ptr(),
                                                     membrane.data_ptr() if return_membrane else None,
                                                     None if z is None else z.data_ptr(), T, n, lo, hi, structs,
                                                     flags, float(v_init)))
        if any(count < 0 for count in counts):
            raise MemoryError("LIF kernel could not allocate its work buffer")
        if sum(counts):
            raise NonFiniteError(f"x contains {sum(counts)} NaN or Inf value(s)")
        ctx.save_for_backward(x, z, *(None if op is None else op[0] for op in operands))
        layouts = [None if op is None else op[1:] for op in operands]  # (tstride, div, mod, div2, mod2, per_step)
        # the descriptors point at the saved operand tensors, which live as long as ctx: backward reuses them
        ctx.meta = (layouts, flags, kind, surrogate, [None if t is None else t.shape for t in inputs], float(v_init),
                    structs)
        if not return_membrane:
            ctx.mark_non_differentiable(membrane)
        return spikes, membrane

    @staticmethod
    def backward(ctx, grad_spikes, grad_membrane):
        if torch.is_grad_enabled():  # create_graph=True: refuse rather than return a silently constant gradient
            raise SpikingAttnError("the compiled LIF kernel gives first-order gradients only; for a gradient of a "
                                   "gradient (create_graph=True) use engine='spikingjelly', which runs on autograd")
        x, z, *data = ctx.saved_tensors
        layouts, flags, kind, surrogate, shapes, v_init, structs = ctx.meta
        operands = [None if layout is None else (d, *layout) for layout, d in zip(layouts, data)]
        T, population, n = x.shape[0], tuple(x.shape[1:]), x[0].numel()
        need = ctx.needs_input_grad[1:9]
        if any(need[:6]):
            flags |= F_PARAMS
        grad_spikes = torch.zeros_like(x) if grad_spikes is None else grad_spikes.contiguous()
        grad_membrane = grad_membrane.contiguous() if grad_membrane is not None and grad_membrane.numel() else None
        table = _surrogate_table(surrogate, z) if kind == SG_TABLE else None
        grad_x = torch.empty_like(x)
        outputs, align = [None] * len(OPERANDS), 1
        for k, op in enumerate(operands):
            if op is None or not need[k]:
                continue
            outer = _exclusive_run(op, n)
            if k in F_ACC and outer:  # summed in the kernel, in the operand's layout
                flags |= F_ACC[k]
                align = max(align, outer)
                outputs[k] = torch.zeros_like(op[0])
            else:
                outputs[k] = x.new_empty((T, n)) if op[-1] else x.new_zeros(n)  # every (t, column) is written
        pointers = _PointerArray(*(None if g is None else g.data_ptr() for g in outputs))
        bwd = getattr(_load(), f"lif_backward_{SUFFIX[x.dtype]}")
        alpha = float(getattr(surrogate, "alpha", 0.0)) if kind != SG_TABLE else 0.0
        status = _run_chunks(bwd, n, lambda lo, hi: (
            grad_spikes.data_ptr(), None if grad_membrane is None else grad_membrane.data_ptr(), x.data_ptr(),
            None if table is None else table.data_ptr(), grad_x.data_ptr(), pointers, T, n, lo, hi, structs, flags,
            kind, alpha, v_init), align)
        if any(code != 0 for code in status):
            raise MemoryError("LIF kernel could not allocate its work buffer")
        grads = [None if g is None else _reduce(g, _layout(g, k, flags, x.shape, population), shape)
                 for k, (g, shape) in enumerate(zip(outputs, shapes))]
        return (grad_x, *grads, None)


def _surrogate_table(surrogate, z: torch.Tensor) -> torch.Tensor:
    """``surrogate.grad(z)`` as a contiguous tensor of ``z``'s shape and dtype (the kernel reads every element)."""
    values = surrogate.grad(z)
    if not isinstance(values, torch.Tensor):
        raise DTypeError(f"surrogate {surrogate_name(surrogate)!r}: grad(z) must return a tensor, "
                         f"got {type(values).__name__}")
    try:
        return torch.broadcast_to(values.to(z.dtype), z.shape).contiguous()
    except RuntimeError:
        raise ShapeError(f"surrogate {surrogate_name(surrogate)!r}: grad(z) returned shape {tuple(values.shape)}, "
                         f"which does not broadcast to z's shape {tuple(z.shape)}") from None


_ABSENT = (0, 0, 1, 1, 1, 1)  # an operand_t with no data


def _structs(operands) -> _OperandArray:
    """The kernel's ``operand_t[8]``, filled in one call (``operand_t`` is six 8-byte fields)."""
    flat = []
    for op in operands:
        flat.extend(_ABSENT if op is None else (op[0].data_ptr(), *op[1:6]))
    return _OperandArray.from_buffer(_FlatOperands(*flat))


def _exclusive_run(op: tuple, n: int) -> int:
    """For a time-varying operand read in place whose outer run spans all ``n`` columns (a per-sample
    modulation, say), the columns per element of that run (``div``): column chunks aligned to it never
    share an element, so the kernel may sum the operand's gradient in place. Else 0."""
    data, tstride, div, mod, div2, mod2, per_step = op
    if not per_step or tstride * data.shape[0] != data.numel() or data.shape[0] * mod * mod2 != data.numel():
        return 0
    return div if div * mod == n and mod > 1 else 0


def _layout(g: torch.Tensor, k: int, flags: int, full: Sequence[int], population: Sequence[int]) -> Sequence[int]:
    """The shape a gradient output of operand ``k`` is laid out over."""
    if k in F_ACC and flags & F_ACC[k]:
        return g.shape  # the operand's own layout
    return full if g.dim() == 2 else population


def _reduce(g: torch.Tensor, full: Sequence[int], shape: torch.Size) -> torch.Tensor:
    """Sum a gradient laid out over ``full`` (the input, or the population) down to ``shape``."""
    full = tuple(full)
    if len(shape) > len(full):
        full = (1,) * (len(shape) - len(full)) + full
    return g.view(full).sum_to_size(shape)


def run(x: torch.Tensor, params, *, gain=None, shift=None, surrogate=None, detach_reset=False,
        return_membrane=False, reset="zero", v_init=0.0) -> tuple:
    """Run the kernel on checked inputs (``params`` already in ``x``'s dtype); ``(spikes, membrane or None)``.
    (``neuron.run_lif`` sends plain populations to the torch operator, ``native_ops.lif``, instead when it
    is built: the same kernel with its autograd node in C++.)"""
    spikes, membrane = _KernelLIF.apply(x, params.du, params.dv, params.vth, params.bias, params.theta_decay,
                                        params.theta_step, gain, shift,
                                        (surrogate, detach_reset, return_membrane, reset, v_init))
    return spikes, (membrane if return_membrane else None)
