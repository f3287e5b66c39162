"""BatchNorm over the global batch of a data-parallel run, for any backend (gloo on CPU included).

In a run split over N processes each process sees only its shard of every batch; a plain BatchNorm would
normalise with the shard's statistics, and the run would no longer equal the one-process run. torch's
``SyncBatchNorm`` fixes this on CUDA only. ``GlobalBatchNorm`` does it with one all-reduce per forward (and
one per backward), through ``distributed.all_reduce_sum`` so that autograd carries the gradient across
processes::

    n, S1, S2 = sum_p count_p, sum_p sum(x_p), sum_p sum(x_p^2)     (one all-reduce of [S1, S2, n])
    mean = S1 / n,   var = S2 / n - mean^2                            (biased, as BatchNorm normalises)
    y    = x * alpha + beta,   alpha = w / sqrt(var + eps),   beta = b - mean * alpha

The sums are taken in float64, so the one-pass variance loses nothing that matters against float32 data
(its cancellation costs ~1e-16 * mean^2 / var); the result agrees with the one-process BatchNorm to
rounding. A collective costs about a millisecond on a small machine, so one per layer rather than two
matters. The running statistics move as ``nn.BatchNorm`` moves them, with the unbiased global variance, so
they equal the one-process ones as well.

The synchronisation is active only while the module is training and a process group is initialised;
otherwise the module is exactly the BatchNorm it replaced. ``model = convert_batchnorm(model)`` swaps every
BatchNorm of a model in place, sharing its parameters and buffers (state-dict keys are unchanged); a model
that is itself a BatchNorm is returned replaced.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from .distributed import all_reduce_sum
from .errors import DTypeError, ShapeError


def global_moments(x: torch.Tensor, group=None) -> tuple:
    """Mean and biased variance per channel (axis 1) of ``x`` ``[B, C, ...]`` over every process's batch,
    as float64 ``[C]`` tensors with gradients, and the global number of values per channel."""
    dims = [0, *range(2, x.dim())]
    channels = x.shape[1]
    xd = x.to(torch.float64)
    count = xd.new_tensor([x.numel() // channels])
    sums = all_reduce_sum(torch.cat([xd.sum(dims), (xd * xd).sum(dims), count]), group)  # [2C + 1]
    total = sums[-1]
    mean = sums[:channels] / total  # [C]
    var = (sums[channels:2 * channels] / total - mean * mean).clamp_min(0.0)  # [C]
    return mean, var, int(total.item())


class GlobalBatchNorm(_BatchNorm):
    """A BatchNorm (1d, 2d or 3d) whose training statistics are those of the global batch.

    Build it with ``GlobalBatchNorm.replacing(bn)``; it shares ``bn``'s parameters and buffers.
    Args: as ``nn.BatchNorm1d``. Shapes: those of the replaced module (``[B, C]``, ``[B, C, L]``,
    ``[B, C, H, W]``, ...).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum=0.1, affine: bool = True,
                 track_running_stats: bool = True, replaced: type = nn.BatchNorm1d, group=None) -> None:
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.replaced = replaced
        self.group = group

    @classmethod
    def replacing(cls, bn: _BatchNorm, group=None) -> "GlobalBatchNorm":
        if not isinstance(bn, _BatchNorm):
            raise DTypeError(f"GlobalBatchNorm replaces a BatchNorm module, got {type(bn).__name__}")
        new = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats, type(bn), group)
        new.weight, new.bias = bn.weight, bn.bias  # the same Parameter objects: an optimiser keeps them
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            setattr(new, name, getattr(bn, name))
        return new.train(bn.training)

    def _check_input_dim(self, x: torch.Tensor) -> None:
        self.replaced._check_input_dim(self, x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        self._check_input_dim(x)
        mean, var, total = global_moments(x, self.group)
        if total < 2:
            raise ShapeError(f"BatchNorm needs more than one value per channel in training, got {total} over "
                             f"every process (input shape {tuple(x.shape)})")
        if self.track_running_stats:
            self._track(mean.detach(), var.detach(), total)
        invstd = torch.rsqrt(var + self.eps)  # [C], float64
        shape = [1, -1, *([1] * (x.dim() - 2))]
        if self.affine:
            alpha = invstd.to(x.dtype) * self.weight  # [C]
            beta = self.bias - mean.to(x.dtype) * alpha
        else:
            alpha = invstd.to(x.dtype)
            beta = -mean.to(x.dtype) * alpha
        return x * alpha.view(shape) + beta.view(shape)

    @torch.no_grad()
    def _track(self, mean: torch.Tensor, var: torch.Tensor, total: int) -> None:
        """Move the running statistics as ``nn.BatchNorm`` does (momentum, or a cumulative average)."""
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        unbiased = var * total / (total - 1)
        self.running_mean.copy_(factor * mean + (1 - factor) * self.running_mean.double())
        self.running_var.copy_(factor * unbiased + (1 - factor) * self.running_var.double())


def convert_batchnorm(model: nn.Module, group=None) -> nn.Module:
    """Replace every BatchNorm of ``model`` (in place) by a ``GlobalBatchNorm`` sharing its tensors; return
    ``model``, or its replacement if ``model`` itself is a BatchNorm (as torch's ``convert_sync_batchnorm``
    does). In eval mode, or without a process group, the model computes exactly what it did before."""
    if not isinstance(model, nn.Module):
        raise DTypeError(f"model must be an nn.Module, got {type(model).__name__}")
    if isinstance(model, _BatchNorm) and not isinstance(model, GlobalBatchNorm):
        return GlobalBatchNorm.replacing(model, group)
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, _BatchNorm) and not isinstance(child, GlobalBatchNorm):
                setattr(parent, name, GlobalBatchNorm.replacing(child, group))
    return model
