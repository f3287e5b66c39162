"""The LIF kernel as a torch operator (``csrc/torch_ops.cpp``): ``torch.ops.spiking_attn.lif``; and causal
linear attention on spikes as a running-state scan (``csrc/causal_scan.cpp``): ``torch.ops.spiking_attn.causal_scan``.

The C kernel (``lif_kernel.c``) is the one ``lif_kernel.py`` drives through ctypes; here it is linked into
a library with a C++ autograd node, so that a call and its backward pass cost a few microseconds of
bookkeeping instead of a Python ``autograd.Function`` (tens of microseconds per call, as much as the
arithmetic of a small population), and its column chunks run on torch's intra-op thread pool.

Importing this module registers a fork hook: in a child made by ``fork``, torch runs on one thread
(``_one_thread_in_forked_child``), since OpenMP's pool does not survive a fork and a parallel region there,
the operator's or torch's around it, would wait forever.

The library is compiled on first use (its source files in parallel) against the installed torch's headers, into the
LIF kernel's cache directory (``lif_kernel._cached_library``), keyed by a hash of the sources,
the flags and the torch version; ``make install`` builds it once. If it cannot be built (no C++ compiler,
no torch headers), every call runs the ctypes path and ``status()`` says why. ``SPIKING_ATTN_TORCH_OPS=0``
in the environment, or ``set_enabled(False)``, turns the operator off, for comparisons.

Which calls take the operator is decided by ``lif_eligible`` (a plain population); every other call runs
the ctypes path. Results do not depend on the choice: the same kernel runs either way, so spikes and
input gradients are identical bit for bit (parameter gradients up to the order of their final sums).
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from .lif_kernel import CSRC, FLAGS, SUFFIX, SURROGATE_KINDS, _c_compiler, _cached_library

log = logging.getLogger(__name__)

C_SOURCES = (CSRC / "lif_kernel.c",)
HEADERS = (CSRC / "lif_kernel_body.h",)
CXX_SOURCES = (CSRC / "torch_ops.cpp", CSRC / "causal_scan.cpp", CSRC / "spike_linear.cpp", CSRC / "batchnorm_lif.cpp")
CXX_FLAGS = ["-O2", "-std=c++17", "-fPIC", "-fopenmp", "-Wno-c++20-extensions"]
# batchnorm_lif.cpp recomputes the forward pass's membranes in its backward pass, from loops written apart:
# without contraction of a * b + c into one rounding, both give the same bits, as in the C kernel (FLAGS)
SOURCE_FLAGS = {"batchnorm_lif.cpp": ["-O3", "-ffp-contract=off", "-Wno-psabi"]}

# The opt-in options (each changes results by rounding, so off by default), by the name that train(),
# the command line (--sparse-products, --fused-batchnorm) and metrics.json use; SPIKING_ATTN_<NAME>=1 in the
# environment turns one on at import.
OPTIONS = ("sparse_products", "fused_batchnorm")

_lock = threading.Lock()
_state: dict = {"ops": None, "tried": False, "error": None,
                "enabled": os.environ.get("SPIKING_ATTN_TORCH_OPS", "1") not in ("0", ""),
                **{name: os.environ.get(f"SPIKING_ATTN_{name.upper()}", "0") not in ("0", "") for name in OPTIONS}}


def _one_thread_in_forked_child() -> None:
    # torch's intra-op pool is OpenMP's, and GNU OpenMP's threads do not exist in a child made by fork: any
    # parallel region there (the operator's own column split, or a copy or sum torch makes for it) would
    # wait forever once the parent has used the pool. Lava forks its processes. One thread in the child,
    # as torch's DataLoader sets for its workers.
    torch.set_num_threads(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_one_thread_in_forked_child)


def _run(command: list) -> None:
    proc = subprocess.run(command, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(command[0]).name} failed: {proc.stderr.strip()[-800:]}")


def build() -> Path:
    """Compile the operator library (once: it is cached) and return its path."""
    target = _cached_library("torch_ops", (*C_SOURCES, *HEADERS, *CXX_SOURCES),
                             " ".join(CXX_FLAGS) + repr(sorted(SOURCE_FLAGS.items())) + " torch " + torch.__version__)
    if target.exists():
        return target
    cc = _c_compiler()
    cxx = shutil.which(os.environ.get("CXX", "c++")) or shutil.which("g++")
    if cc is None or cxx is None:
        raise RuntimeError("no C and C++ compiler found")
    from torch.utils.cpp_extension import include_paths, library_paths

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=target.parent))
    try:
        abi = int(torch._C._GLIBCXX_USE_CXX11_ABI)
        compiles = [[cc, *[f for f in FLAGS if f != "-shared"], "-c", str(source), "-o", str(work / (source.stem + ".o"))]
                    for source in C_SOURCES]
        compiles += [[cxx, *CXX_FLAGS, *SOURCE_FLAGS.get(source.name, []), f"-D_GLIBCXX_USE_CXX11_ABI={abi}", *[f"-I{p}" for p in include_paths()],
                      "-c", str(source), "-o", str(work / (source.stem + ".o"))] for source in CXX_SOURCES]
        # each C++ file takes 15-20 s of compiling against torch's headers: in parallel, about one file's time
        with ThreadPoolExecutor(max_workers=max(1, min(len(compiles), os.cpu_count() or 1, 4))) as pool:
            for done in [pool.submit(_run, command) for command in compiles]:
                done.result()  # (the first failure's message; the pool waits for the others first)
        lib_dirs = library_paths()
        tmp = work / "torch_ops.so"
        _run([cxx, *CXX_FLAGS, "-shared", *[command[-1] for command in compiles], "-o", str(tmp),
              *[f"-L{p}" for p in lib_dirs], "-ltorch_cpu", "-lc10", "-ltorch", "-lm",
              *[f"-Wl,-rpath,{p}" for p in lib_dirs]])
        os.replace(tmp, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def ops():
    """``torch.ops.spiking_attn`` once the library is loaded, else None (see ``status()``)."""
    if not _state["enabled"]:
        return None
    if _state["tried"]:
        return _state["ops"]
    with _lock:
        if not _state["tried"]:
            try:
                torch.ops.load_library(str(build()))
                _state["ops"] = torch.ops.spiking_attn
            except (OSError, RuntimeError) as exc:
                _state["error"] = str(exc)
                log.warning("compiled torch operator unavailable (%s); the LIF kernel runs through ctypes", exc)
            _state["tried"] = True
    return _state["ops"]


def status() -> str:
    """'compiled', 'disabled' (``set_enabled(False)`` or ``SPIKING_ATTN_TORCH_OPS=0``), or 'unavailable (<reason>)'."""
    if not _state["enabled"]:
        return "disabled"
    return "compiled" if ops() is not None else f"unavailable ({_state['error']})"


def set_enabled(enabled: bool) -> bool:
    """Turn the operator on or off for every later call; returns the previous setting."""
    from .errors import check_bool

    previous, _state["enabled"] = _state["enabled"], check_bool(enabled, "enabled")
    return previous


# ---------------------------------------------------------------------------------------------------
# LIF


def _per_channel_or_scalar(p: torch.Tensor, channels: int) -> bool:
    if p.numel() == 1:
        return True
    return p.shape[-1] == channels and p.numel() == channels


def lif_eligible(x: torch.Tensor, params, gain, shift, surrogate, return_membrane: bool) -> bool:
    """Whether ``lif`` can run this call: a CPU float32/float64 input, a plain population (parameters
    that are scalars or one per channel of the last axis, no modulation, no adaptive threshold, no
    membrane output) and a surrogate the kernel knows."""
    if gain is not None or shift is not None or return_membrane or params.theta_step is not None:
        return False
    if type(surrogate) not in SURROGATE_KINDS or x.dim() < 2 or x.dtype not in SUFFIX or x.device.type != "cpu":
        return False
    channels, ndim = x.shape[-1], x.dim() - 1
    return all(p.dim() <= ndim and _per_channel_or_scalar(p, channels)
               for p in (params.du, params.dv, params.vth, params.bias))


def lif(x: torch.Tensor, params, surrogate, detach_reset: bool, reset: str, v_init: float,
        where: str = "") -> torch.Tensor:
    """The spikes of a plain population (``lif_eligible`` must hold), through ``torch.ops.spiking_attn.lif``.
    The operator checks the parameters' values against their domains; ``where`` prefixes the message."""
    from .errors import NonFiniteError, SpikingAttnError
    from .neuron import check_params

    try:
        return _state["ops"].lif(x, params.du, params.dv, params.vth, params.bias, SURROGATE_KINDS[type(surrogate)],
                                 float(getattr(surrogate, "alpha", 0.0)), bool(detach_reset), reset == "subtract",
                                 float(v_init))
    except RuntimeError as exc:
        message = str(exc)
        if "spiking_attn-nonfinite: " in message:
            raise NonFiniteError(message.split("spiking_attn-nonfinite: ", 1)[1].splitlines()[0]) from None
        if "spiking_attn-params: " in message:
            try:
                check_params(params, where)  # the general path's own message
            except SpikingAttnError as found:
                raise found from None
        raise


# ---------------------------------------------------------------------------------------------------
# Causal linear attention on spikes


def _operator_takes(*tensors: torch.Tensor) -> bool:
    """Whether a compiled operator can take these operands: it is loaded, they are CPU tensors of one float
    dtype, and ``torch.compile`` is not tracing (the operators have no fake-tensor rules)."""
    first = tensors[0]
    return (not torch.compiler.is_compiling() and ops() is not None and first.dtype in SUFFIX
            and all(t.dtype == first.dtype and t.device.type == "cpu" for t in tensors))


def scan_eligible(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether ``causal_scan`` can run these operands: the operator is loaded, and q, k, v are CPU tensors
    of one float dtype, ``[..., N, D]`` with q and k of one shape and v matching them but in the last
    axis; not while ``torch.compile`` traces (the operator has no fake-tensor rule)."""
    return (q.dim() >= 2 and q.shape == k.shape and v.dim() == q.dim() and v.shape[:-1] == q.shape[:-1]
            and _operator_takes(q, k, v))


def causal_scan(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``out_i = sum_{j <= i} (q_i . k_j) v_j`` over ``[..., N, D]`` heads, through
    ``torch.ops.spiking_attn.causal_scan`` (``csrc/causal_scan.cpp``: one pass over the tokens with the
    running state ``sum_j k_j^T v_j``, skipping zero entries; ``scan_eligible`` must hold). On spikes the
    output equals the masked quadratic product bit for bit."""
    return _state["ops"].causal_scan(q, k, v)


# ---------------------------------------------------------------------------------------------------
# Weight products that skip the zeros of their input (opt-in)

SPARSE_MAX_DENSITY = 0.5  # above this fraction of nonzero inputs, the BLAS product is the faster one


def set_sparse_products(enabled: bool) -> bool:
    """Run the forward product of every ``LinearBN`` through ``spike_linear`` (skipping the zeros of its
    input) from now on, or not; returns the previous setting. Off by default: the sum runs in another
    order than the BLAS product's, so results differ by rounding from a run without it, and every
    trained figure in the README was made without it. ``SPIKING_ATTN_SPARSE_PRODUCTS=1`` in the
    environment turns it on at import (so also for the command line, and for every process of a
    multi-process run, which this call does not reach: ``train(nproc=N)`` starts fresh processes); a
    run's ``metrics.json`` records the setting as ``sparse_products``. A ``LinearBN`` whose ``Linear``
    has hooks (the operation counter, the spike-driven report) calls it as usual."""
    return set_option("sparse_products", enabled)


def sparse_products_enabled() -> bool:
    return _state["sparse_products"]


def option(name: str) -> bool:
    """The current setting of the opt-in option ``name`` (one of ``OPTIONS``)."""
    from .errors import check_choice

    return _state[check_choice(name, "option", OPTIONS)]


def set_option(name: str, enabled: bool) -> bool:
    """Set the opt-in option ``name`` (one of ``OPTIONS``) for every later call; returns the previous setting."""
    from .errors import check_bool, check_choice

    check_choice(name, "option", OPTIONS)
    previous, _state[name] = _state[name], check_bool(enabled, "enabled")
    return previous


def spike_linear_eligible(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """Whether ``spike_linear`` runs this product: sparse products on (``set_sparse_products``), the
    operator loaded, 2-D CPU float operands of one dtype, and not under ``torch.compile``."""
    return _state["sparse_products"] and x.dim() == 2 and weight.dim() == 2 and _operator_takes(x, weight)


def spike_linear(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """``x @ weight.T`` for ``x`` ``[M, K]`` and ``weight`` ``[N, K]`` through
    ``torch.ops.spiking_attn.spike_linear`` (``csrc/spike_linear.cpp``): the forward pass adds, per row
    of ``x``, the rows of ``weight.T`` that its nonzero entries select; if more than
    ``SPARSE_MAX_DENSITY`` of ``x`` is nonzero, the BLAS product. Backward: two BLAS products."""
    return _state["ops"].spike_linear(x, weight, SPARSE_MAX_DENSITY)


# ---------------------------------------------------------------------------------------------------
# BatchNorm and the population after it in one operator (opt-in)


def set_fused_batchnorm(enabled: bool) -> bool:
    """Run a training-mode ``LinearBN`` and the plain population it feeds as one operator,
    ``batchnorm_lif`` (``csrc/batchnorm_lif.cpp``: the normalised current never reaches memory), from now
    on, or not; returns the previous setting. Off by default for the reason ``set_sparse_products`` is:
    the statistics and gradient sums run in another order than ``nn.BatchNorm1d``'s, so results differ
    by rounding. ``SPIKING_ATTN_FUSED_BATCHNORM=1`` in the environment turns it on at import; a run's
    ``metrics.json`` records it as ``fused_batchnorm``. Where the pair cannot be fused (``fusable``), the
    two modules run as usual."""
    return set_option("fused_batchnorm", enabled)


def fused_batchnorm_enabled() -> bool:
    return _state["fused_batchnorm"]


def _plain_batchnorm(bn: torch.nn.Module) -> bool:
    """A training-mode ``nn.BatchNorm1d`` itself, with a weight and a bias, and its running statistics if it tracks
    them: not a subclass or another norm (``GlobalBatchNorm`` of a multi-process run takes its statistics over
    every process, which the kernel does not)."""
    return (type(bn) is torch.nn.BatchNorm1d and bn.training and bn.weight is not None and bn.bias is not None
            and (not bn.track_running_stats or all(t is not None for t in (bn.running_mean, bn.running_var,
                                                                             bn.num_batches_tracked))))


def fusable(y: torch.Tensor, bn: torch.nn.BatchNorm1d, population) -> bool:
    """Whether ``batchnorm_lif`` can run ``population(bn(y))`` for a weight layer's output ``y``
    ``[T, ..., C]``: ``batchnorm_eligible`` for its rows (fusing on, the operator loaded, ``bn`` a
    training-mode ``nn.BatchNorm1d`` over C), and ``population`` a plain native one (``lif_eligible``) with a synaptic decay
    of 1 (no current state), reset to zero, and no parameter that learns."""
    from .neuron import LIFPopulation

    if not (type(population) is LIFPopulation and population.engine == "native" and population.reset == "zero"
            and y.dim() >= 3 and batchnorm_eligible(y.reshape(-1, y.shape[-1]), bn)):
        return False
    params = population.params()
    if any(p.requires_grad for _, p in params.items()) or not lif_eligible(y, params, None, None, population.surrogate,
                                                                         False):
        return False
    du = params.du
    return bool(du.item() == 1.0) if du.numel() == 1 else bool(du.eq(1).all())


def _update_running_stats(bn: torch.nn.BatchNorm1d, mean: torch.Tensor, var: torch.Tensor, rows: int) -> None:
    """``bn``'s running statistics after a batch of ``rows`` rows with batch ``mean`` and biased ``var``, as
    ``nn.BatchNorm1d`` updates them: by its momentum, or a cumulative average when that is None."""
    if not bn.track_running_stats:
        return
    with torch.no_grad():
        bn.num_batches_tracked.add_(1)
        factor = 1.0 / float(bn.num_batches_tracked) if bn.momentum is None else bn.momentum
        bn.running_mean.mul_(1 - factor).add_(mean.to(bn.running_mean), alpha=factor)
        bn.running_var.mul_(1 - factor).add_(var.to(bn.running_var) * (rows / (rows - 1)), alpha=factor)


def _nonfinite(exc: RuntimeError) -> None:
    """Re-raise the operators' NaN message as ``NonFiniteError``; return for any other error."""
    from .errors import NonFiniteError

    message = str(exc)
    if "spiking_attn-nonfinite: " in message:
        raise NonFiniteError(message.split("spiking_attn-nonfinite: ", 1)[1].splitlines()[0]) from None


def batchnorm_eligible(rows: torch.Tensor, bn: torch.nn.BatchNorm1d) -> bool:
    """Whether ``batchnorm`` can run ``bn(rows)``: fused BatchNorm on (``set_fused_batchnorm``), the operator
    loaded, ``bn`` a training-mode affine ``nn.BatchNorm1d`` (not a subclass: ``_plain_batchnorm``) over the C of
    ``rows`` ``[R, C]``, R > 1."""
    return (_state["fused_batchnorm"] and _plain_batchnorm(bn) and rows.dim() == 2 and rows.shape[0] > 1
            and bn.num_features == rows.shape[1] and _operator_takes(rows, bn.weight, bn.bias))


def batchnorm(rows: torch.Tensor, bn: torch.nn.BatchNorm1d) -> torch.Tensor:
    """``bn(rows)`` in training mode through ``torch.ops.spiking_attn.batchnorm`` (``batchnorm_eligible`` must
    hold), with ``bn``'s running statistics updated."""
    try:
        z, mean, var = _state["ops"].batchnorm(rows, bn.weight, bn.bias, float(bn.eps))
    except RuntimeError as exc:
        _nonfinite(exc)
        raise
    _update_running_stats(bn, mean, var, rows.shape[0])
    return z


def batchnorm_lif(y: torch.Tensor, bn: torch.nn.BatchNorm1d, population, where: str = "") -> torch.Tensor:
    """``population(bn(y))`` for ``y`` ``[T, ..., C]`` in one operator (``fusable`` must hold), with
    ``bn``'s running statistics updated. Spikes ``[T, ..., C]``."""
    from .errors import SpikingAttnError
    from .neuron import check_params

    params = population.params().to(y)
    rows = y.reshape(-1, y.shape[-1])
    try:
        spikes, mean, var = _state["ops"].batchnorm_lif(
            rows, bn.weight, bn.bias, y.shape[0], float(bn.eps), params.dv, params.vth, params.bias,
            SURROGATE_KINDS[type(population.surrogate)], float(getattr(population.surrogate, "alpha", 0.0)),
            bool(population.detach_reset), float(population.v_init))
    except RuntimeError as exc:
        _nonfinite(exc)
        if "spiking_attn-params: " in str(exc):
            try:
                check_params(params, where)  # the general path's own message
            except SpikingAttnError as found:
                raise found from None
        raise
    _update_running_stats(bn, mean, var, rows.shape[0])
    return spikes.reshape(y.shape)
