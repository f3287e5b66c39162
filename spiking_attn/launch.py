"""Starting the processes of a data-parallel run and joining them in a process group.

Two ways in, both torch's own machinery:

* ``torchrun`` (``torch.distributed.run``) starts the processes, on one machine or many, and sets
  ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT``; ``process_group()`` joins them
  (``init_method="env://"``).
* ``run_local(fn, nproc, *args)`` starts ``nproc`` processes on this machine with ``torch.multiprocessing``
  (spawn). They meet through a ``TCPStore`` this process serves on a free localhost port (the kernel picks
  it, so two runs never race for one). Each runs ``fn(*args)`` inside the process group; the results come
  back by rank. When one process fails, the others are stopped (they see the failure at their next
  collective; SIGTERM after a grace period, SIGKILL after another) and ``DistributedError`` names the first
  failure in one line.

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
from datetime import timedelta
from multiprocessing.connection import wait
from typing import Callable, Iterator, List, Optional

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .distributed import Team, one_line
from .errors import DistributedError, check_int

HOST = "127.0.0.1"
GRACE_SECONDS = 5.0  # after a failure, how long the other processes get to stop by themselves (then SIGTERM)
STORE_TIMEOUT = timedelta(minutes=5)  # how long processes wait for each other to start


def backend() -> str:
    """gloo on CPU; with a GPU, gloo for CPU tensors and nccl for CUDA tensors."""
    return "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"


def launched_world() -> int:
    """The number of processes in this run: the initialised process group's size, else the number a
    launcher such as torchrun started (``WORLD_SIZE``), else 1."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    text = os.environ.get("WORLD_SIZE", "1")
    try:
        size = int(text)
    except ValueError:
        raise DistributedError(f"WORLD_SIZE must be a positive integer, got {text!r}") from None
    if size < 1:
        raise DistributedError(f"WORLD_SIZE must be a positive integer, got {text!r}")
    return size


def is_leader_process() -> bool:
    """False in the processes of rank 1 and up of a launched run (they print nothing)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return os.environ.get("RANK", "0") == "0"


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


def _child(rank: int, nproc: int, port: int, fn: Callable, args: tuple, results, threads: Optional[int]) -> None:
    """One spawned process: join the group, run ``fn(*args)``, hand back its result or its failure. A failure
    is reported before the group is left: leaving closes the connections, and the others' errors about
    that must reach the parent after the cause."""
    status = 0
    with _exit_on_sigterm():
        if threads is not None:
            torch.set_num_threads(threads)
        try:
            _import_before_joining()
            store = dist.TCPStore(HOST, port, nproc, is_master=False, timeout=STORE_TIMEOUT)
            dist.init_process_group(backend(), store=store, rank=rank, world_size=nproc)
            value = fn(*args)
        except KeyboardInterrupt:
            results.put((rank, "interrupted", ""))
            status = 130
        except MemoryError:
            results.put((rank, "memory", "out of memory"))
            status = 1
        except Exception as exc:
            results.put((rank, "failed", one_line(exc)))
            status = 1
        else:
            # pickled by value here: torch's queue would share tensors through this process's memory, gone at exit
            results.put((rank, "ok", pickle.dumps(value)))
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    if status:
        sys.exit(status)


def _signal_name(exitcode: int) -> str:
    try:
        return signal.Signals(-exitcode).name
    except ValueError:
        return f"signal {-exitcode}"


def _failure(nproc: int, reports: list, exitcodes: dict) -> BaseException:
    """The exception for a failed run. A process killed by a signal (not by us: we have not stopped anyone
    yet) without a word is the cause; else the first failure reported (a process reports before it exits,
    and the others' failures, such as a closed connection, follow it); else the first bad exit status."""
    said = {rank for rank, status, _ in reports if status != "ok"}
    for rank, code in exitcodes.items():
        if code is not None and code < 0 and rank not in said:
            return DistributedError(f"process {rank} of {nproc} was killed by signal {_signal_name(code)}")
    for rank, status, message in reports:
        if status == "interrupted":
            return KeyboardInterrupt()
        if status == "memory":
            return MemoryError(f"process {rank} of {nproc} ran out of memory")
        if status == "failed":
            return DistributedError(f"process {rank} of {nproc} failed: {message}")
    for rank, code in exitcodes.items():
        if code:
            return DistributedError(f"process {rank} of {nproc} exited with status {code}")
    return DistributedError(f"the {nproc} processes ended without a result")


def _join_all(processes, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))


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


def run_local(fn: Callable, nproc: int, *args) -> List[object]:
    """Run ``fn(*args)`` in ``nproc`` new processes on this machine, joined in a process group; return their
    results by rank. ``fn`` and ``args`` must be picklable (``fn`` a module-level function).

    Each process gets ``cpu_count // nproc`` threads unless ``OMP_NUM_THREADS`` is set (as torchrun does).
    When a process fails, the others get ``GRACE_SECONDS`` to notice (their next collective fails), then
    SIGTERM, then SIGKILL; ``DistributedError`` names the process that failed first.
    """
    check_int(nproc, "--nproc", low=1, high=4096)
    store = dist.TCPStore(HOST, 0, nproc, is_master=True, wait_for_workers=False, timeout=STORE_TIMEOUT)
    threads = None if "OMP_NUM_THREADS" in os.environ else max(1, (os.cpu_count() or 1) // nproc)
    results = mp.get_context("spawn").SimpleQueue()
    processes = mp.start_processes(_child, args=(nproc, store.port, fn, args, results, threads), nprocs=nproc,
                                   join=False, start_method="spawn").processes
    reports: list = []
    exitcodes = {rank: None for rank in range(nproc)}
    try:
        while None in exitcodes.values():
            waiting = {p.sentinel: rank for rank, p in enumerate(processes) if exitcodes[rank] is None}
            ready = wait(list(waiting), timeout=0.2)
            reports += _drain(results)
            for sentinel in ready:
                processes[waiting[sentinel]].join()
                exitcodes[waiting[sentinel]] = processes[waiting[sentinel]].exitcode
            if any(exitcodes.values()):
                failure = _failure(nproc, reports, exitcodes)
                _join_all(processes, GRACE_SECONDS)  # the others stop by themselves at their next collective
                raise failure
        reports += _drain(results)
    finally:
        _stop(processes)
        del store
    values = {rank: pickle.loads(value) for rank, status, value in reports if status == "ok"}
    if len(values) != nproc:
        raise _failure(nproc, reports, exitcodes)
    return [values[rank] for rank in range(nproc)]


def _drain(queue) -> list:
    items = []
    while not queue.empty():
        items.append(queue.get())
    return items
