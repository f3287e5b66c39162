"""Starting the processes of a data-parallel run and joining them in a process group.

Two ways in, both torch's own machinery:

* ``torchrun`` (``torch.distributed.run``) starts the processes, on one machine or many, and sets
  ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``process_group()`` joins them
  (``init_method="env://"``).
* ``run_local(fn, nproc, *args)`` starts ``nproc`` processes on this machine with ``torch.multiprocessing``
  (spawn). They meet through a ``TCPStore`` this process serves on a free localhost port (the kernel picks
  it, so two runs never race for one). Each runs ``fn(*args)`` inside the process group; the results come
  back by rank. They start with this process's default dtype (``torch.set_default_dtype``); anything else
  set at run time (a task, mechanism or regulariser registered by the calling script) they do not see.
  When one process fails, the others are stopped (they see the failure at their next collective; SIGTERM
  after a grace period, SIGKILL after another), and the failure of the process that failed first is raised
  here: ``DistributedError`` for a user error (a ``ValueError`` or ``OSError``, as the command line sorts
  them), ``ProcessFailure`` for any other exception, with the process's traceback as its ``__cause__``.

The backend is gloo, or ``cpu:gloo,cuda:nccl`` when a GPU is present (CPU tensors are reduced by gloo,
CUDA tensors by nccl). Inside the group, SIGTERM (what launchers send to stop a process) raises
``SystemExit``, so a process being stopped still runs its cleanup: a half-written file is removed, a
folder without a checkpoint is taken away.
"""
from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import signal
import sys
import threading
import time
import traceback
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .distributed import MAX_PROCESSES, Team
from .errors import (USER_ERRORS, DistributedError, PeerFailure, ProcessFailure, RemoteTraceback, check_int,
                     one_line)

HOST = "127.0.0.1"
GRACE_SECONDS = 5.0  # after a failure, how long the other processes get to stop by themselves (then SIGTERM)
STORE_TIMEOUT = timedelta(minutes=5)  # how long processes wait for each other to start


def backend() -> str:
    """gloo on CPU; with a GPU, gloo for CPU tensors and nccl for CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def launched_world() -> int:
    """The number of processes in this run: the initialised process group's size, else the number a
    launcher such as torchrun started (``WORLD_SIZE``), else 1."""
    return Team.current().size


def _import_before_joining() -> None:
    """Import ``torch._dynamo`` before a process group exists. The first optimiser imports it lazily, and
    when a group exists by then, the import keeps references to it: ``destroy_process_group`` then leaves the
    group alive, and its gloo threads can still be releasing a finished collective while the interpreter
    shuts down, which aborts the process (SIGABRT) after a successful run. Imported first, the group is
    truly destroyed (its threads joined) when the run ends."""
    try:
        importlib.import_module("torch._dynamo")
    except ImportError:  # a torch without it has nothing to keep the group alive either
        pass


def _raise_exit(signum, _frame) -> None:
    raise SystemExit(128 + signum)


@contextlib.contextmanager
def _exit_on_sigterm() -> Iterator[None]:
    """SIGTERM raises SystemExit while inside (main thread only; elsewhere signals cannot be handled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def process_group() -> Iterator[Team]:
    """The team this process belongs to: the initialised process group's; else the one a launcher started
    (joined here, and left on exit); else one process."""
    if dist.is_available() and dist.is_initialized():
        with _exit_on_sigterm():
            yield Team.current()
        return
    if launched_world() == 1:
        yield Team()
        return
    with _exit_on_sigterm():
        _import_before_joining()
        dist.init_process_group(backend(), init_method="env://")
        try:
            yield Team.current()
        finally:
            dist.destroy_process_group()


def _child(rank: int, nproc: int, port: int, fn: Callable, args: tuple, results, threads: Optional[int],
           dtype: torch.dtype) -> None:
    """One spawned process: join the group, run ``fn(*args)``, hand back its result or its failure. A failure
    is reported before the group is left: leaving closes the connections, and the others' errors about
    that must reach the parent after the cause."""
    mp._prctl_pr_set_pdeathsig(signal.SIGINT)  # as torch's spawn does: stop if the parent dies
    sys.unraisablehook = _quiet_stop_in_destructors
    status = 0
    with _exit_on_sigterm():
        if threads is not None:
            torch.set_num_threads(threads)
        torch.set_default_dtype(dtype)  # the caller's: a spawned process starts with float32
        try:
            _import_before_joining()
            store = dist.TCPStore(HOST, port, nproc, is_master=False, timeout=STORE_TIMEOUT)
            dist.init_process_group(backend(), store=store, rank=rank, world_size=nproc)
            value = fn(*args)
        except KeyboardInterrupt:
            results.put((rank, "interrupted", None))
            status = 130
        except MemoryError:
            results.put((rank, "memory", None))
            status = 1
        except Exception as exc:
            results.put((rank, "relayed" if isinstance(exc, PeerFailure) else "failed", _describe(exc)))
            status = 1
        else:
            # pickled by value here: torch's queue would share tensors through this process's memory, gone at exit
            results.put((rank, "ok", pickle.dumps(value)))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    if status:
        sys.exit(status)


def _quiet_stop_in_destructors(unraisable) -> None:
    """A Ctrl-C or SIGTERM that lands while a destructor runs (a progress bar's ``__del__``, say) cannot
    propagate; Python prints it as "Exception ignored in ..." with a traceback, on the terminal the
    processes share. In a spawned process that is noise: the parent stops every process on Ctrl-C and
    prints the one line, so the interrupt is dropped here. Anything else is printed as usual."""
    if isinstance(unraisable.exc_value, (KeyboardInterrupt, SystemExit)):
        return
    sys.__unraisablehook__(unraisable)


def _describe(exc: Exception) -> dict:
    """What the parent needs to raise a failure: one line, whether it is a user error, the traceback."""
    return {"line": one_line(exc), "kind": type(exc).__name__, "user": isinstance(exc, USER_ERRORS),
            "traceback": traceback.format_exc()}


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _failure(nproc: int, reports: list, exitcodes: dict) -> BaseException:
    """The exception for a failed run. A process killed by a signal (not by us: we have not stopped anyone
    yet) without a word is the cause; else the first failure reported (a process reports before it exits,
    and the others' failures, such as a closed connection, follow it), a process's own failure before one
    it relays from another (``PeerFailure``: the relay can be reported first); else the first bad exit status."""
    said = {rank for rank, status, _ in reports if status != "ok"}
    for rank, code in exitcodes.items():
        if code is not None and code < 0 and rank not in said:
            return DistributedError(f"process {rank} of {nproc} was killed by signal {_signal_name(code)}")
    for wanted in (("interrupted", "memory", "failed"), ("relayed",)):
        for rank, status, report in reports:
            if status in wanted:
                return _reported_failure(nproc, rank, status, report)
    for rank, code in exitcodes.items():
        if code:
            return DistributedError(f"process {rank} of {nproc} exited with status {code}")
    return DistributedError(f"the {nproc} processes ended without a result")


def _reported_failure(nproc: int, rank: int, status: str, report: Optional[dict]) -> BaseException:
    if status == "interrupted":
        return KeyboardInterrupt()
    if status == "memory":
        return MemoryError(f"process {rank} of {nproc} ran out of memory")
    if status == "relayed":  # its message names the process that failed
        error: BaseException = DistributedError(report["line"])
    elif report["user"]:
        error = DistributedError(f"process {rank} of {nproc} failed: {report['line']}")
    else:
        error = ProcessFailure(f"process {rank} of {nproc} failed: {report['kind']}: {report['line']}")
    error.__cause__ = RemoteTraceback(report["traceback"])
    return error


def _join_all(processes, seconds: float, results=None) -> list:
    """Wait up to ``seconds`` for ``processes`` to end; return what they report on ``results`` meanwhile."""
    deadline, reports = time.monotonic() + seconds, []
    while True:
        running = [p.sentinel for p in processes if p.exitcode is None]
        if results is not None:  # after the check: a process reports before it ends
            reports += _drain(results)
        left = deadline - time.monotonic()
        if not running or left <= 0:
            return reports
        wait(running, timeout=min(left, 0.2))


def _stop(processes) -> None:
    """Terminate (SIGTERM: the process cleans up), then kill, whatever is still running."""
    for process in processes:
        if process.is_alive():
            process.terminate()
    _join_all(processes, GRACE_SECONDS)
    for process in processes:
        if process.is_alive():
            process.kill()
        process.join()


def threads_per_process(nproc: int) -> Optional[int]:
    """The threads each of ``nproc`` processes of ``run_local`` gets: None (torch's default, which follows
    ``OMP_NUM_THREADS``) when ``OMP_NUM_THREADS`` is set, else the cores this process may run on divided
    by ``nproc``. torchrun differs: it sets ``OMP_NUM_THREADS=1`` unless it is set. Float sums depend on
    the thread count, so the two give the same result to the bit only with the same ``OMP_NUM_THREADS``."""
    if "OMP_NUM_THREADS" in os.environ:
        return None
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // nproc)


def run_local(fn: Callable, nproc: int, *args) -> List[object]:
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine, joined in a process group; return their
    results by rank. ``fn`` and ``args`` must be picklable (``fn`` a module-level function).

    Threads per process: ``threads_per_process``. When a process fails, the others get ``GRACE_SECONDS``
    to notice (their next collective fails) and to report, then SIGTERM, then SIGKILL; the failure of the
    process that failed first is raised (see the module docstring).
    """
    check_int(nproc, "--nproc", low=1, high=MAX_PROCESSES)
    context = mp.get_context("spawn")
    store = dist.TCPStore(HOST, 0, nproc, is_master=True, wait_for_workers=False, timeout=STORE_TIMEOUT)
    settings = (threads_per_process(nproc), torch.get_default_dtype())
    results = context.SimpleQueue()
    processes: list = []
    try:
        for rank in range(nproc):  # started inside the try: if one cannot start, the others are stopped
            process = context.Process(target=_child, args=(rank, nproc, store.port, fn, args, results, *settings),
                                      name=f"spiking-attn-{rank}")
            process.start()
            processes.append(process)
        reports = _watch(processes, results)
    finally:
        _stop(processes)
        del store
    values = {rank: pickle.loads(value) for rank, status, value in reports if status == "ok"}
    if len(values) != nproc:
        raise _failure(nproc, reports, {rank: p.exitcode for rank, p in enumerate(processes)})
    return [values[rank] for rank in range(nproc)]


def _watch(processes, results) -> list:
    """Wait for every process to end and return their reports; raise the run's failure if one fails."""
    nproc, reports = len(processes), []
    exitcodes = {rank: None for rank in range(nproc)}
    while None in exitcodes.values():
        waiting = {p.sentinel: rank for rank, p in enumerate(processes) if exitcodes[rank] is None}
        ready = wait(list(waiting), timeout=0.2)
        reports += _drain(results)
        for sentinel in ready:
            processes[waiting[sentinel]].join()
            exitcodes[waiting[sentinel]] = processes[waiting[sentinel]].exitcode
        if any(exitcodes.values()):
            # the others stop by themselves at their next collective; what they report meanwhile may
            # include the cause (a process relaying rank 0's failure can end before rank 0 reports it)
            reports += _join_all(processes, GRACE_SECONDS, results)
            raise _failure(nproc, reports, exitcodes)
    return reports + _drain(results)


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items
