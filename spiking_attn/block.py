"""Transformer blocks (attention + MLP): the dense twin and the spiking version.

The spiking block keeps a *membrane stream*: the residual adds output currents to the stream, and
each branch starts with its own population (``pre_attn_lif``, ``pre_mlp_lif``), so every weight
layer inside sees binary spikes::

    x = x + Attention(LIF(x), context)        x: [T, B, N, D] currents, never spikes
    x = x + MLP(LIF(x))                       MLP = LinearBN -> LIF -> LinearBN

The dense twin has the same layout with activations (``pre_attn_act``, ``pre_mlp_act``) in place of
the populations, which is the pre-activation form that converts cleanly to spikes.
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from .attention import ACTIVATIONS, DenseSelfAttention, SpikingSelfAttention
from .errors import check_choice
from .graph import export_rule
from .layers import LinearBN
from .neuron import population
from .opcount import count_rule, no_own_ops
from .converters.rules import conversion_rule
from .converters.td import td_rule


class SpikingMLP(nn.Module):
    """``LinearBN -> LIF -> LinearBN``. Shapes: spikes ``[T, B, N, D]`` -> current ``[T, B, N, D]``."""

    def __init__(self, dim: int, hidden: int, lif: Optional[dict] = None) -> None:
        super().__init__()
        self.fc1 = LinearBN(dim, hidden)
        self.fc1_lif = population(hidden, lif)
        self.fc2 = LinearBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1.fire(x, self.fc1_lif))


class DenseMLP(nn.Module):
    """``LinearBN -> act -> LinearBN``, the dense twin of ``SpikingMLP``. Shapes: ``[B, N, D]``."""

    def __init__(self, dim: int, hidden: int, act: str = "relu") -> None:
        super().__init__()
        self.fc1 = LinearBN(dim, hidden)
        self.fc1_act = ACTIVATIONS[check_choice(act, "activation", tuple(ACTIVATIONS))]()
        self.fc2 = LinearBN(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.fc1_act(self.fc1(x)))


class SpikingTransformerBlock(nn.Module):
    """Spiking attention block with membrane shortcuts.

    Args:
        dim, heads, kind, causal: passed to ``SpikingSelfAttention``.
        mlp_ratio: hidden width of the MLP as a multiple of ``dim``.
        lif: keyword arguments for every population.

    Shapes: ``x`` currents ``[T, B, N, D]``, optional ``context`` spikes ``[T, B, M, D]`` -> ``[T, B, N, D]``.
    ``cue`` (spikes ``[T, B, C]``) is passed to the attention module: plain attention does not read it
    (the classifier gives a cue its own token instead); a mechanism given as ``attn`` may.
    ``attn``: the mixing module, called as ``attn(spikes, context, cue=cue)`` and returning currents;
    default ``SpikingSelfAttention``.
    """

    def __init__(self, dim: int, heads: int = 4, kind: str = "sdsa", causal: bool = False,
                 mlp_ratio: float = 4.0, lif: Optional[dict] = None, attn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.pre_attn_lif = population(dim, lif)
        self.attn = attn if attn is not None else SpikingSelfAttention(dim, heads, kind, causal, lif=lif)
        self.pre_mlp_lif = population(dim, lif)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cue: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.pre_attn_lif(x), context, cue=cue)
        return x + self.mlp(self.pre_mlp_lif(x))


@export_rule(SpikingMLP)
def _export_mlp(mlp: SpikingMLP, graph, x):
    return graph.dense(mlp.fc2, graph.population(mlp.fc1_lif, graph.dense(mlp.fc1, x)))


@export_rule(SpikingTransformerBlock)
def _export_block(block: SpikingTransformerBlock, graph, x, context=None, *, cue=None):
    x = x + graph.call(block.attn, graph.population(block.pre_attn_lif, x), context, cue=cue)
    return x + graph.call(block.mlp, graph.population(block.pre_mlp_lif, x))


class DenseTransformerBlock(nn.Module):
    """Dense twin of ``SpikingTransformerBlock``. Shapes: ``[B, N, D]`` (context ``[B, M, D]``, cue ``[B, C]``,
    not read)."""

    def __init__(self, dim: int, heads: int = 4, kind: str = "softmax", causal: bool = False,
                 mlp_ratio: float = 4.0, act: str = "relu", attn: Optional[nn.Module] = None) -> None:
        super().__init__()
        self.pre_attn_act = ACTIVATIONS[check_choice(act, "activation", tuple(ACTIVATIONS))]()
        self.attn = attn if attn is not None else DenseSelfAttention(dim, heads, kind, causal, act=act)
        self.pre_mlp_act = ACTIVATIONS[act]()
        self.mlp = DenseMLP(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cue: Optional[torch.Tensor] = None) -> torch.Tensor:
        x = x + self.attn(self.pre_attn_act(x), context, cue=cue)
        return x + self.mlp(self.pre_mlp_act(x))


count_rule(SpikingMLP, DenseMLP)(no_own_ops)


@count_rule(SpikingTransformerBlock, DenseTransformerBlock)
def _count_block(block: nn.Module, call) -> None:
    call.add(adds=2 * call.output.numel())  # the two residual adds


@conversion_rule(SpikingMLP)
def _convert_mlp(mlp: SpikingMLP, dense: DenseMLP, ctx, unit) -> None:
    ctx.scale_input(mlp.fc1, unit)
    ctx.scale_input(mlp.fc2, ctx.threshold(mlp.fc1_lif, dense.fc1_act))


@conversion_rule(SpikingTransformerBlock)
def _convert_block(block: SpikingTransformerBlock, dense: DenseTransformerBlock, ctx, unit) -> None:
    """The stream is a current (its values are the dense values); each branch's population rate-codes
    the dense branch's activation."""
    ctx.convert(block.attn, dense.attn, ctx.threshold(block.pre_attn_lif, dense.pre_attn_act))
    ctx.convert(block.mlp, dense.mlp, ctx.threshold(block.pre_mlp_lif, dense.pre_mlp_act))


@td_rule(DenseMLP)
def _td_mlp(mlp: DenseMLP, run, x):
    return run.unit(mlp.fc2, run.unit(mlp.fc1_act, run.unit(mlp.fc1, x)))


@td_rule(DenseTransformerBlock)
def _td_block(block: DenseTransformerBlock, run, x, context=None, *, cue=None):
    """The residual additions pass changes through; a mechanism without a td rule of its own runs as one unit."""
    x = x + run.call(block.attn, run.unit(block.pre_attn_act, x), context, cue=cue)
    return x + run.call(block.mlp, run.unit(block.pre_mlp_act, x))
