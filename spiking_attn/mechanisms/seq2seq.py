"""A spiking encoder-decoder with cross-attention: the Transformer of the original paper, spike-driven.

The encoder reads the source string with self-attention; the decoder writes the output one symbol at a
time with **causal** self-attention (a position never sees a later one) and cross-attention from its
positions to the encoder's. Registry entry ``seq2seq``; its task is ``translate``.

It is a scaffold of its own (``MechanismSpec.scaffold = 'sequence'``), not a block inside the token
classifier. With ``V`` source symbols (``config.in_features``), ``L`` positions (``config.num_tokens``)
and ``V'`` output symbols (``config.num_classes``):

* input ``x`` ``[B, L, V]`` one-hot source symbols (or any values in [0, 1]; the spiking model encodes
  them like any input, so one-hot symbols are spikes already);
* ``target`` ``[B, L]`` output symbols (teacher forcing: the decoder reads ``BOS, target[:-1]``), or
  None: greedy decoding, one position at a time, each chosen symbol fed back;
* output: logits ``[B, L, V']``.

Both twins::

    h_enc  = src_embed(x) + pos                                    token ids: one-hot times a weight matrix
    h_enc  = encoder blocks (self-attention + MLP)  x depth
    ctx    = enc_out(h_enc)                                        LIF population (dense: activation)
    h_dec  = tgt_embed(one_hot(BOS, y_0 .. y_{L-2})) + pos
    h_dec  = decoder blocks (causal self-attention, cross-attention to ctx, MLP)  x depth
    logits = head(head_act(h_dec))                                 spiking: mean over steps

``pos`` is sinusoidal (fixed) or learned (option ``positions``). The attention inside is the config's
(SSA or SDSA spiking, softmax or the ANN forms dense): every weight layer of the spiking model reads
spikes, and the decoder's self-attention is causal in both (tested by perturbing the future).

Greedy decoding runs the decoder once per position over the whole sequence; causality makes the
positions after the one being decided irrelevant, and ``decode`` checks nothing else leaks.
Cross-attention maps (``attention_maps``) show which source positions each output position read.

The converter and the Lava exporter do not take it yet: the greedy loop feeds the model's own output
back into it, which is the host's job; both say so.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from ..attention import ACTIVATIONS, DenseSelfAttention, SpikingSelfAttention, attention_map
from ..block import DenseMLP, DenseTransformerBlock, SpikingMLP, SpikingTransformerBlock
from ..converters.rules import refuse
from ..encoders import make_encoder
from ..errors import DTypeError, ShapeError, SpikingAttnError, check_choice, check_tensor
from ..graph import ExportError, export_rule
from ..layers import LinearBN
from ..neuron import population
from ..opcount import count_rule, no_own_ops
from . import MechanismSpec, register_mechanism

POSITIONS = ("sinusoidal", "learned")


@dataclass(frozen=True)
class Seq2SeqOptions:
    """``positions``: 'sinusoidal' (fixed, the original paper's) or 'learned'."""

    positions: str = "sinusoidal"

    def __post_init__(self) -> None:
        check_choice(self.positions, "positions", POSITIONS)


def sinusoidal_positions(length: int, dim: int) -> torch.Tensor:
    """``[L, D]``: ``sin(p / 10000^(2i/D))`` on even channels, ``cos`` on odd ones."""
    position = torch.arange(length, dtype=torch.float64)[:, None]
    rate = torch.exp(-math.log(10000.0) * torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    table = torch.zeros(length, dim, dtype=torch.float64)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate)[:, :dim // 2]
    return table.to(torch.get_default_dtype())


class _Positions(nn.Module):
    """The positions added to an embedding: a fixed sinusoidal table (a buffer) or a learned one."""

    def __init__(self, length: int, dim: int, kind: str) -> None:
        super().__init__()
        if kind == "learned":
            self.table = nn.Parameter(torch.zeros(length, dim))
            nn.init.trunc_normal_(self.table, std=0.02)
        else:
            self.register_buffer("table", sinusoidal_positions(length, dim), persistent=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.table


class SpikingDecoderBlock(nn.Module):
    """Causal self-attention, cross-attention to the encoder's spikes, MLP, each on the membrane stream
    behind its own population. ``x`` currents ``[T, B, L, D]``, ``context`` spikes ``[T, B, M, D]``."""

    def __init__(self, dim: int, heads: int, kind: str, mlp_ratio: float, lif: dict) -> None:
        super().__init__()
        self.pre_self_lif = population(dim, lif)
        self.self_attn = SpikingSelfAttention(dim, heads, kind, causal=True, lif=lif)
        self.pre_cross_lif = population(dim, lif)
        self.cross_attn = SpikingSelfAttention(dim, heads, kind, causal=False, lif=lif)
        self.pre_mlp_lif = population(dim, lif)
        self.mlp = SpikingMLP(dim, int(dim * mlp_ratio), lif)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.pre_self_lif(x))
        x = x + self.cross_attn(self.pre_cross_lif(x), context)
        return x + self.mlp(self.pre_mlp_lif(x))


class DenseDecoderBlock(nn.Module):
    """Dense twin of ``SpikingDecoderBlock``: activations where it has populations. Shapes ``[B, L, D]``."""

    def __init__(self, dim: int, heads: int, kind: str, mlp_ratio: float, act: str) -> None:
        super().__init__()
        act_cls = ACTIVATIONS[act]
        self.pre_self_act = act_cls()
        self.self_attn = DenseSelfAttention(dim, heads, kind, causal=True, act=act)
        self.pre_cross_act = act_cls()
        self.cross_attn = DenseSelfAttention(dim, heads, kind, causal=False, act=act)
        self.pre_mlp_act = act_cls()
        self.mlp = DenseMLP(dim, int(dim * mlp_ratio), act)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.pre_self_act(x))
        x = x + self.cross_attn(self.pre_cross_act(x), context)
        return x + self.mlp(self.pre_mlp_act(x))


class _Seq2Seq(nn.Module):
    """What both twins share: the checks, the decoder's input, teacher forcing and greedy decoding."""

    def _check(self, x: torch.Tensor, target, cue) -> None:
        c = self.config
        if cue is not None:
            raise SpikingAttnError("the seq2seq model takes no cue (its task is the source string itself)")
        check_tensor(x, "x", ndim=(3, 4) if c.model == "spiking" else 3, last_dim=c.in_features)
        if x.shape[-2] != c.num_tokens:
            raise ShapeError(f"x has {x.shape[-2]} positions but the model has {c.num_tokens} (pad shorter strings)")
        if target is not None:
            if not isinstance(target, torch.Tensor) or target.is_floating_point() or target.dtype == torch.bool:
                raise DTypeError(f"target must be an integer tensor of output symbols [B, {c.num_tokens}], got "
                                 f"{getattr(target, 'dtype', type(target).__name__)}")
            batch = x.shape[-3]
            if tuple(target.shape) != (batch, c.num_tokens):
                raise ShapeError(f"target must have shape [B, L] = [{batch}, {c.num_tokens}], got {tuple(target.shape)}")
            if bool((target < 0).any()) or bool((target >= c.num_classes).any()):
                raise SpikingAttnError(f"target symbols must lie in [0, {c.num_classes}), got range "
                                       f"[{int(target.min())}, {int(target.max())}]")

    def decoder_input(self, previous: torch.Tensor) -> torch.Tensor:
        """One-hot decoder input ``[B, L, V' + 1]``: BOS (the last symbol), then ``previous[:, :-1]``."""
        c = self.config
        bos = torch.full_like(previous[:, :1], c.num_classes)
        return F.one_hot(torch.cat([bos, previous[:, :-1]], dim=1), c.num_classes + 1).to(self.tgt_embed.linear.weight.dtype)

    def forward(self, x: torch.Tensor, target: Optional[torch.Tensor] = None, cue=None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Logits ``[B, L, V']``: teacher-forced on ``target``, or greedily decoded without it."""
        self._check(x, target, cue)
        memory = self.encode(x, generator)
        if target is not None:
            return self.decode(memory, target)
        batch, length = x.shape[-3], self.config.num_tokens
        chosen = torch.zeros(batch, length, dtype=torch.long, device=x.device)
        logits = []
        for i in range(length):  # position i depends on positions < i only (causal), so the rest may be anything
            step = self.decode(memory, chosen)[:, i]  # [B, V']
            chosen[:, i] = step.argmax(-1)
            logits.append(step)
        return torch.stack(logits, dim=1)

    @torch.no_grad()
    def generate(self, x: torch.Tensor) -> torch.Tensor:
        """The greedily decoded output symbols ``[B, L]``."""
        return self(x).argmax(-1)


class SpikingSeq2Seq(_Seq2Seq):
    """The spiking encoder-decoder (module docstring)."""

    def __init__(self, config, spec=None) -> None:
        super().__init__()
        from . import get_mechanism

        spec = spec or get_mechanism(config.mechanism)
        options = spec.parse_options(config.mechanism_options)
        self.config = c = config
        lif = c.lif_kwargs()
        self.encoder = make_encoder(c.encoder, c.timesteps)
        self.src_embed = LinearBN(c.in_features, c.dim)
        self.tgt_embed = LinearBN(c.num_classes + 1, c.dim)
        self.pos = _Positions(c.num_tokens, c.dim, options.positions)
        self.encoder_blocks = nn.ModuleList(SpikingTransformerBlock(c.dim, c.heads, c.attention, False, c.mlp_ratio, lif)
                                            for _ in range(c.depth))
        self.enc_out_lif = population(c.dim, lif)
        self.decoder_blocks = nn.ModuleList(SpikingDecoderBlock(c.dim, c.heads, c.attention, c.mlp_ratio, lif)
                                            for _ in range(c.depth))
        self.head_lif = population(c.dim, lif)
        self.head = nn.Linear(c.dim, c.num_classes)

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """The encoder's output spikes ``[T, B, L, D]``."""
        x = x.to(self.src_embed.linear.weight.dtype)
        seq = x if x.dim() == 4 else self.encoder(x, generator=generator)
        check_tensor(seq, "x", timesteps=self.config.timesteps, finite=False)
        h = self.pos(self.src_embed(seq))
        for block in self.encoder_blocks:
            h = block(h)
        return self.enc_out_lif(h)

    def decode(self, memory: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, L, V']`` for the decoder input made of ``previous`` ``[B, L]``."""
        tokens = self.decoder_input(previous)  # [B, L, V'+1], binary: the same spikes at every step
        h = self.pos(self.tgt_embed(tokens.expand(memory.shape[0], *tokens.shape)))  # [T, B, L, D]
        for block in self.decoder_blocks:
            h = block(h, memory)
        return self.head(self.head_lif(h)).mean(0)


class DenseSeq2Seq(_Seq2Seq):
    """The dense twin (module docstring): same layers and names."""

    def __init__(self, config, spec=None) -> None:
        super().__init__()
        from . import get_mechanism

        spec = spec or get_mechanism(config.mechanism)
        options = spec.parse_options(config.mechanism_options)
        self.config = c = config
        act_cls = ACTIVATIONS[c.dense_act]
        self.src_embed = LinearBN(c.in_features, c.dim)
        self.tgt_embed = LinearBN(c.num_classes + 1, c.dim)
        self.pos = _Positions(c.num_tokens, c.dim, options.positions)
        self.encoder_blocks = nn.ModuleList(DenseTransformerBlock(c.dim, c.heads, c.dense_attention, False, c.mlp_ratio,
                                                                  c.dense_act) for _ in range(c.depth))
        self.enc_out_act = act_cls()
        self.decoder_blocks = nn.ModuleList(DenseDecoderBlock(c.dim, c.heads, c.dense_attention, c.mlp_ratio,
                                                              c.dense_act) for _ in range(c.depth))
        self.head_act = act_cls()
        self.head = nn.Linear(c.dim, c.num_classes)

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        check_tensor(x, "x")
        h = self.pos(self.src_embed(x.to(self.src_embed.linear.weight.dtype)))
        for block in self.encoder_blocks:
            h = block(h)
        return self.enc_out_act(h)

    def decode(self, memory: torch.Tensor, previous: torch.Tensor) -> torch.Tensor:
        h = self.pos(self.tgt_embed(self.decoder_input(previous)))
        for block in self.decoder_blocks:
            h = block(h, memory)
        return self.head(self.head_act(h))


@dataclass(frozen=True)
class Seq2SeqSpec(MechanismSpec):
    """The registry entry of the encoder-decoder: it builds its own scaffold."""

    def model_type(self, kind: str) -> type:
        return SpikingSeq2Seq if kind == "spiking" else DenseSeq2Seq


def _no_block(config, options):
    raise SpikingAttnError("seq2seq is a whole encoder-decoder, not a block of the token classifier")


register_mechanism(Seq2SeqSpec(
    name="seq2seq",
    summary="spiking encoder-decoder: encoder self-attention, causal decoder self-attention, cross-attention, "
            "greedy decoding (task translate)",
    spiking_block=_no_block,
    dense_block=_no_block,
    options=Seq2SeqOptions,
    scaffold="sequence",
))


def generate_text(checkpoint, text: str) -> str:
    """Decode ``text`` (source symbols separated by spaces) with the seq2seq model in ``checkpoint``; returns
    the output symbols up to the first PAD. The last input symbol of the model is PAD (the translate task's
    convention): shorter strings are padded with it, and it may not be typed."""
    from ..checkpoint import load_model

    model = load_model(checkpoint)
    if not isinstance(model, _Seq2Seq):
        raise SpikingAttnError(f"checkpoint {str(checkpoint)!r} holds a {model.config.mechanism!r} model; generate "
                               f"needs an encoder-decoder (--mechanism seq2seq, --task translate)")
    c = model.config
    pad = c.in_features - 1
    parts = text.split()
    if not parts:
        raise SpikingAttnError("--input is empty; give source symbols separated by spaces, e.g. \"3 1 4 1 5\"")
    try:
        symbols = [int(part) for part in parts]
    except ValueError:
        raise SpikingAttnError(f"--input must hold integers separated by spaces, got {text!r}") from None
    if any(not 0 <= v < pad for v in symbols):
        raise SpikingAttnError(f"--input symbols must lie in [0, {pad - 1}], got {text!r}")
    if len(symbols) > c.num_tokens:
        raise SpikingAttnError(f"--input has {len(symbols)} symbols; the model reads at most {c.num_tokens}")
    source = torch.tensor(symbols + [pad] * (c.num_tokens - len(symbols)))
    decoded = model.generate(F.one_hot(source, c.in_features).float()[None])[0].tolist()
    out_pad = c.num_classes - 1
    if out_pad in decoded:
        decoded = decoded[:decoded.index(out_pad)]
    return " ".join(str(v) for v in decoded)


def cross_attention_map(model: nn.Module, x: torch.Tensor, layer: int = -1) -> torch.Tensor:
    """Which source positions each output position read, ``[B, L, M]``, in the greedy decoding's last pass:
    SSA's ``Q K^T`` counts averaged over steps and heads (spiking), or softmax weights (dense)."""
    block = model.decoder_blocks[layer]
    attn = block.cross_attn
    seen = {}
    hooks = [attn.q.register_forward_hook(lambda m, a, out: seen.__setitem__("q", out)),
             attn.k.register_forward_hook(lambda m, a, out: seen.__setitem__("k", out))]
    if isinstance(attn, SpikingSelfAttention):
        hooks += [attn.q_lif.register_forward_hook(lambda m, a, out: seen.__setitem__("q_s", out)),
                  attn.k_lif.register_forward_hook(lambda m, a, out: seen.__setitem__("k_s", out))]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    if isinstance(attn, SpikingSelfAttention):
        return attention_map(seen["q_s"], seen["k_s"], attn.heads)
    if attn.kind != "softmax":
        return attention_map(attn.q_act(seen["q"]), attn.k_act(seen["k"]), attn.heads)
    return attention_map(seen["q"], seen["k"], attn.heads, softmax_scale=attn.scale)


# --- operation counts (``opcount``) ------------------------------------------------------------------


@count_rule(SpikingSeq2Seq, DenseSeq2Seq)
def _count_model(model: nn.Module, call) -> None:
    """The spiking head's mean over steps (an add per logit and step); the dense twin has none of its own."""
    if isinstance(model, SpikingSeq2Seq):
        call.add(adds=call.output.numel() * model.config.timesteps)


@count_rule(SpikingDecoderBlock, DenseDecoderBlock)
def _count_decoder_block(block: nn.Module, call) -> None:
    call.add(adds=3 * call.output.numel())  # the three residual adds


count_rule(_Positions)(no_own_ops)  # a fixed offset of the embedding (its bias per position): folded

# --- what the converter and the exporter cannot take yet ----------------------------------------------

refuse(SpikingSeq2Seq, "the encoder-decoder has no binary conversion rule yet (its greedy decoding loop feeds the "
                       "model's own output back); train it as a spiking model")


@export_rule(SpikingSeq2Seq)
def _export(model: SpikingSeq2Seq, graph, x, cue=None):
    raise ExportError("seq2seq: greedy decoding feeds each chosen symbol back into the decoder, a loop through the "
                      "host that the exported graph (one pass of populations) does not have yet")
