"""Cortico-thalamic multihead attention: cortical areas compute attention, the thalamus reads them out.

The microcolumn view of attention. Each head is a cortical area. In an area, superficial pyramidal
cells (layers 2/3) compare a token's query with every token's key: that comparison is the attention
mask. Deep pyramidal cells (layer 5) carry the values, and the mask decides which of them reach the
token. Layer-5 cells project to higher-order thalamus, whose relay cells combine the areas and send
the result back to cortex. Registry entry ``cortico_thalamic``.

Dense twin (``DenseCorticoThalamic``): multihead linear self-attention written as superficial mask
times deep values (``linear_attention.py``, whose analytic MSE gradient is tested against autograd)::

    q, k  = act(superficial_q(x)), act(superficial_k(x))        [B, N, D]  superficial cells
    v     = act(deep(x))                                         [B, N, D]  deep cells
    S_h   = mask_act(scale * q_h k_h^T)                          [B, H, N, M]  (causal: m <= n)
    a     = area_act(concat_h S_h v_h)                           [B, N, D]  each area's output
    out   = out(relay_act(relay(a)))                             the thalamic relay across areas

Spiking version (``SpikingCorticoThalamic``): every stage is a population. The superficial query and
key populations and the deep population fire from their projections. A mask neuron per area and
pair of tokens ``(n, m)`` (``mask_lif``) integrates the coincidences of query ``n``'s and key ``m``'s
spikes over the area's channels (ANDs summed), scaled by ``scale``, and fires when they agree.
A deep spike of token ``m`` reaches token ``n``'s area population (``area_lif``) only in coincidence
with mask neuron ``(n, m)``: the mask gates deep spikes by coincidence. The thalamic relay population
(``relay_lif``) reads all areas through ``relay``, and ``out`` projects its spikes back onto the
cortical stream. Every weight layer reads spikes; the two products are ANDs, so the whole module
maps to Lava with coincidence neurons (``export_rule`` below).

Both versions have the same parameter names, so weights copy by name. ``return_masks=True`` also
returns the masks ``[B, H, N, M]`` (the firing rate of the mask neurons in the spiking version).
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from .. import auxiliary
from ..attention import ACTIVATIONS, _check_context
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..converters.rules import conversion_rule
from ..errors import SpikingAttnError, check_tensor
from ..graph import export_rule
from ..layers import LinearBN
from ..linear_attention import masked_values, superficial_masks
from ..neuron import population
from ..opcount import count_rule
from . import MechanismSpec, register_mechanism

MASK_VTH = 0.5  # threshold of the mask and area populations (SSA's threshold after its product)


def _check(dim: int, heads: int) -> None:
    if heads <= 0 or dim % heads:
        raise SpikingAttnError(f"dim ({dim}) must be divisible by heads ({heads}), the cortical areas")


def _check_inputs(x: torch.Tensor, context: Optional[torch.Tensor], dim: int, causal: bool, ndim: int):
    """Check ``x`` (and ``context``, as attention checks it); return the tensor keys and values come from."""
    check_tensor(x, "x", ndim=ndim, last_dim=dim)
    if context is None:
        return x
    check_tensor(context, "context", ndim=ndim)
    _check_context(x, context, causal, time_first=ndim == 4)
    return context


def _causal(masks: torch.Tensor, causal: bool) -> torch.Tensor:
    """Masks ``[..., N, M]`` with the future cut (``m > n``) after their activation or population too: a
    population with a bias, or an activation with a value at 0 (QCFS), would otherwise let it through."""
    return masks * torch.ones(masks.shape[-2:], dtype=masks.dtype, device=masks.device).tril() if causal else masks


class DenseCorticoThalamic(nn.Module):
    """Dense cortico-thalamic attention. ``x`` ``[B, N, D]`` (optional ``context`` ``[B, M, D]`` for the keys
    and values) -> ``[B, N, D]`` (and the masks ``[B, H, N, M]`` with ``return_masks=True``).

    Args:
        dim: model width D.
        areas: cortical areas (heads), dividing D.
        causal: token ``n`` sees tokens ``m <= n`` only.
        act: the activation standing for every population ('relu', 'gelu' or 'qcfs').
        scale: the mask scale, ``1 / sqrt(D / areas)`` by default.
    """

    def __init__(self, dim: int, areas: int = 4, causal: bool = False, act: str = "relu",
                 scale: Optional[float] = None) -> None:
        super().__init__()
        _check(dim, areas)
        self.dim, self.areas, self.causal = dim, areas, bool(causal)
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim // areas)
        self.superficial_q, self.superficial_k, self.deep = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        act_cls = ACTIVATIONS[act]
        self.superficial_q_act, self.superficial_k_act, self.deep_act = act_cls(), act_cls(), act_cls()
        self.mask_act, self.area_act = act_cls(), act_cls()
        self.relay = LinearBN(dim, dim)
        self.relay_act = act_cls()
        self.out = LinearBN(dim, dim)

    def extra_repr(self) -> str:
        return f"areas={self.areas}, causal={self.causal}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_masks: bool = False):
        source = _check_inputs(x, context, self.dim, self.causal, 3)
        q = self.superficial_q_act(self.superficial_q(x))  # [B, N, D]
        k = self.superficial_k_act(self.superficial_k(source))  # [B, M, D]
        v = self.deep_act(self.deep(source))  # [B, M, D]
        masks = _causal(self.mask_act(superficial_masks(q, k, self.areas, self.scale, self.causal)), self.causal)
        areas = self.area_act(masked_values(masks, v))  # [B, N, D]
        auxiliary.report("heads", areas.reshape(*areas.shape[:-1], self.areas, -1))
        out = self.out(self.relay_act(self.relay(areas)))
        return (out, masks) if return_masks else out


class SpikingCorticoThalamic(nn.Module):
    """Spiking cortico-thalamic attention. ``x`` spikes ``[T, B, N, D]`` (optional ``context`` spikes
    ``[T, B, M, D]``) -> currents ``[T, B, N, D]`` (and the mask firing rates ``[B, H, N, M]`` with
    ``return_masks=True``).

    Args:
        dim, areas, causal, scale: as in the dense twin.
        lif: keyword arguments of the model's populations. The mask population has one neuron per area
            and pair of tokens, so its parameters are shared (a scalar threshold), whatever
            ``per_channel`` says.
    """

    def __init__(self, dim: int, areas: int = 4, causal: bool = False, scale: Optional[float] = None,
                 lif: Optional[dict] = None) -> None:
        super().__init__()
        _check(dim, areas)
        lif = dict(lif or {})
        self.dim, self.areas, self.causal = dim, areas, bool(causal)
        self.scale = float(scale) if scale is not None else 1.0 / math.sqrt(dim // areas)
        self.superficial_q, self.superficial_k, self.deep = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        self.superficial_q_lif, self.superficial_k_lif, self.deep_lif = (population(dim, lif) for _ in range(3))
        self.mask_lif = population(1, {**lif, "vth": MASK_VTH, "per_channel": False})
        self.area_lif = population(dim, {**lif, "vth": MASK_VTH})
        self.relay = LinearBN(dim, dim)
        self.relay_lif = population(dim, lif)
        self.out = LinearBN(dim, dim)

    def extra_repr(self) -> str:
        return f"areas={self.areas}, causal={self.causal}, scale={self.scale:.4g}"

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_masks: bool = False):
        source = _check_inputs(x, context, self.dim, self.causal, 4)
        q = self.superficial_q_lif(self.superficial_q(x))  # [T, B, N, D] spikes
        k = self.superficial_k_lif(self.superficial_k(source))  # [T, B, M, D]
        v = self.deep_lif(self.deep(source))  # [T, B, M, D]
        # mask neuron (h, n, m) integrates the coincidences of q_n and k_m over area h's channels
        masks = _causal(self.mask_lif(superficial_masks(q, k, self.areas, self.scale, self.causal)), self.causal)
        # deep spike m reaches area h of token n only with mask neuron (h, n, m): ANDs, summed over m
        areas = self.area_lif(masked_values(masks, v))  # [T, B, N, D] spikes
        auxiliary.report("heads", areas.reshape(*areas.shape[:-1], self.areas, -1))
        out = self.out(self.relay_lif(self.relay(areas)))
        return (out, masks.mean(0)) if return_masks else out


def spiking_block(config, options) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    attn = SpikingCorticoThalamic(c.dim, c.heads, c.causal, lif=lif)
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif, attn=attn)


def dense_block(config, options) -> DenseTransformerBlock:
    c = config
    attn = DenseCorticoThalamic(c.dim, c.heads, c.causal, c.dense_act)
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act, attn=attn)


register_mechanism(MechanismSpec(
    name="cortico_thalamic",
    summary="cortico-thalamic attention: superficial cells' masks gate deep cells' spikes per area (head); "
            "a thalamic relay reads the areas out",
    spiking_block=spiking_block,
    dense_block=dense_block,
    cue_token=True,
))


# --- operation counts (``opcount``) ------------------------------------------------------------------


@count_rule(SpikingCorticoThalamic)
def _count_spiking(module: SpikingCorticoThalamic, call) -> None:
    """Each coincidence of a query and a key spike in an area adds one into its mask neuron; each
    coincidence of a mask spike and a deep spike adds one into the area neuron (the scale folds into the
    mask threshold). The populations and weight layers count themselves."""
    q, k, v = (call.output_of(p) for p in (module.superficial_q_lif, module.superficial_k_lif, module.deep_lif))
    masks = call.output_of(module.mask_lif)  # [T, B, H, N, M]
    pairs = superficial_masks(q, k, module.areas, 1.0, module.causal)  # coincidence counts per mask neuron
    gated = masked_values(masks, v)  # coincidence counts per area neuron
    call.add(acs=float(pairs.sum()) + float(gated.sum()))


@count_rule(DenseCorticoThalamic)
def _count_dense(module: DenseCorticoThalamic, call) -> None:
    """``Q_h K_h^T`` and ``S_h V_h``: a MAC per score and head channel each; the scale, one MAC per score."""
    q, k = call.output_of(module.superficial_q), call.output_of(module.superficial_k)  # [B, N, D], [B, M, D]
    b, n, d = q.shape
    scores = b * module.areas * n * k.shape[-2]
    call.add(macs=2 * scores * (d // module.areas) + scores)


# --- conversion (``converters``) ---------------------------------------------------------------------


@conversion_rule(SpikingCorticoThalamic)
def _convert(module: SpikingCorticoThalamic, dense: DenseCorticoThalamic, ctx, unit) -> None:
    """The superficial and deep populations rate-code their activations; a mask neuron counts q AND k
    coincidences, each standing for ``lambda_q * lambda_k``; an area neuron counts mask AND deep
    coincidences, each ``lambda_mask * lambda_v``. As for SDSA, the products of rate codes are exact
    only on average."""
    for layer in (module.superficial_q, module.superficial_k, module.deep):
        ctx.scale_input(layer, unit)
    lam_q = ctx.threshold(module.superficial_q_lif, dense.superficial_q_act)
    lam_k = ctx.threshold(module.superficial_k_lif, dense.superficial_k_act)
    lam_v = ctx.threshold(module.deep_lif, dense.deep_act)
    lam_mask = ctx.threshold(module.mask_lif, dense.mask_act, lam_q * lam_k)
    lam_area = ctx.threshold(module.area_lif, dense.area_act, lam_mask * lam_v)
    ctx.scale_input(module.relay, lam_area)
    ctx.scale_input(module.out, ctx.threshold(module.relay_lif, dense.relay_act))


# --- Lava (``graph``) --------------------------------------------------------------------------------


@export_rule(SpikingCorticoThalamic)
def _export(module: SpikingCorticoThalamic, graph, x, context=None, *, cue=None):
    """Coincidence neurons for ``q_n AND k_m`` per channel, summed per area into the mask neurons (the
    scale is their synaptic weight); coincidence neurons for ``mask_(n,m) AND v_m``, summed over ``m``
    into the area neurons; then the relay and the output projection. The relay populations form the
    core group ``thalamic_relay``."""
    name = graph.name_of(module)
    source = x if context is None else context
    q = graph.population(module.superficial_q_lif, graph.dense(module.superficial_q, x))  # [N, D]
    k = graph.population(module.superficial_k_lif, graph.dense(module.superficial_k, source))  # [M, D]
    v = graph.population(module.deep_lif, graph.dense(module.deep, source))  # [M, D]
    n, m, d, h = q.shape[0], k.shape[0], module.dim, module.areas
    pairs = (graph.linear_map(q, lambda t: t[:, :, None, :].expand(t.shape[0], n, m, d))
             + graph.linear_map(k, lambda t: t[:, None, :, :].expand(t.shape[0], n, m, d)))
    q_and_k = graph.logic(f"{name}.q_and_k", pairs, 1.5)  # [N, M, D]
    keep = torch.ones(n, m, dtype=torch.float64).tril() if module.causal else torch.ones(n, m, dtype=torch.float64)

    def per_area(t):  # [K, N, M, D] -> [K, H, N, M], scaled and masked
        return module.scale * t.reshape(*t.shape[:3], h, d // h).sum(-1).permute(0, 3, 1, 2) * keep

    masks = graph.population(module.mask_lif, graph.linear_map(q_and_k, per_area))  # [H, N, M]
    gated = (graph.linear_map(masks, lambda t: (t * keep).permute(0, 2, 3, 1)[..., None]
                              .expand(t.shape[0], n, m, h, d // h).reshape(t.shape[0], n, m, d))
             + graph.linear_map(v, lambda t: t[:, None].expand(t.shape[0], n, m, d)))
    mask_and_v = graph.logic(f"{name}.mask_and_deep", gated, 1.5)  # [N, M, D]
    areas = graph.population(module.area_lif, graph.linear_map(mask_and_v, lambda t: t.sum(2)))  # [N, D]
    with graph.group(f"thalamic_relay:{name}"):
        relay = graph.population(module.relay_lif, graph.dense(module.relay, areas))
    return graph.dense(module.out, relay)
