"""Pulvinar synchronization: the pulvinar routes signals between cortical areas by synchronising them.

The channels are split into A cortical areas, each with its own projection. A pulvinar network
reads the whole sequence and sets an A x A routing matrix (row i: how much area i listens to each
area j); each area receives the routed mixture of the areas, and a phase gate blends that
synchronised signal with the input. Registry entry ``pulvinar``.

Dense twin (``DensePulvinarSync``), for ``x`` ``[B, N, D]`` with ``D = A * Da``::

    area_j  = act(area_proj[j](x_j))                              x_j: the channels of area j
    R       = softmax_j(pulvinar(mean_n x) + route.bias - route.vth)   [B, A, A], rows sum to 1
    sync_i  = sum_j R_ij * area_j
    p       = sigmoid(phase(x))                                   phase gate, per token and channel
    out     = out_proj(p * sync + (1 - p) * x)

Spiking version (``SpikingPulvinarSync``): area populations ``area_lif[j]`` fire from their
projections; the pulvinar population ``route`` has one neuron per route (i, j), poised at threshold
(``neuron.poised_population``) and driven by the pulvinar
projection of every token's spikes summed over the sequence (divided by N, the mean of the dense
twin, taken on currents so that the weight layer still reads spikes). An area j spike reaches area i
only in coincidence with route neuron (i, j) (communication through synchrony: an AND). Area i's
synchronising population ``sync_lif`` integrates the spikes that got through; the phase gate is a
population ``phase_lif``, and ``p AND sync + (NOT p) AND x`` is again a spike train (the two masks
exclude each other). Route firing rates are the routing matrix it returns.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from ..attention import ACTIVATIONS
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..errors import SpikingAttnError, check_int
from ..graph import export_rule
from ..converters.rules import HARD_SIGMOID_SLOPE, conversion_rule
from ..layers import DenseThresholdOffset, LinearBN
from ..neuron import poised_population, population
from ..opcount import count_rule, nnz
from . import MechanismSpec, register_mechanism


@dataclass(frozen=True)
class PulvinarOptions:
    """``areas``: how many cortical areas the channels are split into (must divide ``dim``)."""

    areas: int = 4

    def __post_init__(self) -> None:
        check_int(self.areas, "areas", low=1, high=64)


def _check_areas(dim: int, areas: int) -> int:
    if dim % areas:
        raise SpikingAttnError(f"dim ({dim}) must be divisible by the pulvinar's areas ({areas})")
    return dim // areas


def _split_areas(x: torch.Tensor, areas: int) -> torch.Tensor:
    *lead, d = x.shape
    return x.reshape(*lead, areas, d // areas)  # [..., A, Da]


class DensePulvinarSync(nn.Module):
    """Dense pulvinar synchronization. ``x`` ``[B, N, D]`` -> ``[B, N, D]`` (and the routing matrix
    ``[B, A, A]`` with ``return_routing=True``)."""

    def __init__(self, dim: int, areas: int = 4, act: str = "relu") -> None:
        super().__init__()
        self.areas = areas
        width = _check_areas(dim, areas)
        self.area_proj = nn.ModuleList(LinearBN(width, width) for _ in range(areas))
        self.area_act = ACTIVATIONS[act]()
        self.pulvinar = nn.Linear(dim, areas * areas)
        self.route = DenseThresholdOffset(areas * areas)  # the dense twin of the route population
        self.phase = LinearBN(dim, dim)
        self.out = LinearBN(dim, dim)

    def routing(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, A, A]``: row i is the softmax over source areas j."""
        logits = self.route(self.pulvinar(x.mean(dim=-2)))  # [B, A*A]
        return logits.reshape(*logits.shape[:-1], self.areas, self.areas).softmax(-1)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_routing: bool = False):
        parts = _split_areas(x, self.areas)  # [B, N, A, Da]
        areas = torch.stack([self.area_act(proj(parts[..., j, :])) for j, proj in enumerate(self.area_proj)], -2)
        route = self.routing(x)  # [B, A, A]
        sync = torch.einsum("bij,bnjd->bnid", route, areas).flatten(-2)  # [B, N, D]
        p = torch.sigmoid(self.phase(x))  # [B, N, D]
        out = self.out(p * sync + (1 - p) * x)
        return (out, route) if return_routing else out


class SpikingPulvinarSync(nn.Module):
    """Spiking pulvinar synchronization. ``x`` spikes ``[T, B, N, D]`` -> currents ``[T, B, N, D]``
    (and route firing rates ``[B, A, A]`` with ``return_routing=True``)."""

    def __init__(self, dim: int, areas: int = 4, lif: Optional[dict] = None) -> None:
        super().__init__()
        self.areas = areas
        width = _check_areas(dim, areas)
        self.area_proj = nn.ModuleList(LinearBN(width, width) for _ in range(areas))
        self.area_lif = nn.ModuleList(population(width, lif) for _ in range(areas))
        self.pulvinar = nn.Linear(dim, areas * areas)
        self.route = poised_population(areas * areas, lif)  # a route opens on net excitation
        self.sync_lif = population(dim, lif)
        self.phase = LinearBN(dim, dim)
        self.phase_lif = population(dim, lif)
        self.out = LinearBN(dim, dim)

    def routes(self, x: torch.Tensor) -> torch.Tensor:
        """Route spikes ``[T, B, A, A]``: neuron (i, j) opens the way from area j to area i."""
        current = self.pulvinar(x).mean(dim=-2)  # [T, B, A*A]: projected per token, then averaged
        spikes = self.route(current)
        return spikes.reshape(*spikes.shape[:-1], self.areas, self.areas)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_routing: bool = False):
        parts = _split_areas(x, self.areas)  # [T, B, N, A, Da]
        areas = torch.stack([lif(proj(parts[..., j, :])) for j, (proj, lif)
                             in enumerate(zip(self.area_proj, self.area_lif))], -2)  # [T, B, N, A, Da] spikes
        route = self.routes(x)  # [T, B, A, A] spikes
        # area j's spike reaches area i only with route (i, j) at the same step; area i sums what arrives
        arriving = torch.einsum("tbij,tbnjd->tbnid", route, areas)  # [T, B, N, A, Da] counts of coincidences
        sync = self.sync_lif(arriving.flatten(-2))  # [T, B, N, D] spikes
        p = self.phase_lif(self.phase(x))  # [T, B, N, D] phase gate spikes
        mixed = p * sync + (1 - p) * x  # spikes: the two masks exclude each other
        out = self.out(mixed)
        return (out, route.mean(0)) if return_routing else out


@export_rule(SpikingPulvinarSync)
def _export_pulvinar(sync: SpikingPulvinarSync, graph, x, context=None, *, cue=None):
    """Area, route, synchronising and phase populations form the core group ``pulvinar``. Area j's
    spike reaches area i through a coincidence neuron with route (i, j); the phase gate picks per
    channel between synchronised and input spikes with an AND and an AND-NOT."""
    name = graph.name_of(sync)
    a = sync.areas
    n, d = x.shape
    da = d // a
    with graph.group(f"pulvinar:{name}"):
        areas = []
        for j, (proj, lif) in enumerate(zip(sync.area_proj, sync.area_lif)):
            part = graph.linear_map(x, lambda t, j=j: t[..., j * da:(j + 1) * da])  # [N, Da]
            part_spikes = graph.population(lif, graph.dense(proj, part))
            areas.append(part_spikes)
        route_current = graph.linear_map(graph.dense(sync.pulvinar, x), lambda t: t.mean(dim=-2))  # [A*A]
        route = graph.population(sync.route, route_current)
        # coincidences: neuron (n, i, j, c) fires when area j's channel c spikes and route (i, j) is open
        pair = None
        for j, area in enumerate(areas):
            from_area = graph.linear_map(area, lambda t: t[:, :, None, :].expand(t.shape[0], n, a, da))  # [N, A_i, Da]
            spread = graph.linear_map(from_area, lambda t: _place(t, j, a))  # [N, A_i, A_j, Da]
            pair = spread if pair is None else pair + spread
        route_spread = graph.linear_map(route, lambda r: r.reshape(-1, 1, a, a, 1).expand(r.shape[0], n, a, a, da))
        arriving = graph.logic(f"{name}.area_and_route", pair + route_spread, 1.5)  # [N, A, A, Da]
        summed = graph.linear_map(arriving, lambda t: t.sum(dim=-2).reshape(t.shape[0], n, d))  # over sources j
        synced = graph.population(sync.sync_lif, summed)
        phase = graph.population(sync.phase_lif, graph.dense(sync.phase, x))
        p_and_sync = graph.logic(f"{name}.phase_and_sync", phase.current() + synced.current(), 1.5)
        x_not_p = graph.logic(f"{name}.input_and_not_phase", x.current() + phase.current().scaled(-1.0), 0.5)
    # out(p AND sync + x AND NOT p): one weight layer reading two spike trains that exclude each other
    return graph.dense(sync.out, p_and_sync) + graph.dense(sync.out, x_not_p).without_bias()


def _place(t, j: int, a: int):
    """``[K, N, A_i, Da]`` -> ``[K, N, A_i, A_j, Da]`` with the input at source index ``j``, zeros elsewhere."""
    out = t.new_zeros(*t.shape[:3], a, t.shape[-1])
    out[:, :, :, j] = t
    return out


def spiking_block(config, options: PulvinarOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif,
                                   attn=SpikingPulvinarSync(c.dim, options.areas, lif))


def dense_block(config, options: PulvinarOptions) -> DenseTransformerBlock:
    c = config
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act,
                                 attn=DensePulvinarSync(c.dim, options.areas, c.dense_act))


register_mechanism(MechanismSpec(
    name="pulvinar",
    summary="pulvinar synchronization: route neurons open area-to-area paths; spikes pass in coincidence",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=PulvinarOptions,
))


@count_rule(SpikingPulvinarSync)
def _count_spiking_pulvinar(pulvinar: SpikingPulvinarSync, call) -> None:
    """Route (i, j) AND area j's spikes (coincidence events), the coincidences summed into area i, the mean
    of the pulvinar drive over tokens, and the phase gate's choice (p AND sync, x AND NOT p)."""
    x = call.args[0]  # [T, B, N, D] spikes
    route = call.output_of(pulvinar.route)  # [T, B, A*A]
    areas = [call.output_of(lif) for lif in pulvinar.area_lif]  # A x [T, B, N, Da]
    n, da = areas[0].shape[-2], areas[0].shape[-1]
    coincidences = torch.einsum("tbij,tbnjd->tbnid", route.reshape(*route.shape[:-1], pulvinar.areas, -1),
                                torch.stack(areas, -2))
    p, sync = call.output_of(pulvinar.phase_lif), call.output_of(pulvinar.sync_lif)
    masks = n * da * nnz(route) + pulvinar.areas * sum(nnz(a) for a in areas) + 2 * nnz(p) + nnz(sync) + nnz(x)
    call.add(masks=masks, adds=call.output_of(pulvinar.pulvinar).numel() + float(coincidences.sum()))


@count_rule(DensePulvinarSync)
def _count_dense_pulvinar(pulvinar: DensePulvinarSync, call) -> None:
    """The token mean, the softmax over routes, route times area values, and the sigmoid phase mix."""
    x = call.args[0]  # [B, N, D]
    b, n, d = x.shape
    routes = b * pulvinar.areas * pulvinar.areas
    mixing = routes * n * (d // pulvinar.areas)
    call.add(macs=2 * routes + mixing + 3 * x.numel(), adds=x.numel() + routes + 2 * x.numel())


@conversion_rule(SpikingPulvinarSync)
def _convert_pulvinar(sync: SpikingPulvinarSync, dense: DensePulvinarSync, ctx, unit) -> None:
    """Areas rate-code their ReLU. The routing softmax over source areas is linearised at uniform routing,
    ``R_ij ~ 1/A + (l_ij - mean_j l_ij) / A`` (exact when the logits of a row are equal; the first-order
    term of the softmax), which is linear in the pulvinar's output, so the centring folds into its weights
    and a route neuron of threshold 1 fires at that rate. Area i's synchronising population counts the
    coincidences of routes and area spikes (each worth lambda_area) and fires spikes worth as much as an
    input spike, so ``p AND sync + (NOT p) AND x`` carries one unit; the phase gate is a hard sigmoid."""
    a = sync.areas
    for proj in sync.area_proj:
        ctx.scale_input(proj, unit)
    lam_area = [ctx.threshold(lif, dense.area_act) for lif in sync.area_lif][0]
    ctx.scale_input(sync.pulvinar, unit)
    with torch.no_grad():
        w, b = sync.pulvinar.weight, sync.pulvinar.bias
        offset = (dense.route.bias - dense.route.vth).to(b.dtype)

        def centred(t):  # subtract each row's mean over its source areas, then divide by A
            rows = t.reshape(a, a, *t.shape[1:])
            return ((rows - rows.mean(dim=1, keepdim=True)) / a).reshape(t.shape)

        w.copy_(centred(w))
        b.copy_(centred(b + offset))
        sync.route.bias.fill_(1.0 / a)
    ctx.set_threshold(sync.route, 1.0, "softmax over source areas, linearised at uniform routing")
    ctx.set_threshold(sync.sync_lif, unit / lam_area, "the routed mixture, in units of an input spike")
    ctx.scale_input(sync.phase, unit)
    ctx.scale_output(sync.phase, HARD_SIGMOID_SLOPE, 0.5)
    ctx.set_threshold(sync.phase_lif, 1.0, "hard sigmoid of the dense phase gate")
    ctx.scale_input(sync.out, unit)
