"""The plain spiking transformer and its dense twin: registry entry ``none``.

No brain-inspired mechanism: each block is spike-driven self-attention (SSA or SDSA, as the config
says) and an MLP (``block.py``). Its blocks do not read the cue; when the model has cues, the
classifier gives the cue a token of its own, which attention can then read like any other token.
"""
from __future__ import annotations

from ..block import DenseTransformerBlock, SpikingTransformerBlock
from . import MechanismSpec, register_mechanism


def spiking_block(config, options) -> SpikingTransformerBlock:
    c = config
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, c.lif_kwargs())


def dense_block(config, options) -> DenseTransformerBlock:
    c = config
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act)


register_mechanism(MechanismSpec(
    name="none",
    summary="plain spike-driven transformer (SSA or SDSA blocks); a cue, if any, enters as an extra token",
    spiking_block=spiking_block,
    dense_block=dense_block,
    cue_token=True,
))
