"""Saliency with centre-surround sharpening and inhibition of return: where to look next.

A saliency map ranks the locations of a scene by how much they stand out (bottom up) and by how well
they match the current goal (top down); attention goes to the peak, and inhibition of return (IOR)
keeps it from going back to a place it has just visited. Registry entry ``saliency``.

The tokens are the locations of a feature map. The map's size comes from the input at every call:
``N`` tokens form the squarest grid ``h x w = N`` (``h`` the largest divisor of ``N`` not above
``sqrt(N)``; a 36-token input is 6 x 6, a prime number of tokens a single row), row-major.

Dense twin (``DenseSaliency``), for ``x`` ``[B, N, D]`` and a goal (the cue) ``[B, C]`` (or none)::

    b      = score_2(act(score_1(x) + goal_proj(goal)))  [B, h, w]  a small conv net scores each location;
                                                         the goal raises the hidden units it needs
    m      = sharpness * norm(DoG * b)                   centre sigma 0.5, surround sigma 1.5, weight 0.5;
                                                         norm: minus the mean, over the spread (locations);
                                                         sharpness: learned, the winner-take-all's gain
    for g in 0..G-1:                                     G glimpses (G = config.timesteps)
        s_g   = softmax_locations(m - ior_strength * r)  the saliency map of glimpse g
        r     = (1 - ior_decay) * r + s_g                 the IOR trace: per sample, zero at every call
    out    = out(x * N * mean_g s_g)                     the features weighted by where attention went

Spiking version (``SpikingSaliency``): the time steps are the glimpses. The conv net reads spikes
through a hidden population (``score_lif``); the goal arrives as cue spikes, and ``goal_proj`` adds
them to the hidden population at every location (feature-based attention: a hidden unit tuned to the
sought digit fires where that digit is, and more readily when the goal asks for it), so the score map
is the bottom-up map plus the goal's top-down share. The saliency neurons (``saliency_lif``, one per location) receive that
drive through a lateral difference-of-Gaussians connectivity (excitatory centre, inhibitory
surround), normalised and scaled by the learned ``sharpness`` as in the dense twin. A shared
inhibitory interneuron follows the strongest location (a max over the locations), so the peak receives
``WINNER_CURRENT`` and a location ``g`` below it ``WINNER_CURRENT - sharpness * g``: a soft
winner-take-all, in which only locations near the peak fire. IOR is the saliency neurons'
adaptive threshold: each spike raises a neuron's threshold by ``ior_strength``, and it decays back
at ``ior_decay`` per step, slower than the membrane. The attended location's feature spikes pass
(an AND with its saliency spike) and ``out`` projects them onto the stream.

The IOR state is the population's (and the dense trace a local variable): it is per sample and starts
afresh at every call, so nothing leaks between batches, whatever their size.

Neither the converter nor the Lava exporter takes it yet, and both say why (the softmax over
locations, the IOR trace; the adaptive threshold and the convolution over the token grid).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import ACTIVATIONS
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..converters.rules import refuse
from ..errors import SpikingAttnError, check_int, check_tensor
from ..graph import ExportError, export_rule
from ..layers import LinearBN
from ..neuron import LIFPopulation, population
from ..opcount import count_rule, mask_events
from . import MechanismSpec, register_mechanism

DOG_CENTRE, DOG_SURROUND, DOG_WEIGHT = 0.5, 1.5, 0.5  # sigmas (in locations) and the surround's weight
DOG_RADIUS = 3  # the kernel is (2 * radius + 1) locations wide
WINNER_CURRENT = 1.5  # the current into the strongest location's saliency neuron (threshold 1 at rest)


@dataclass(frozen=True)
class SaliencyOptions:
    """``hidden``: channels of the conv net's hidden layer. ``ior_strength``: how far a visit lowers a
    location's saliency (dense) or raises its threshold per spike (spiking). ``ior_decay``: how fast
    that recovers per step, in [0, 1]."""

    hidden: int = 32
    ior_strength: float = 0.5
    ior_decay: float = 0.1

    def __post_init__(self) -> None:
        check_int(self.hidden, "hidden", low=1, high=4096)
        for name in ("ior_strength", "ior_decay"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise SpikingAttnError(f"{name} must be a finite number, got {value!r}")
        if self.ior_strength < 0:
            raise SpikingAttnError(f"ior_strength must be >= 0, got {self.ior_strength}")
        if not 0.0 <= self.ior_decay <= 1.0:
            raise SpikingAttnError(f"ior_decay must lie in [0, 1], got {self.ior_decay}")


def grid_shape(tokens: int) -> Tuple[int, int]:
    """The squarest grid ``(h, w)`` with ``h * w = tokens`` and ``h <= w``."""
    h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
    return h, tokens // h


def dog_kernel(radius: int = DOG_RADIUS, centre: float = DOG_CENTRE, surround: float = DOG_SURROUND,
               weight: float = DOG_WEIGHT) -> torch.Tensor:
    """The difference of Gaussians ``G(centre) - weight * G(surround)``, each sampled on a
    ``(2r+1) x (2r+1)`` grid of locations and normalised to sum 1: ``[2r+1, 2r+1]``."""
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    d2 = r[:, None] ** 2 + r[None, :] ** 2

    def gaussian(sigma):
        g = torch.exp(-d2 / (2 * sigma ** 2))
        return g / g.sum()

    return (gaussian(centre) - weight * gaussian(surround)).to(torch.get_default_dtype())


def _as_map(t: torch.Tensor, grid) -> torch.Tensor:
    """``[..., N]`` -> ``[prod(...), 1, h, w]`` for a convolution."""
    return t.reshape(-1, 1, *grid)


def _centre_surround(drive: torch.Tensor, kernel: torch.Tensor, grid) -> torch.Tensor:
    """The DoG applied to a drive ``[..., N]`` over the location grid (zero outside): ``[..., N]``."""
    out = F.conv2d(_as_map(drive, grid), kernel.to(drive.dtype)[None, None], padding=kernel.shape[-1] // 2)
    return out.reshape(drive.shape)


def _conv_bn(dim: int, hidden: int) -> nn.Sequential:
    """The conv net's first layer: a 3x3 convolution over the location grid and its BatchNorm."""
    return nn.Sequential(nn.Conv2d(dim, hidden, 3, padding=1), nn.BatchNorm2d(hidden))


def _normalised(m: torch.Tensor) -> torch.Tensor:
    """A map ``[..., N]`` centred and divided by its spread over the locations: the shared inhibition of a
    soft winner-take-all (the mean) and divisive normalisation (the spread), so that only the locations
    standing out from the rest win, whatever the scale of the drive."""
    centred = m - m.mean(-1, keepdim=True)
    return centred / (centred.pow(2).mean(-1, keepdim=True).sqrt() + 1e-5)


def _score(conv1: nn.Module, act, conv2: nn.Conv2d, x: torch.Tensor, grid,
           goal: Optional[torch.Tensor] = None) -> torch.Tensor:
    """The conv net over the location grid: ``x`` ``[..., N, D]`` -> scores ``[..., N]``. ``goal``
    ``[..., H]`` (or None) is added to the hidden layer at every location; ``act`` runs on the hidden
    layer as ``[..., N, H]`` (a population needs its leading time axis)."""
    lead, (n, d) = x.shape[:-2], x.shape[-2:]
    maps = x.reshape(-1, n, d).transpose(1, 2).reshape(-1, d, *grid)  # [L, D, h, w]
    hidden = conv1(maps)  # [L, H, h, w]
    hidden = hidden.reshape(*lead, hidden.shape[1], n).transpose(-1, -2)  # [..., N, H]
    if goal is not None:
        hidden = hidden + goal.unsqueeze(-2)
    hidden = act(hidden)
    out = conv2(hidden.reshape(-1, n, hidden.shape[-1]).transpose(1, 2).reshape(-1, hidden.shape[-1], *grid))
    return out.reshape(*lead, n)


def glimpse_maps(m: torch.Tensor, glimpses: int, ior_strength: float, ior_decay: float) -> torch.Tensor:
    """The dense twin's glimpses over a map ``m`` ``[B, N]``: ``[B, G, N]``, each a softmax over the locations
    of ``m`` minus the inhibition of return. The IOR trace is a local variable: per sample, and zero at the
    start of every call (a sequence), so nothing carries over between batches."""
    trace = torch.zeros_like(m)
    maps = []
    for _ in range(glimpses):
        s = torch.softmax(m - ior_strength * trace, dim=-1)
        trace = (1 - ior_decay) * trace + s
        maps.append(s)
    return torch.stack(maps, dim=1)


class DenseSaliency(nn.Module):
    """Dense saliency with IOR. ``x`` ``[B, N, D]``, ``cue`` (the goal) ``[B, C]`` or None -> ``[B, N, D]``
    (and the saliency maps ``[B, G, N]`` with ``return_maps=True``)."""

    def __init__(self, dim: int, num_cues: int = 0, hidden: int = 32, glimpses: int = 4, ior_strength: float = 0.5,
                 ior_decay: float = 0.1, act: str = "relu") -> None:
        super().__init__()
        self.dim, self.glimpses = dim, glimpses
        self.ior_strength, self.ior_decay = float(ior_strength), float(ior_decay)
        self.score_1 = _conv_bn(dim, hidden)
        self.score_act = ACTIVATIONS[act]()
        self.score_2 = nn.Conv2d(hidden, 1, 1)
        self.goal_proj = nn.Linear(num_cues, hidden) if num_cues else None
        self.register_buffer("dog", dog_kernel(), persistent=False)
        self.sharpness = nn.Parameter(torch.ones(()))  # the winner-take-all's gain, learned
        self.out = LinearBN(dim, dim)

    def maps(self, x: torch.Tensor, cue: Optional[torch.Tensor]) -> torch.Tensor:
        """The saliency map of every glimpse, ``[B, G, N]`` (each sums to 1 over the locations)."""
        check_tensor(x, "x", ndim=3, last_dim=self.dim)
        grid = grid_shape(x.shape[1])
        goal = self.goal_proj(cue) if cue is not None and self.goal_proj is not None else None  # [B, H]
        drive = _score(self.score_1, self.score_act, self.score_2, x, grid, goal)  # [B, N]
        m = self.sharpness * _normalised(_centre_surround(drive, self.dog, grid))  # [B, N]
        return glimpse_maps(m, self.glimpses, self.ior_strength, self.ior_decay)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_maps: bool = False):
        maps = self.maps(x, cue)  # [B, G, N]
        out = self.out(x * (x.shape[1] * maps.mean(1)).unsqueeze(-1))
        return (out, maps) if return_maps else out


class SpikingSaliency(nn.Module):
    """Spiking saliency with IOR. ``x`` spikes ``[T, B, N, D]``, ``cue`` (the goal) spikes ``[T, B, C]`` or
    None -> currents ``[T, B, N, D]`` (and the saliency spikes ``[T, B, N]`` with ``return_maps=True``)."""

    def __init__(self, dim: int, num_cues: int = 0, hidden: int = 32, ior_strength: float = 0.5,
                 ior_decay: float = 0.1, lif: Optional[dict] = None) -> None:
        super().__init__()
        lif = dict(lif or {})
        self.dim = dim
        self.score_1 = _conv_bn(dim, hidden)
        self.score_lif = population(hidden, lif)
        self.score_2 = nn.Conv2d(hidden, 1, 1)
        self.goal_proj = nn.Linear(num_cues, hidden) if num_cues else None
        self.register_buffer("dog", dog_kernel(), persistent=False)
        # one neuron per location; IOR is its adaptive threshold (not learned: the twins share parameters)
        self.saliency_lif = LIFPopulation(dv=lif.get("dv", 0.5), vth=lif.get("vth", 1.0), theta_decay=ior_decay,
                                          theta_step=ior_strength, surrogate=lif.get("surrogate", "atan"),
                                          engine=lif.get("engine", "native"))
        self.sharpness = nn.Parameter(torch.ones(()))  # the winner-take-all's gain, learned
        self.out = LinearBN(dim, dim)

    def drive(self, x: torch.Tensor, cue: Optional[torch.Tensor]) -> torch.Tensor:
        """The current into the saliency neurons, ``[T, B, N]``: the centre-surround drive, normalised."""
        grid = grid_shape(x.shape[2])
        goal = self.goal_proj(cue) if cue is not None and self.goal_proj is not None else None  # [T, B, H]
        drive = _score(self.score_1, self.score_lif, self.score_2, x, grid, goal)  # [T, B, N]
        m = self.sharpness * _normalised(_centre_surround(drive, self.dog, grid))
        # the inhibitory interneuron follows the strongest location: only locations near the peak can fire
        return m - m.max(-1, keepdim=True).values + WINNER_CURRENT

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_maps: bool = False):
        check_tensor(x, "x", ndim=4, last_dim=self.dim)
        attended = self.saliency_lif(self.drive(x, cue))  # [T, B, N] spikes
        out = self.out(x * attended.unsqueeze(-1))  # a location's feature spikes AND its saliency spike
        return (out, attended) if return_maps else out


def spiking_block(config, options: SaliencyOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    attn = SpikingSaliency(c.dim, c.num_cues, options.hidden, options.ior_strength, options.ior_decay, lif)
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif, attn=attn)


def dense_block(config, options: SaliencyOptions) -> DenseTransformerBlock:
    c = config
    attn = DenseSaliency(c.dim, c.num_cues, options.hidden, c.timesteps, options.ior_strength, options.ior_decay,
                         c.dense_act)
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act, attn=attn)


register_mechanism(MechanismSpec(
    name="saliency",
    summary="saliency with centre-surround (DoG) sharpening, a goal cue, a soft winner-take-all and inhibition "
            "of return (an adaptive threshold); tokens are the locations",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=SaliencyOptions,
))


# --- operation counts (``opcount``) ------------------------------------------------------------------


def _taps(count_map: torch.Tensor, grid, size: int) -> float:
    """How many synapses of a ``size x size`` kernel the events ``count_map`` ``[..., N]`` reach, edges
    included: the sum of the events times the number of in-grid targets of each location."""
    ones = torch.ones(1, 1, size, size, dtype=count_map.dtype)
    return float(F.conv2d(_as_map(count_map, grid), ones, padding=size // 2).sum())


@count_rule(SpikingSaliency)
def _count_spiking(module: SpikingSaliency, call) -> None:
    """The goal's ANDs with the feature spikes; each coincidence and each score spike reaches the saliency
    neurons through the DoG (the 1x1 second conv folds into those synapses); the shared inhibition sums the
    drive; the ANDs of the feature spikes with the saliency spikes. The convolution's first layer counts
    itself."""
    x = call.args[0]  # [T, B, N, D] spikes
    grid, size = grid_shape(x.shape[2]), module.dog.shape[-1]
    score = call.output_of(module.score_lif)  # [T, B, N, H]
    acs = _taps(score.sum(-1), grid, size)
    attended = call.output_of(module.saliency_lif)  # [T, B, N]
    masks = mask_events(x, attended.unsqueeze(-1))
    if module.goal_proj is not None and call.kwargs.get("cue") is not None:
        adds = score.numel()  # the goal's current added to every hidden neuron of every location
    else:
        adds = 0
    # the normalisation: the mean's sum and subtraction (adds), a square, a root, a division and the gain (MACs);
    # the interneuron's max (a comparison per location) and its inhibition (an add)
    call.add(acs=acs, adds=adds + 4 * attended.numel(), macs=4 * attended.numel(), masks=masks)


@count_rule(DenseSaliency)
def _count_dense(module: DenseSaliency, call) -> None:
    """The goal added to the hidden layer at every location, the DoG and the normalisation per location, per
    glimpse the IOR subtraction, the softmax (an exp, a sum and a division per location) and the trace
    update, then the weighting."""
    x = call.args[0]  # [B, N, D]
    b, n, d = x.shape
    taps = module.dog.numel()
    macs = b * n * taps + 3 * b * n + module.glimpses * b * n * 4 + b * n * d
    adds = 2 * b * n + module.glimpses * b * n
    if module.goal_proj is not None and call.kwargs.get("cue") is not None:
        adds += b * n * module.goal_proj.out_features
    call.add(macs=macs, adds=adds)


# --- what the converter and the exporter cannot take yet ----------------------------------------------

refuse(SpikingSaliency, "the softmax over locations and the IOR trace have no rate-coded form yet; convert "
                        "with --method td, which runs the dense twin exactly")


@export_rule(SpikingSaliency)
def _export(module: SpikingSaliency, graph, x, context=None, *, cue=None):
    raise ExportError(f"{graph.name_of(module)} (saliency): the inhibition of return is an adaptive threshold "
                      f"(Lava's ATRLIF, not mapped yet) and the score net is a convolution over the token grid, "
                      f"which the graph has no rule for")
