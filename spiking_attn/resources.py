"""Memory a run needs, estimated before anything is allocated, against what the machine has.

``training_bytes(config, batch_size)`` counts, for the model ``config`` describes (built on PyTorch's
``meta`` device, so nothing is allocated):

* the parameters four times over: weights, gradients and AdamW's two moments;
* the activations backward keeps: for every weight layer, ``ACTIVATION_FACTOR`` numbers per output
  channel, per token, per time step and per sample (the layer's output, its BatchNorm input, the
  population input after it, and the temporaries around them), plus the same for every ``N x N``
  attention map that is formed;
* a fixed ``OVERHEAD`` that torch holds once it trains.

The constants were calibrated against the peak resident memory of training runs of this project's
models (``benchmarks/bench_memory_estimate.py`` prints estimate and measurement side by side): the
estimate is meant to be above the measurement, and within about 3x of it.

``check_training_memory`` refuses a run whose estimate exceeds the memory available, with both
numbers in the message, instead of letting the allocator fail (or the kernel's OOM killer strike)
part-way through.
"""
from __future__ import annotations

import os

import torch
from torch import nn

from .errors import ResourceError

ACTIVATION_FACTOR = 8.0
OVERHEAD = 256 << 20  # what torch itself holds once a model trains (allocator, thread pools), in bytes
BYTES = 4  # float32


def available_bytes() -> int:
    """Memory available to a new allocation: Linux's MemAvailable, else free physical pages."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 1 << 62  # unknown: do not refuse


def _measure(config) -> tuple:
    """``(parameter count, summed output width of every weight layer, token-pair maps per step, tokens)``.

    Token-pair maps are the score matrices of attention that forms them, per head: ``N x N`` for the
    dense twin's softmax attention, and ``N x CAUSAL_CHUNK`` for causal SSA (its scores exist only
    inside blocks of tokens; ``attention.linear_attention_product``). The spiking version's compiled
    scan (``native_ops.causal_scan``) keeps no scores at all, so for it this is an upper bound (the
    blocks are its path when the operator is not built). Returned as the pair-map width per token.
    """
    from .attention import CAUSAL_CHUNK, DenseSelfAttention, SpikingSelfAttention
    from .models import build_model

    with torch.device("meta"):
        model = build_model(config)
    params = sum(p.numel() for p in model.parameters())
    widths = sum(m.out_features for m in model.modules() if isinstance(m, nn.Linear))
    tokens = config.num_tokens + (1 if getattr(model, "cue_embed", None) is not None else 0)
    maps = sum(m.heads * tokens for m in model.modules() if isinstance(m, DenseSelfAttention) and m.kind == "softmax")
    maps += sum(m.heads * min(tokens, CAUSAL_CHUNK) for m in model.modules()
                if isinstance(m, (SpikingSelfAttention, DenseSelfAttention)) and m.kind == "ssa" and m.causal)
    return params, widths, maps, tokens


def training_bytes(config, batch_size: int) -> int:
    """Estimated peak bytes of training ``config`` with batches of ``batch_size`` (see module docstring)."""
    params, widths, maps, tokens = _measure(config)
    steps = config.timesteps if config.model == "spiking" else 1
    activations = ACTIVATION_FACTOR * steps * batch_size * tokens * (widths + maps)
    return int(OVERHEAD + BYTES * (4 * params + activations))


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_training_memory(config, batch_size: int) -> int:
    """Raise ``ResourceError`` if training needs more memory than is available; return the estimate."""
    need, have = training_bytes(config, batch_size), available_bytes()
    if need > have:
        c = config
        raise ResourceError(
            f"this run needs about {_gib(need)} of memory (timesteps={c.timesteps}, dim={c.dim}, depth={c.depth}, "
            f"tokens={c.num_tokens}, batch_size={batch_size}) but {_gib(have)} are available; "
            "lower --timesteps, --dim, --depth or --batch-size")
    return need
