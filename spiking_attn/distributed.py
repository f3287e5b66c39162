"""Data-parallel training: how N processes share every batch and put the pieces back together.

A ``Team`` is the processes of one run (``rank`` of ``size``). ``--batch-size`` stays the global batch: every
process draws the same global batch, in the same order, with the same augmentation, and keeps its own
contiguous rows (``Team.rows``). The run then equals the one-process run, up to the order of float sums:

* Random draws: all of them come from one generator per epoch (``training._train_epoch``). Every process
  draws the global batch's order and augmentation and keeps its rows; inside ``Team.shard`` the rate
  encoder draws its spikes for the whole global batch too (``Shard.bernoulli``) and keeps its rows, so the
  generator advances identically everywhere and every sample gets the spikes it gets in one process.
* BatchNorm: the statistics of the global batch (``global_batchnorm.GlobalBatchNorm``).
* Regularisers: they read the global batch's signals (``Team.gather``): the reported tensors and the
  population spikes are gathered along their batch axis (``REPORT_LAYOUT``) with autograd, so the value and
  the gradient are those of the global batch.
* Loss and gradients: process p's loss is ``n_p / n`` times its label loss plus ``1 / size`` of the
  (identical) regulariser penalty, so the losses sum to the global loss; the gradients are summed across
  processes after ``backward`` (``Team.reduce_gradients``), and every process takes the same optimiser step.

In one process (``SOLO``) every method is the identity, so single-process training is unchanged.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Callable, Dict, Iterator, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from .errors import DistributedError, PeerFailure, ShapeError, check_int, one_line
from .regularizers import RegularizerInputs

MAX_PROCESSES = 4096
MEAN = "mean"  # a report that is already a mean over the batch's samples
# How each signal that mechanisms report (auxiliary.report) spans the batch: its batch axis (counted from
# the end, so that [T, B, ...] and [B, ...] layouts agree), or MEAN. Population spikes are [T, B, ...].
REPORT_LAYOUT: Dict[str, object] = {"arousal": -2, "heads": -4, "free_energy": MEAN}
SPIKES_AXIS = 1


@dataclass(frozen=True)
class Shard:
    """Rows ``rows`` of a global batch of ``total`` samples: what one process computes."""

    rows: slice
    total: int

    def bernoulli(self, probs: torch.Tensor, generator: Optional[torch.Generator], axis: int) -> torch.Tensor:
        """``torch.bernoulli(probs)`` for this shard's rows of the global batch: the draw is made for the global
        batch (other rows have probability 0; the CPU kernel draws one number per element whatever the
        probability), so the generator advances as in one process, and these rows get the same spikes."""
        count = self.rows.stop - self.rows.start
        if probs.shape[axis] != count:
            raise ShapeError(f"the encoder's input has {probs.shape[axis]} samples along axis {axis}, but this "
                             f"process's share of the batch is {count}")
        shape = list(probs.shape)
        shape[axis] = self.total
        full = probs.new_zeros(shape)  # [T, total, ...]
        full.narrow(axis, self.rows.start, count).copy_(probs)
        return torch.bernoulli(full, generator=generator).narrow(axis, self.rows.start, count)


_SHARD: ContextVar[Optional[Shard]] = ContextVar("spiking_attn_shard", default=None)


class _AllReduceSum(torch.autograd.Function):
    """The sum over processes, with its gradient: every process's loss depends on the sum, so the gradient
    of the total loss with respect to each process's input is the sum of the processes' output gradients."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor, group) -> torch.Tensor:
        ctx.group = group
        total = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        total = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(total, group=ctx.group)
        return total, None


def all_reduce_sum(tensor: torch.Tensor, group=None) -> torch.Tensor:
    """``tensor`` summed over the processes of ``group`` (default: all), differentiable."""
    return _AllReduceSum.apply(tensor, group)


def current_shard() -> Optional[Shard]:
    """The shard of the global batch the model is running on inside ``Team.shard``, or None."""
    return _SHARD.get()


def check_processes(nproc: object, batch_size: int, train_size: int, name: str = "--nproc") -> int:
    """Return ``nproc`` if ``nproc`` processes can share every batch of an epoch, else raise naming ``name``."""
    check_int(nproc, name, low=1, high=MAX_PROCESSES)
    if nproc > batch_size:
        raise DistributedError(f"{name} {nproc} is more than the global batch (--batch-size {batch_size}); every "
                               "process needs at least one sample of each batch")
    if batch_size % nproc:
        raise DistributedError(f"{name} {nproc} does not divide the global batch (--batch-size {batch_size}); each "
                               "process takes batch-size/nproc samples of every batch")
    tail = train_size % batch_size
    if 0 < tail < nproc:
        raise DistributedError(f"{name} {nproc}: the last batch of an epoch holds {tail} sample(s) ({train_size} "
                               f"training samples, --batch-size {batch_size}), fewer than the processes; choose "
                               "a batch size that leaves none or at least one per process")
    return nproc


class _GlobalReports(Mapping):
    """The reports of the global batch, gathered on first reading (only the signals a regulariser reads
    cross between processes). Every process reads them in the same order, as it runs the same code."""

    def __init__(self, team: "Team", local: Mapping, counts: List[int]) -> None:
        self._team, self._local, self._counts = team, local, counts
        self._gathered: Dict[str, List[torch.Tensor]] = {}

    def __getitem__(self, name: str) -> List[torch.Tensor]:
        if name not in self._gathered:
            values = self._local[name]  # KeyError if nobody reported it
            if name not in REPORT_LAYOUT:
                raise DistributedError(f"the reported signal {name!r} has no entry in distributed.REPORT_LAYOUT, "
                                       "so a regulariser cannot read it across processes; add its batch axis")
            self._gathered[name] = [self._team.combine(v, REPORT_LAYOUT[name], self._counts) for v in values]
        return self._gathered[name]

    def __iter__(self):
        return iter(self._local)

    def __len__(self) -> int:
        return len(self._local)


@dataclass(frozen=True)
class Team:
    """The ``size`` processes training one model; this one is ``rank``. ``Team()`` is one process."""

    rank: int = 0
    size: int = 1

    @classmethod
    def current(cls) -> "Team":
        """The team of the initialised default process group; else the one a launcher such as torchrun
        announced (``RANK`` of ``WORLD_SIZE``, not joined yet); else one process."""
        if dist.is_available() and dist.is_initialized():
            return cls(dist.get_rank(), dist.get_world_size())
        size = _launcher_number("WORLD_SIZE", 1, "a positive integer", low=1)
        if size == 1:
            return cls()
        return cls(_launcher_number("RANK", 0, f"an integer in [0, {size - 1}] (WORLD_SIZE {size})", 0, size - 1),
                   size)

    @property
    def leader(self) -> bool:
        """Rank 0 writes the files and evaluates."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1

    def counts(self, batch: int) -> List[int]:
        """Samples of a global batch of ``batch`` per process (they differ by at most one)."""
        return [batch // self.size + (1 if r < batch % self.size else 0) for r in range(self.size)]

    def rows(self, batch: int) -> slice:
        """This process's rows of a global batch of ``batch`` samples."""
        counts = self.counts(batch)
        start = sum(counts[:self.rank])
        return slice(start, start + counts[self.rank])

    def shard(self, batch: int):
        """Context in which the model runs on this process's rows of a global batch of ``batch``."""
        if not self.active:
            return contextlib.nullcontext()
        return _shard_context(Shard(self.rows(batch), batch))

    def share(self, loss: torch.Tensor, batch: int) -> torch.Tensor:
        """This process's part of a global mean loss, from the mean over its rows."""
        if not self.active:
            return loss
        return loss * (self.counts(batch)[self.rank] / batch)

    def share_replicated(self, value: torch.Tensor) -> torch.Tensor:
        """This process's part of a term every process computes whole (a regulariser of the global batch)."""
        return value / self.size if self.active else value

    def gather(self, inputs: RegularizerInputs, batch: int) -> RegularizerInputs:
        """The regulariser inputs of the global batch, from this process's (with gradients)."""
        if not self.active:
            return inputs
        counts = self.counts(batch)
        spikes = [self.combine(s, SPIKES_AXIS, counts) for s in inputs.spikes]
        return RegularizerInputs(_GlobalReports(self, inputs.reports, counts), spikes, inputs.target_rate)

    def combine(self, value: torch.Tensor, layout, counts: List[int]) -> torch.Tensor:
        """The global batch's tensor from every process's ``value``: concatenated along the batch axis
        ``layout``, or for ``MEAN`` the mean weighted by the processes' samples."""
        if layout == MEAN:
            return all_reduce_sum(value * (counts[self.rank] / sum(counts)))
        axis = layout % value.dim()
        local = value.shape[axis]
        if local % counts[self.rank]:
            raise ShapeError(f"a reported tensor of shape {tuple(value.shape)} has {local} entries along its batch "
                             f"axis {layout}, not a multiple of this process's {counts[self.rank]} samples")
        sizes = [c * (local // counts[self.rank]) for c in counts]

        def zeros(n: int) -> torch.Tensor:
            return value.new_zeros(*value.shape[:axis], n, *value.shape[axis + 1:])

        # every process puts its rows at their place in a zero tensor of the global size; the sum is the whole
        padded = torch.cat([zeros(sum(sizes[:self.rank])), value, zeros(sum(sizes[self.rank + 1:]))], dim=axis)
        return all_reduce_sum(padded)

    def reduce_gradients(self, parameters) -> None:
        """Sum the gradients of ``parameters`` over the processes, in one all-reduce. A parameter keeps no
        gradient (None) only if no process gave it one."""
        if not self.active:
            return
        params = [p for p in parameters if p.requires_grad]
        if not params:
            return
        dtype = params[0].dtype
        has = torch.tensor([p.grad is not None for p in params], dtype=dtype)
        flat = torch.cat([has, *((p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).to(dtype)
                                 for p in params)])
        dist.all_reduce(flat)
        offset = len(params)
        for i, p in enumerate(params):
            n = p.numel()
            if flat[i] > 0:
                p.grad = flat[offset:offset + n].view_as(p).to(p.dtype)
            offset += n

    def sum(self, values: List[float]) -> List[float]:
        """Each number summed over the processes (float64)."""
        if not self.active:
            return list(values)
        t = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(t)
        return t.tolist()

    def leader_does(self, fn: Callable[[], object]):
        """Run ``fn`` on rank 0 and return its result on every process (a barrier too: nobody goes on
        before rank 0 has finished). If it fails there, the others raise ``PeerFailure`` (a launcher that
        reports the first failure prefers rank 0's own)."""
        if not self.active:
            return fn()
        box: list = [None]
        if self.leader:
            try:
                box[0] = ("ok", fn())
            except Exception as exc:
                box[0] = ("failed", one_line(exc, kind=True))
                dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
                raise
        dist.broadcast_object_list(box, src=0, device=torch.device("cpu"))
        status, value = box[0]
        if status != "ok":
            raise PeerFailure(f"process 0 of {self.size} failed: {value}")
        return value

    @torch.no_grad()
    def align(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every process (they already agree when every process
        built the model from the same seed; this makes sure, across machines too)."""
        if not self.active:
            return
        for tensor in (*module.parameters(), *module.buffers()):
            dist.broadcast(tensor.data, src=0)


def _launcher_number(name: str, default: int, allowed: str, low: int, high: Optional[int] = None) -> int:
    """The integer a launcher set in the environment variable ``name`` (``default`` if unset), else raise."""
    text = os.environ.get(name, str(default))
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        raise DistributedError(f"{name} must be {allowed}, got {text!r}")
    return value


@contextlib.contextmanager
def _shard_context(shard: Shard) -> Iterator[Shard]:
    token = _SHARD.set(shard)
    try:
        yield shard
    finally:
        _SHARD.reset(token)


SOLO = Team()
