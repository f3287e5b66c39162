"""Weight layers shared by the dense and spiking twins.

``LinearBN`` is a bias-free ``nn.Linear`` followed by ``nn.BatchNorm1d`` over the feature axis. It
accepts any ``[..., D_in]`` tensor (``[T, B, N, D]`` in spiking models, ``[B, N, D]`` in dense ones)
and folds every leading axis into the batch, so time steps share one set of statistics.
``fold()`` merges the BatchNorm into the Linear for inference, export and energy counting.
"""
from __future__ import annotations

import torch
from torch import nn

from . import native_ops
from .converters.rules import passive
from .opcount import count_rule, no_own_ops


def _hooked(module: nn.Module) -> bool:
    """Whether a hook (forward or backward, its own or a global one) would see ``module`` called: the
    conditions under which ``nn.Module.__call__`` leaves its fast path."""
    from torch.nn.modules import module as torch_module

    return bool(module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
                or module._backward_pre_hooks or torch_module._global_forward_hooks
                or torch_module._global_forward_pre_hooks or torch_module._global_backward_hooks
                or torch_module._global_backward_pre_hooks)


def _dense_gradient(grad: torch.Tensor):
    """A gradient hook for the output of torch's BatchNorm over ``[rows, C]``: a contiguous copy of a gradient
    that is not contiguous, else nothing (the gradient as it is). On a broadcast gradient (zero strides, from
    a sum or a mean of the output) torch's kernel takes a path several times slower than on a dense one
    (``benchmarks/bench_attention_block.py``'s BatchNorm table). Training hands every ``LinearBN`` of the
    project's models a contiguous gradient already (checked for every task and mechanism, spiking and
    dense), so there this changes no value; a loss taken straight from a block's output does not."""
    return None if grad.is_contiguous() else grad.contiguous()


class LinearBN(nn.Module):
    """``y = BN(x W^T)`` over the last axis. Args: in_features, out_features. Shapes: [..., in] -> [..., out]."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bn = nn.BatchNorm1d(out_features)

    def _product(self, rows: torch.Tensor) -> torch.Tensor:
        """``rows @ W^T``, ``[M, in]`` -> ``[M, out]``: sparse (opt-in, ``native_ops.set_sparse_products``)
        unless something hooks the Linear (the operation counter, the spike-driven report), which must see
        it called."""
        if native_ops.spike_linear_eligible(rows, self.linear.weight) and not _hooked(self.linear):
            return native_ops.spike_linear(rows, self.linear.weight)
        return self.linear(rows)

    def _normalise(self, y: torch.Tensor) -> torch.Tensor:
        """``bn(y)`` for rows ``[M, out]``: the project's kernel in training with fused BatchNorm on
        (``native_ops.batchnorm``, opt-in) unless something hooks the BatchNorm; else torch's module, handed
        a contiguous gradient (``_dense_gradient``)."""
        if native_ops.batchnorm_eligible(y, self.bn) and not _hooked(self.bn):
            return native_ops.batchnorm(y, self.bn)
        z = self.bn(y)
        if self.training and z.requires_grad and not torch.compiler.is_compiling():
            z.register_hook(_dense_gradient)  # (on the output: the gradient that BatchNorm's backward reads)
        return z

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self._product(x.reshape(-1, x.shape[-1]))  # [prod(lead), out]
        return self._normalise(y).reshape(*lead, -1)  # [..., out]

    def fire(self, x: torch.Tensor, population: nn.Module) -> torch.Tensor:
        """``population(self(x))``, the layer and the population it feeds. With fused BatchNorm on
        (``native_ops.set_fused_batchnorm``, opt-in) and a pair that can be fused (``native_ops.fusable``:
        training mode, a plain native population, nothing hooking either module), BatchNorm and the
        population run as one operator. Shapes: ``[T, ..., in]`` -> spikes ``[T, ..., out]``."""
        if native_ops.fused_batchnorm_enabled() and self.training and not any(
                _hooked(m) for m in (self, self.bn, population)):
            y = self._product(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)  # [..., out]
            if native_ops.fusable(y, self.bn, population):
                return native_ops.batchnorm_lif(y, self.bn, population, "LIFPopulation: ")
            return population(self._normalise(y.reshape(-1, y.shape[-1])).reshape(y.shape))
        return population(self(x))

    @torch.no_grad()
    def fold(self) -> nn.Linear:
        """Return an ``nn.Linear`` (with bias) equal to this layer in eval mode."""
        bn = self.bn
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # [out]
        folded = nn.Linear(self.linear.in_features, self.linear.out_features, bias=True)
        folded.weight.copy_(self.linear.weight * scale[:, None])
        folded.bias.copy_(bn.bias - bn.running_mean * scale)
        return folded.to(self.linear.weight.device)


class DenseThresholdOffset(nn.Module):
    """The dense twin of a poised population (``neuron.poised_population``): ``z + bias - vth`` per
    channel, with the same parameter names, so that twins copy ``vth`` and ``bias`` across by name.
    The caller applies its own nonlinearity (a sigmoid gate, a softmax over routes).
    """

    def __init__(self, width: int) -> None:
        super().__init__()
        self.vth = nn.Parameter(torch.ones(width))
        self.bias = nn.Parameter(torch.ones(width))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z + self.bias - self.vth


count_rule(LinearBN)(no_own_ops)  # its Linear counts; the BatchNorm folds into it
passive(LinearBN)  # the rule of the module that holds it scales its weights


# z + (bias - vth) follows a weight layer with a bias, and folds into it, as the spiking twin's poised
# population folds the same offset into its bias current
count_rule(DenseThresholdOffset)(no_own_ops)
