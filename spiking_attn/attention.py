"""Self- and cross-attention: the dense twin and the spike-driven version, side by side.

Spiking kinds (chosen by ``kind``):

* ``'ssa'``  - Spikformer's spiking self-attention. ``Q, K, V = LIF(BN(Linear(x)))`` are binary;
  ``A = Q K^T V * scale`` with no softmax, then ``LIF`` (threshold 0.5) and ``BN(Linear(.))``.
  Without a causal mask it is computed as ``Q (K^T V)``, which is exactly equal (the products are
  integer counts) and cheaper when tokens outnumber head channels.
* ``'sdsa'`` - the Spike-driven Transformer's self-attention. ``kv = LIF(sum_tokens K * V)``, then
  ``Q * kv``: only masks and additions, linear in the number of tokens. It is channel-wise, so the
  head split does not change the result; ``heads`` is kept for a common interface.

Both accept a ``context`` (cross-attention: queries from ``x``, keys/values from ``context``) and a
causal mask (token ``i`` sees keys ``j <= i``; SDSA uses a running sum over tokens; causal SSA runs
the compiled running-state scan ``native_ops.causal_scan`` where it is built, and blocks of tokens
otherwise, both in time linear in the tokens and both exact on spikes).

The dense twin ``DenseSelfAttention`` has the same layers under the same names (``q``, ``k``, ``v``,
``out``), activations (``*_act``) where the spiking version has populations (``*_lif``), and
``kind`` 'softmax' (standard attention) or 'ssa' / 'sdsa' (the ANN form of each spiking operator).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from . import auxiliary, native_ops
from .errors import ShapeError, SpikingAttnError, check_choice, check_tensor
from .graph import ExportError, export_rule
from .layers import LinearBN
from .neuron import population
from .opcount import count_rule, mask_events, nnz
from .converters.qcfs import QCFS
from .converters.rules import ConversionError, conversion_rule
from .converters.td import td_rule

SPIKING_KINDS = ("ssa", "sdsa")
DENSE_KINDS = ("softmax", "ssa", "sdsa")
# The dense twins' activations. 'qcfs' is the conversion-friendly one (converters/qcfs.py): its levels
# come from ModelConfig.qcfs_levels, its clip is learned.
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "qcfs": QCFS}


def _check_heads(dim: int, heads: int) -> None:
    if heads <= 0 or dim % heads:
        raise SpikingAttnError(f"dim ({dim}) must be divisible by heads ({heads})")


def _check_context(x: torch.Tensor, context: torch.Tensor, causal: bool, time_first: bool) -> None:
    lead = 2 if time_first else 1  # [T, B] or [B]
    if context.dim() != x.dim() or context.shape[:lead] != x.shape[:lead] or context.shape[-1] != x.shape[-1]:
        what = "time steps, batch and dim" if time_first else "batch and dim"
        raise ShapeError(
            f"context shape {tuple(context.shape)} must match x shape {tuple(x.shape)} in {what}"
        )
    if causal and context.shape[-2] != x.shape[-2]:
        raise ShapeError("causal cross-attention needs as many context tokens as query tokens")


def _split_heads(t: torch.Tensor, heads: int) -> torch.Tensor:
    *lead, n, d = t.shape
    return t.reshape(*lead, n, heads, d // heads).transpose(-3, -2)  # [..., H, N, Dh]


def _merge_heads(t: torch.Tensor) -> torch.Tensor:
    *lead, h, n, dh = t.shape
    return t.transpose(-3, -2).reshape(*lead, n, h * dh)  # [..., N, D]


def _causal_mask(n_q: int, n_k: int, device) -> torch.Tensor:
    return torch.ones(n_q, n_k, dtype=torch.bool, device=device).tril()  # [N, M]


CAUSAL_CHUNK = 32  # tokens per block of the causal product: the N x N scores exist only inside a block


def linear_attention_product(q, k, v, causal: bool) -> torch.Tensor:
    """``(Q K^T masked) V`` over ``[..., N, Dh]`` heads, in time and memory linear in the tokens.

    Not causal: ``Q (K^T V)``. Causal (``N == M``): token ``i`` reads ``q_i sum_{j <= i} k_j^T v_j``, a
    prefix sum over tokens, computed by blocks of ``CAUSAL_CHUNK`` tokens: inside a block the masked
    scores, across blocks the running state ``sum k_j^T v_j`` of the blocks before. On spikes every
    term is an integer count, so the result is exactly the masked quadratic product (float32 holds
    integers up to 2^24 exactly).
    """
    if not causal:
        return q @ (k.transpose(-2, -1) @ v)  # [..., N, Dh]
    return _causal_blocks(q, k, v, CAUSAL_CHUNK)


def _causal_blocks(q, k, v, chunk: int) -> torch.Tensor:
    *lead, n, dh = q.shape
    if n <= chunk:  # one block: the masked product itself
        scores = (q @ k.transpose(-2, -1)).masked_fill(~_causal_mask(n, n, q.device), 0.0)  # [..., N, N]
        return scores @ v
    pad = -n % chunk
    if pad:
        q, k, v = (F.pad(t, (0, 0, 0, pad)) for t in (q, k, v))  # zero tokens at the end add nothing
    blocks = (n + pad) // chunk
    qb, kb, vb = (t.reshape(*lead, blocks, chunk, t.shape[-1]) for t in (q, k, v))  # [..., C, chunk, Dh]
    scores = (qb @ kb.transpose(-2, -1)).masked_fill(~_causal_mask(chunk, chunk, q.device), 0.0)
    inside = scores @ vb  # [..., C, chunk, Dv]: keys of the same block, j <= i
    state = kb.transpose(-2, -1) @ vb  # [..., C, Dh, Dv]: each block's sum of k^T v
    before = state.cumsum(dim=-3) - state  # the blocks strictly before (exact on integer counts)
    out = inside + qb @ before  # [..., C, chunk, Dv]
    return out.reshape(*lead, blocks * chunk, out.shape[-1])[..., :n, :]


def spike_attention_product(q, k, v, causal: bool, compiled: bool = True) -> torch.Tensor:
    """``linear_attention_product`` for spike trains. Causal and ``compiled``, with more tokens than one
    block (``CAUSAL_CHUNK``), it runs the compiled running-state scan (``native_ops.causal_scan``: one
    pass over the tokens, skipping silent neurons) when the operator is loaded, and the blocks otherwise;
    up to one block, the masked product of that block is the faster of the two
    (``benchmarks/bench_attention_block.py``). Both are exact on spikes, so the output does not depend on
    the path; gradients agree to rounding. The scan, like the compiled LIF kernel, gives first-order
    gradients only: the attention passes ``compiled=False`` when its populations run on SpikingJelly's
    engine (the autograd path, for a gradient of a gradient)."""
    if causal and compiled and q.shape[-2] > CAUSAL_CHUNK and native_ops.scan_eligible(q, k, v):
        return native_ops.causal_scan(q, k, v)
    return linear_attention_product(q, k, v, causal)


def token_sum(kv: torch.Tensor, causal: bool) -> torch.Tensor:
    """Sum ``[..., M, D]`` over tokens: ``[..., 1, D]``, or a running sum ``[..., M, D]`` if causal."""
    return kv.cumsum(dim=-2) if causal else kv.sum(dim=-2, keepdim=True)


class SpikingSelfAttention(nn.Module):
    """Spike-driven multihead attention (the cortex's selective routing, done with spikes).

    Args:
        dim: model width D.
        heads: number of heads H (D % H == 0).
        kind: 'ssa' or 'sdsa'.
        causal: mask future tokens (decoder-style).
        scale: SSA product scale; default ``1/sqrt(D/H)``.
        attn_vth: threshold of the population after the attention product (0.5 in both papers).
        lif: keyword arguments for every population (``neuron.population``: dv, surrogate, engine, ...).

    Shapes: ``x`` spikes ``[T, B, N, D]``; optional ``context`` spikes ``[T, B, M, D]``.
    Returns the output current ``[T, B, N, D]`` (add it to a membrane stream).
    """

    def __init__(self, dim: int, heads: int = 4, kind: str = "sdsa", causal: bool = False,
                 scale: Optional[float] = None, attn_vth: float = 0.5, lif: Optional[dict] = None) -> None:
        super().__init__()
        _check_heads(dim, heads)
        lif = dict(lif or {})
        self.kind = check_choice(kind, "attention kind", SPIKING_KINDS)
        self.dim, self.heads, self.causal = dim, heads, bool(causal)
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim // heads)
        self.q, self.k, self.v = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        self.q_lif, self.k_lif, self.v_lif = (population(dim, lif) for _ in range(3))
        self.attn_lif = population(dim, {**lif, "vth": attn_vth})
        self.out = LinearBN(dim, dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.heads}, causal={self.causal}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cue: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Output current ``[T, B, N, D]``; ``cue`` is accepted for the common block interface and not read."""
        return self.out(self.route(x, context))

    def route(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, gain: Optional[torch.Tensor] = None,
              threshold_shift: Optional[torch.Tensor] = None,
              input_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The routed spikes ``[T, B, N, D]`` before the output projection (heads are contiguous
        channel groups of ``D / H``), for mechanisms that gate heads. ``gain`` and ``threshold_shift``
        (broadcastable to ``[T, B, N, D]``) modulate the Q, K and V populations; ``input_shift`` is
        subtracted from their input current after the gain (``gain * z - input_shift``, the dense twin's
        modulation; a threshold shift instead divides an integrate-and-fire neuron's rate)."""
        check_tensor(x, "x", ndim=4, last_dim=self.dim)
        if context is not None:
            check_tensor(context, "context", ndim=4)
            _check_context(x, context, self.causal, time_first=True)
        source = x if context is None else context
        def fire(layer, pop, spikes):
            if gain is None and threshold_shift is None and input_shift is None:
                return layer.fire(spikes, pop)  # (BatchNorm and population fused where that is on)
            current = layer(spikes)
            if input_shift is None:
                return pop(current, gain=gain, threshold_shift=threshold_shift)
            current = current if gain is None else current * gain
            return pop(current - input_shift, threshold_shift=threshold_shift)

        q = fire(self.q, self.q_lif, x)  # [T, B, N, D]
        k = fire(self.k, self.k_lif, source)  # [T, B, M, D]
        v = fire(self.v, self.v_lif, source)  # [T, B, M, D]
        if self.kind == "ssa":
            qh, kh, vh = (_split_heads(t, self.heads) for t in (q, k, v))  # [T, B, H, N|M, Dh]
            native = getattr(self.q_lif, "engine", "native") == "native"  # (converted models may hold other units)
            mixed = _merge_heads(spike_attention_product(qh, kh, vh, self.causal, native))
            routed = self.attn_lif(mixed * self.scale)  # [T, B, N, D]
        else:
            kv = self.attn_lif(token_sum(k * v, self.causal))  # [T, B, 1|N, D]
            routed = q * kv  # [T, B, N, D]: an AND of two spike trains
        auxiliary.report("heads", routed.reshape(*routed.shape[:-1], self.heads, -1))  # [T, B, N, H, Dh]
        return routed


def export_route(attn: SpikingSelfAttention, graph, x, context=None):
    """Graph rule of ``SpikingSelfAttention.route``: the routed spikes as a population handle.

    SDSA is masks and sums: ``k AND v`` and ``q AND kv`` are coincidence populations, the token sum a
    static synapse. SSA's ``Q K^T V`` multiplies spike counts that change every step: no static synapse
    computes it, so SSA does not export.
    """
    name = graph.name_of(attn)
    if attn.kind != "sdsa":
        raise ExportError(f"{name}: SSA's Q K^T V product is not a static synapse (it multiplies two spike "
                          f"trains' counts at every step), so it cannot run on LIF populations with fixed weights; "
                          f"train the model with --attention sdsa, whose masks map to coincidence neurons")
    source = x if context is None else context
    q = graph.population(attn.q_lif, graph.dense(attn.q, x))
    k = graph.population(attn.k_lif, graph.dense(attn.k, source))
    v = graph.population(attn.v_lif, graph.dense(attn.v, source))
    k_and_v = graph.logic(f"{name}.k_and_v", k.current() + v.current(), 1.5)
    summed = graph.linear_map(k_and_v, lambda t: token_sum(t, attn.causal))  # [1|N, D]
    kv = graph.population(attn.attn_lif, summed)
    n = q.shape[0]
    spread = graph.linear_map(kv, lambda t: t.expand(t.shape[0], n, t.shape[-1]) if t.shape[1] == 1 else t)
    return graph.logic(f"{name}.q_and_kv", q.current() + spread, 1.5)


@export_rule(SpikingSelfAttention)
def _export_attention(attn: SpikingSelfAttention, graph, x, context=None, *, cue=None):
    return graph.dense(attn.out, export_route(attn, graph, x, context))


class DenseSelfAttention(nn.Module):
    """The dense twin of ``SpikingSelfAttention``: same layers and names, activations for populations.

    Args:
        dim, heads, causal, scale: as in the spiking version.
        kind: 'softmax' (standard scaled dot-product attention), 'ssa' or 'sdsa' (ANN forms).
        act: 'relu' or 'gelu', used where the spiking version has a population
            ('softmax' keeps Q, K, V linear, as standard attention does).

    Shapes: ``x`` ``[B, N, D]``, optional ``context`` ``[B, M, D]`` -> ``[B, N, D]``.
    """

    def __init__(self, dim: int, heads: int = 4, kind: str = "softmax", causal: bool = False,
                 scale: Optional[float] = None, act: str = "relu") -> None:
        super().__init__()
        _check_heads(dim, heads)
        self.kind = check_choice(kind, "attention kind", DENSE_KINDS)
        act_cls = ACTIVATIONS[check_choice(act, "activation", tuple(ACTIVATIONS))]
        self.dim, self.heads, self.causal = dim, heads, bool(causal)
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim // heads)
        self.q, self.k, self.v = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        qkv_act = nn.Identity if self.kind == "softmax" else act_cls
        self.q_act, self.k_act, self.v_act = qkv_act(), qkv_act(), qkv_act()
        self.attn_act = act_cls()
        self.out = LinearBN(dim, dim)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, heads={self.heads}, causal={self.causal}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *,
                cue: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Output ``[B, N, D]``; ``cue`` is accepted for the common block interface and not read."""
        return self.out(self.route(x, context))

    def route(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, gain: Optional[torch.Tensor] = None,
              threshold_shift: Optional[torch.Tensor] = None) -> torch.Tensor:
        """The attention output ``[B, N, D]`` before the output projection (heads are contiguous
        channel groups of ``D / H``). ``gain`` and ``threshold_shift`` (broadcastable to ``[B, N, D]``)
        modulate Q, K and V before their activations, as they modulate the spiking twin's populations."""
        check_tensor(x, "x", ndim=3, last_dim=self.dim)
        if context is not None:
            check_tensor(context, "context", ndim=3)
            _check_context(x, context, self.causal, time_first=False)
        source = x if context is None else context

        def modulated(z: torch.Tensor) -> torch.Tensor:
            z = z if gain is None else z * gain
            return z if threshold_shift is None else z - threshold_shift

        q = self.q_act(modulated(self.q(x)))
        k, v = self.k_act(modulated(self.k(source))), self.v_act(modulated(self.v(source)))
        if self.kind == "softmax":
            qh, kh, vh = (_split_heads(t, self.heads) for t in (q, k, v))  # [B, H, N|M, Dh]
            mask = _causal_mask(q.shape[-2], k.shape[-2], q.device) if self.causal else None
            mixed = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=self.scale)
            routed = self.attn_act(_merge_heads(mixed))  # [B, N, D]
        elif self.kind == "ssa":
            qh, kh, vh = (_split_heads(t, self.heads) for t in (q, k, v))
            mixed = _merge_heads(linear_attention_product(qh, kh, vh, self.causal))  # [B, N, D]
            routed = self.attn_act(mixed * self.scale)
        else:
            routed = q * self.attn_act(token_sum(k * v, self.causal))  # [B, N, D]
        auxiliary.report("heads", routed.reshape(*routed.shape[:-1], self.heads, -1))  # [B, N, H, Dh]
        return routed


def attention_map(q: torch.Tensor, k: torch.Tensor, heads: int, causal: bool = False,
                  softmax_scale: Optional[float] = None) -> torch.Tensor:
    """Attention scores ``Q K^T`` per head, averaged over heads (and time, for ``[T, B, N, D]`` input).

    Spiking SSA: pass the Q and K spikes ``[T, B, N, D]``; returns ``[B, N, M]`` integer-count means.
    Dense softmax attention: pass ``[B, N, D]`` and ``softmax_scale``; each head's row-softmax of
    ``scale Q K^T`` (masked if causal) is averaged, giving ``[B, N, M]`` attention weights.
    """
    qh, kh = _split_heads(q, heads), _split_heads(k, heads)  # [..., H, N|M, Dh]
    scores = qh @ kh.transpose(-2, -1)  # [..., H, N, M]
    mask = _causal_mask(scores.shape[-2], scores.shape[-1], scores.device) if causal else None
    if softmax_scale is not None:
        scores = scores * softmax_scale
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        scores = scores.softmax(-1)
    elif mask is not None:
        scores = scores.masked_fill(~mask, 0.0)
    head_axis = scores.dim() - 3
    return scores.mean(dim=(0, head_axis) if q.dim() == 4 else head_axis)


# --- operation counts (``opcount``) ------------------------------------------------------------------


def routed_spikes(attn: SpikingSelfAttention, call) -> torch.Tensor:
    """The spikes ``route`` returned in this forward pass, rebuilt from its populations' outputs."""
    if attn.kind == "ssa":
        return call.output_of(attn.attn_lif)
    return call.output_of(attn.q_lif) * call.output_of(attn.attn_lif)


def count_spiking_route(attn: SpikingSelfAttention, call) -> None:
    """The masks and additions of ``route`` (its layers and populations count themselves).

    SDSA: ``k AND v`` and ``q AND kv`` are coincidence events; the token sum adds each coincidence once
    (causal: into a running accumulator that every token reads).
    SSA: each coincident pair of a spike-count product is one accumulate (as spikingjelly counts a product
    of two binary matrices); ``Q (K^T V)`` adds a whole row of the integer matrix ``K^T V`` (zeros too,
    as a dense row is read) per query spike; causal, ``(Q K^T) V`` skips zero scores.
    """
    q, k, v = (call.output_of(p) for p in (attn.q_lif, attn.k_lif, attn.v_lif))
    if attn.kind == "sdsa":
        kv = k * v
        call.add_to(attn, masks=mask_events(k, v) + mask_events(q, call.output_of(attn.attn_lif)), adds=nnz(kv))
        return
    qh, kh, vh = (_split_heads(t, attn.heads) for t in (q, k, v))  # [T, B, H, N|M, Dh]
    if attn.causal:
        scores = (qh @ kh.transpose(-2, -1)).masked_fill(~_causal_mask(qh.shape[-2], kh.shape[-2], q.device), 0.0)
        acs = float(scores.sum()) + float(((scores != 0).to(vh.dtype) @ vh).sum())
    else:
        acs = float((kh.transpose(-2, -1) @ vh).sum()) + nnz(qh) * qh.shape[-1]
    call.add_to(attn, acs=acs)


def count_dense_route(attn: DenseSelfAttention, call, modulated: bool = False) -> None:
    """The products of the dense ``route`` (its layers count themselves); with ``modulated``, the gain and
    shift applied to Q, K and V."""
    q, k = call.output_of(attn.q), call.output_of(attn.k)  # [B, N, D], [B, M, D]
    b, n, d = q.shape
    m, h = k.shape[-2], attn.heads
    dh = d // h
    macs, adds = 0.0, 0.0
    if modulated:
        macs += 2 * k.numel() + q.numel()
        adds += 2 * k.numel() + q.numel()
    if attn.kind == "softmax":  # Q K^T and A V, then exp and the division per score, a sum per row
        scores = b * h * n * m
        macs += 2 * scores * dh + 2 * scores
        adds += scores
    elif attn.kind == "ssa":
        macs += 2 * b * h * n * m * dh if attn.causal else b * h * (m + n) * dh * dh
    else:  # k * v, its sum over tokens, q * kv
        macs += k.numel() + q.numel()
        adds += k.numel()
    call.add_to(attn, macs=macs, adds=adds)


@count_rule(SpikingSelfAttention)
def _count_spiking_attention(attn: SpikingSelfAttention, call) -> None:
    count_spiking_route(attn, call)


@count_rule(DenseSelfAttention)
def _count_dense_attention(attn: DenseSelfAttention, call) -> None:
    count_dense_route(attn, call)


# --- conversion (``converters``) ---------------------------------------------------------------------


def convert_route(attn: SpikingSelfAttention, dense: DenseSelfAttention, ctx, unit) -> float:
    """Thresholds and weights of ``route`` taken from its dense twin; returns the value of one routed spike.

    Q, K and V read the input spikes (``unit``) and rate-code the dense activations. SDSA's ``k AND v``
    coincides where both fire, standing for ``lambda_k * lambda_v``, so the population after the token
    sum reads currents in that unit; the routed ``q AND kv`` stands for ``lambda_q * lambda_kv``. SSA's
    ``Q K^T V`` counts triple coincidences (``lambda_q * lambda_k * lambda_v`` each).

    A product of two rate codes is exact only on average and only for uncorrelated trains: this is the
    approximate part of a binary conversion (td is the exact route).
    """
    if dense.kind != attn.kind:
        raise ConversionError(f"{ctx.name(attn)}: the dense twin's {dense.kind!r} attention has no spiking form "
                              f"of kind {attn.kind!r}")
    for layer in (attn.q, attn.k, attn.v):
        ctx.scale_input(layer, unit)
    lam_q = ctx.threshold(attn.q_lif, dense.q_act)
    lam_k = ctx.threshold(attn.k_lif, dense.k_act)
    lam_v = ctx.threshold(attn.v_lif, dense.v_act)
    if attn.kind == "sdsa":
        return lam_q * ctx.threshold(attn.attn_lif, dense.attn_act, lam_k * lam_v)
    return ctx.threshold(attn.attn_lif, dense.attn_act, lam_q * lam_k * lam_v)


@conversion_rule(SpikingSelfAttention)
def _convert_attention(attn: SpikingSelfAttention, dense: DenseSelfAttention, ctx, unit) -> None:
    ctx.scale_input(attn.out, convert_route(attn, dense, ctx, unit))


@td_rule(DenseSelfAttention)
def _td_attention(attn: DenseSelfAttention, run, x, context=None, *, cue=None):
    """Q, K and V are units; SDSA's two products take the product rule, its token sum passes changes
    through; SSA's ``Q K^T V`` and softmax attention are functions of the running Q, K and V."""
    source = x if context is None else context
    q = run.unit(attn.q_act, run.unit(attn.q, x))
    k, v = run.unit(attn.k_act, run.unit(attn.k, source)), run.unit(attn.v_act, run.unit(attn.v, source))
    if attn.kind == "sdsa":
        kv = run.unit(attn.attn_act, token_sum(run.product(attn, k, v), attn.causal))
        routed = run.product(attn, q, kv)
    else:
        def mix(q_sum, k_sum, v_sum):
            qh, kh, vh = (_split_heads(t, attn.heads) for t in (q_sum, k_sum, v_sum))
            if attn.kind == "ssa":
                return _merge_heads(linear_attention_product(qh, kh, vh, attn.causal)) * attn.scale
            mask = _causal_mask(qh.shape[-2], kh.shape[-2], qh.device) if attn.causal else None
            return _merge_heads(F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask, scale=attn.scale))

        routed = run.unit(attn.attn_act, run.function(attn, mix, q, k, v))
    return run.unit(attn.out, routed)
