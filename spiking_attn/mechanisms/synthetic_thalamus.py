"""Synthetic thalamus: a task-driven gate that lets K tokens into a workspace, tagged by phase.

The thalamus as a limited-capacity router: a task signal decides which inputs are salient, only the
K most salient reach the cortical workspace, and the inputs that get in are bound by the phase of an
oscillation at which they arrive. Reward adjusts what counts as salient. Registry entry
``synthetic_thalamus``.

Dense twin (``DenseSyntheticThalamus``), for ``x`` ``[B, N, D]`` and a task cue ``[B, C]``::

    task    = act(task_proj(cue))                          [B, D]   the task embedding (zero without a cue)
    key     = act(salience_key(x))                         [B, N, D]
    sal_n   = sum_h w_h * scale * sum_{c in h} task_c key_nc    multihead salience, w = salience_weight [H]
    sel     = top-K of sal (ties: the lower index)         [B, N] in {0, 1}, exactly K ones per sample
    theta_n = 2 pi * sum_p softmax(phase(x_n))_p * p / P   a learned phase on a cycle of P slots
    q_n     = ws_q(x_n) + ws_task(task)                   the task set biases the workspace's queries
    a_nm    = softmax_m over selected m of (q_n . k_m * scale + lambda * cos(theta_n - theta_m))
    out     = out(sum_m a_nm v_m)                          only selected tokens enter the workspace, and its
                                                           content is broadcast to every token

Spiking version (``SpikingSyntheticThalamus``): the task embedding is a population driven by the cue
spikes. Salience is the coincidence of task spikes with each token's key spikes, weighted per head.
The top-K is a k-winner-take-all population: at every step exactly K tokens pass (the K largest drives,
the lower index first on ties). A token's phase is spike timing: its phase unit fires on step
``t mod P = phi_n`` of the cycle, ``phi_n`` the slot with the largest drive; tokens tagged with the same
phase fire together, so phase similarity becomes coincidence. The workspace is SDSA whose keys and
values come from the selected tokens only, and whose content every token's query reads (the
workspace broadcasts), with a coincidence bias: the key-value sum that a query reads is
``sum_m sel_m k_m v_m + lambda * p_n * sum_m sel_m p_m k_m v_m``, where ``p`` are the phase spikes, so a
token in phase with others hears them more. As in the dense twin, the task spikes also drive the
workspace's query population (the task set: which features to read out of what got in). ``lambda`` (``coincidence_scale``) is learned in both.

Both selections and the phase slots are hard in the forward pass; their gradient is a sigmoid (top-K:
of the salience's distance to the boundary between the K-th and the (K+1)-th) or a softmax (phase).

Reward feedback (both twins): ``plasticity = True`` makes every forward pass keep an eligibility per
sample and head (the task-key coincidences of the selected tokens); ``reinforce(reward, lr)`` then
moves the salience weights by ``lr * mean_b(reward_b * eligibility_b)``, a three-factor rule (pre,
post, reward). It works at inference, without gradients; it is off by default, and nothing is kept
when it is off.

The classifier's embedding is the image-row adapter; token ids (``nn.Embedding``) are not an input of
the classifier scaffold yet. The converter and the Lava exporter refuse this mechanism and say why.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import ACTIVATIONS
from ..block import DenseTransformerBlock, SpikingTransformerBlock
from ..converters.rules import refuse
from ..errors import SpikingAttnError, ShapeError, all_finite, check_int, check_tensor
from ..graph import ExportError, export_rule
from ..layers import LinearBN
from ..neuron import population
from ..opcount import count_rule, mask_events, nnz
from . import MechanismSpec, register_mechanism

SELECTION_SHARPNESS = 4.0  # slope of the sigmoid that stands in for the top-K selection's gradient


@dataclass(frozen=True)
class SyntheticThalamusOptions:
    """``k``: tokens let into the workspace (capped at the number of tokens). ``phases``: slots per
    oscillation cycle (``P``; a spiking token's phase unit fires once every ``P`` steps)."""

    k: int = 8
    phases: int = 4

    def __post_init__(self) -> None:
        check_int(self.k, "k", low=1, high=1 << 20)
        check_int(self.phases, "phases", low=1, high=1024)


def top_k_select(salience: torch.Tensor, k: int) -> torch.Tensor:
    """Exactly ``min(k, N)`` ones per row of ``salience`` ``[..., N]``: the largest values, the lower index
    first among equals. Forward: the hard selection; backward: a sigmoid of each value's distance to the
    boundary between the K-th and the (K+1)-th largest (the k-winner-take-all's surrogate)."""
    n = salience.shape[-1]
    k = min(k, n)
    order = torch.sort(-salience.detach(), dim=-1, stable=True).indices  # descending, stable on ties
    hard = torch.zeros_like(salience).scatter(-1, order[..., :k], 1.0)
    if k == n:
        boundary = salience.detach().min(-1, keepdim=True).values - 1.0
    else:
        ranked = torch.gather(salience.detach(), -1, order)
        boundary = (ranked[..., k - 1:k] + ranked[..., k:k + 1]) / 2
    soft = torch.sigmoid(SELECTION_SHARPNESS * (salience - boundary))
    return hard + (soft - soft.detach())


def phase_slots(drive: torch.Tensor) -> torch.Tensor:
    """One-hot phase slots ``[..., P]`` from a drive ``[..., P]`` (the largest; the lower slot on ties), with
    the softmax's gradient."""
    soft = drive.softmax(-1)
    hard = F.one_hot(drive.detach().argmax(-1), drive.shape[-1]).to(drive.dtype)
    return hard + (soft - soft.detach())


def _salience(task: torch.Tensor, key: torch.Tensor, weight: torch.Tensor, heads: int) -> tuple:
    """``task`` ``[..., D]``, ``key`` ``[..., N, D]`` -> salience ``[..., N]`` and the per-head coincidences
    ``[..., N, H]`` (scaled by ``1 / sqrt(D / H)``)."""
    per_channel = task.unsqueeze(-2) * key  # [..., N, D]
    per_head = per_channel.reshape(*per_channel.shape[:-1], heads, -1).sum(-1) / math.sqrt(key.shape[-1] // heads)
    return per_head @ weight, per_head


class _Plasticity:
    """The three-factor reward rule shared by both twins (mixed into each)."""

    def _keep_eligibility(self, per_head: torch.Tensor, selected: torch.Tensor) -> None:
        """``per_head`` ``[..., B, N, H]``, ``selected`` ``[..., B, N]``: the eligibility per sample and head."""
        if not self.plasticity:
            return
        trace = (per_head.detach() * selected.detach().unsqueeze(-1)).sum(-2)  # [..., B, H]
        while trace.dim() > 2:  # a spiking model's steps: the mean over time
            trace = trace.mean(0)
        self.eligibility = trace

    @torch.no_grad()
    def reinforce(self, reward, lr: float = 0.01) -> torch.Tensor:
        """Move the salience weights by ``lr * mean_b(reward_b * eligibility_b)`` after a forward pass with
        ``plasticity`` on; returns the change ``[H]``. ``reward``: a number or ``[B]``."""
        if not self.plasticity:
            raise SpikingAttnError("reinforce needs plasticity on (module.plasticity = True) before the forward pass")
        if self.eligibility is None:
            raise SpikingAttnError("reinforce needs a forward pass first: there is no eligibility to reinforce")
        if not (isinstance(lr, (int, float)) and not isinstance(lr, bool) and math.isfinite(lr)):
            raise SpikingAttnError(f"lr must be a finite number, got {lr!r}")
        e = self.eligibility  # [B, H]
        r = torch.as_tensor(reward, dtype=e.dtype)
        if r.dim() == 0:
            r = r.expand(e.shape[0])
        if r.shape != (e.shape[0],):
            raise ShapeError(f"reward must be a number or [B] = [{e.shape[0]}], got {tuple(r.shape)}")
        if not all_finite(r):
            raise SpikingAttnError("reward contains NaN or Inf")
        change = lr * (r[:, None] * e).mean(0)
        self.salience_weight.add_(change.to(self.salience_weight.dtype))
        self.eligibility = None
        return change


class DenseSyntheticThalamus(nn.Module, _Plasticity):
    """Dense synthetic thalamus. ``x`` ``[B, N, D]``, ``cue`` ``[B, C]`` or None -> ``[B, N, D]`` (and a dict of
    ``selected`` ``[B, N]``, ``phase`` ``[B, N]`` angles and ``salience`` ``[B, N]`` with ``return_parts=True``)."""

    def __init__(self, dim: int, heads: int = 4, num_cues: int = 0, k: int = 8, phases: int = 4,
                 act: str = "relu") -> None:
        super().__init__()
        if dim % heads:
            raise SpikingAttnError(f"dim ({dim}) must be divisible by heads ({heads})")
        self.dim, self.heads, self.k, self.phases = dim, heads, k, phases
        act_cls = ACTIVATIONS[act]
        self.task_proj = LinearBN(num_cues, dim) if num_cues else None
        self.task_act = act_cls()
        self.salience_key = LinearBN(dim, dim)
        self.salience_key_act = act_cls()
        self.salience_weight = nn.Parameter(torch.ones(heads))
        self.phase = nn.Linear(dim, phases)
        self.ws_q, self.ws_k, self.ws_v = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        self.ws_task = nn.Linear(dim, dim)  # the task set: the task embedding biases the workspace's queries
        self.coincidence_scale = nn.Parameter(torch.ones(()))
        self.out = LinearBN(dim, dim)
        self.plasticity, self.eligibility = False, None

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_parts: bool = False):
        check_tensor(x, "x", ndim=3, last_dim=self.dim)
        b, n, d = x.shape
        if self.task_proj is None:
            task = x.new_zeros(b, d)
        else:
            source = cue if cue is not None else x.new_zeros(b, self.task_proj.linear.in_features)
            task = self.task_act(self.task_proj(source))  # [B, D]
        salience, per_head = _salience(task, self.salience_key_act(self.salience_key(x)), self.salience_weight,
                                       self.heads)  # [B, N], [B, N, H]
        selected = top_k_select(salience, self.k)  # [B, N]
        self._keep_eligibility(per_head, selected)
        slots = phase_slots(self.phase(x))  # [B, N, P]
        theta = 2 * math.pi * (slots * torch.arange(self.phases, dtype=x.dtype)).sum(-1) / self.phases  # [B, N]
        similarity = torch.cos(theta[:, :, None] - theta[:, None, :])  # [B, N, M]
        h, dh = self.heads, d // self.heads
        queries = self.ws_q(x) + self.ws_task(task).unsqueeze(1)  # [B, N, D]
        q, k, v = (t.reshape(b, n, h, dh).transpose(1, 2) for t in (queries, self.ws_k(x), self.ws_v(x)))
        # phase similarity, and the unselected keys shut out (log 0 clamped: a weight of 1e-9 at most)
        bias = self.coincidence_scale * similarity + torch.log(selected.clamp_min(1e-9))[:, None, :]
        mixed = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.unsqueeze(1))  # [B, H, N, Dh]
        out = self.out(mixed.transpose(1, 2).reshape(b, n, d))  # broadcast: every token reads the workspace
        if return_parts:
            return out, {"selected": selected.detach(), "phase": theta.detach(), "salience": salience.detach()}
        return out


class SpikingSyntheticThalamus(nn.Module, _Plasticity):
    """Spiking synthetic thalamus. ``x`` spikes ``[T, B, N, D]``, ``cue`` spikes ``[T, B, C]`` or None ->
    currents ``[T, B, N, D]`` (and a dict of ``selected`` ``[T, B, N]`` k-WTA spikes, ``phase`` ``[T, B, N]``
    phase spikes and ``salience`` ``[T, B, N]`` with ``return_parts=True``)."""

    def __init__(self, dim: int, heads: int = 4, num_cues: int = 0, k: int = 8, phases: int = 4,
                 lif: Optional[dict] = None) -> None:
        super().__init__()
        if dim % heads:
            raise SpikingAttnError(f"dim ({dim}) must be divisible by heads ({heads})")
        lif = dict(lif or {})
        self.dim, self.heads, self.k, self.phases = dim, heads, k, phases
        self.task_proj = LinearBN(num_cues, dim) if num_cues else None
        self.task_lif = population(dim, lif)
        self.salience_key = LinearBN(dim, dim)
        self.salience_key_lif = population(dim, lif)
        self.salience_weight = nn.Parameter(torch.ones(heads))
        self.phase = nn.Linear(dim, phases)
        self.ws_q, self.ws_k, self.ws_v = LinearBN(dim, dim), LinearBN(dim, dim), LinearBN(dim, dim)
        self.ws_q_lif, self.ws_k_lif, self.ws_v_lif = (population(dim, lif) for _ in range(3))
        self.ws_kv_lif = population(dim, {**lif, "vth": 0.5})
        self.ws_task = nn.Linear(dim, dim)  # the task set: task spikes bias the workspace's queries
        self.coincidence_scale = nn.Parameter(torch.ones(()))
        self.out = LinearBN(dim, dim)
        self.plasticity, self.eligibility = False, None

    def phase_spikes(self, x: torch.Tensor) -> torch.Tensor:
        """``[T, B, N]``: token n's phase unit fires on the steps ``t`` with ``t mod P`` its slot."""
        slots = phase_slots(self.phase(x).mean(0))  # [B, N, P]: a token's slot from its mean drive over the steps
        cycle = F.one_hot(torch.arange(x.shape[0]) % self.phases, self.phases).to(x.dtype)  # [T, P]
        return torch.einsum("tp,bnp->tbn", cycle, slots)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None, *, cue: Optional[torch.Tensor] = None,
                return_parts: bool = False):
        check_tensor(x, "x", ndim=4, last_dim=self.dim)
        t, b, n, d = x.shape
        if self.task_proj is None:
            task = x.new_zeros(t, b, d)
        else:
            source = cue if cue is not None else x.new_zeros(t, b, self.task_proj.linear.in_features)
            task = self.task_lif(self.task_proj(source))  # [T, B, D] spikes
        salience, per_head = _salience(task, self.salience_key_lif(self.salience_key(x)), self.salience_weight,
                                       self.heads)  # [T, B, N]: task AND key coincidences, weighted per head
        selected = top_k_select(salience, self.k)  # [T, B, N]: the k-WTA, exactly K per step
        self._keep_eligibility(per_head, selected)
        p = self.phase_spikes(x)  # [T, B, N]
        q = self.ws_q_lif(self.ws_q(x) + self.ws_task(task).unsqueeze(2))  # every token reads the workspace
        k, v = self.ws_k_lif(self.ws_k(x)), self.ws_v_lif(self.ws_v(x))
        kv = k * v * selected.unsqueeze(-1)  # [T, B, N, D]: ANDs of selected tokens
        in_phase = (kv * p.unsqueeze(-1)).sum(2, keepdim=True)  # [T, B, 1, D]: those firing at this phase step
        summed = kv.sum(2, keepdim=True) + self.coincidence_scale * p.unsqueeze(-1) * in_phase  # [T, B, N, D]
        out = self.out(q * self.ws_kv_lif(summed))  # q AND kv
        if return_parts:
            return out, {"selected": selected.detach(), "phase": p.detach(), "salience": salience.detach()}
        return out


def _options_k(config, options) -> int:
    return min(options.k, config.num_tokens)


def spiking_block(config, options: SyntheticThalamusOptions) -> SpikingTransformerBlock:
    c = config
    lif = c.lif_kwargs()
    attn = SpikingSyntheticThalamus(c.dim, c.heads, c.num_cues, _options_k(c, options), options.phases, lif)
    return SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif, attn=attn)


def dense_block(config, options: SyntheticThalamusOptions) -> DenseTransformerBlock:
    c = config
    attn = DenseSyntheticThalamus(c.dim, c.heads, c.num_cues, _options_k(c, options), options.phases, c.dense_act)
    return DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act, attn=attn)


register_mechanism(MechanismSpec(
    name="synthetic_thalamus",
    summary="synthetic thalamus: task-driven salience, a k-winner-take-all lets K tokens into a workspace, "
            "phase tags as spike timing bias it by coincidence; three-factor reward feedback",
    spiking_block=spiking_block,
    dense_block=dense_block,
    options=SyntheticThalamusOptions,
))


# --- operation counts (``opcount``) ------------------------------------------------------------------


@count_rule(SpikingSyntheticThalamus)
def _count_spiking(module: SpikingSyntheticThalamus, call) -> None:
    """Task AND key coincidences (summed per head, then weighted: a MAC per head and token); the k-WTA's
    comparisons (one per token and step, a floor for a sorting network); the phase slots' argmax; the
    workspace's ANDs (k and v, with the selection, with the phase) and token sums, and q AND kv."""
    x = call.args[0]
    t, b, n, d = x.shape
    key = call.output_of(module.salience_key_lif)
    task = call.output_of(module.task_lif) if module.task_proj is not None else None
    q, k, v = (call.output_of(p) for p in (module.ws_q_lif, module.ws_k_lif, module.ws_v_lif))
    masks = mask_events(k, v) + mask_events(q, call.output_of(module.ws_kv_lif))
    adds = t * b * n + b * n * module.phases
    if task is not None:
        masks += mask_events(task.unsqueeze(-2), key)
        adds += nnz(task.unsqueeze(-2) * key)
    kv = k * v
    adds += 2 * nnz(kv) + q.numel()
    call.add(masks=masks, adds=adds, macs=t * b * n * module.heads)


@count_rule(DenseSyntheticThalamus)
def _count_dense(module: DenseSyntheticThalamus, call) -> None:
    """Task times key per channel and the head weights; the top-K (a comparison per token); the phase
    softmax and angle, the cosine per pair; softmax attention with its bias, and the selection."""
    x = call.args[0]
    b, n, d = x.shape
    scores = b * module.heads * n * n
    macs = b * n * d + b * n * module.heads + 3 * b * n * module.phases + b * n * n + 2 * scores * (d // module.heads) \
        + 3 * scores + b * n * d
    call.add(macs=macs, adds=b * n + scores)


# --- what the converter and the exporter cannot take yet ----------------------------------------------

refuse(SpikingSyntheticThalamus, "the top-K selection and the phase slots are sorts and argmaxes, which have no "
                                 "rate-coded form; convert with --method td, which runs the dense twin exactly")


@export_rule(SpikingSyntheticThalamus)
def _export(module: SpikingSyntheticThalamus, graph, x, context=None, *, cue=None):
    raise ExportError(f"{graph.name_of(module)} (synthetic thalamus): the k-winner-take-all (exactly K of N per "
                      f"step) and the phase slots need a sorting network of lateral inhibition that is not mapped "
                      f"to Lava populations yet")
