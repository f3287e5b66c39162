"""Token classifiers: embedding -> L blocks -> head, as a spiking model or its dense twin.

Both read one frozen ``ModelConfig``; the blocks come from the mechanism the config names
(``mechanisms/``, the plain transformer being ``none``). Parameter names match between the two
(``embed``, ``pos``, ``blocks.i...``, ``head``), so weights copy across by name.

Inputs are cast to the model's dtype (a float64 tensor into a float32 model is computed in float32).

Top-down context: ``model(x, cue=None)``. ``cue`` is an index ``[B]`` (integers in
``[0, num_cues)``) or a vector ``[B, num_cues]``. The spiking model encodes it like any input (an index
becomes a one-hot spike train), so the cue reaches the blocks as spikes ``[T, B, C]``; the dense twin
passes ``[B, C]``. Every block receives it; mechanisms that do not read it themselves get it as an
extra token (``MechanismSpec.cue_token``).

The spiking head is applied to every token's spikes at every step and then averaged over tokens and
steps (the same as averaging first, because the head is linear), so the head's input stays binary.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F

from .attention import ACTIVATIONS, DENSE_KINDS, SPIKING_KINDS
from .converters.qcfs import QCFS
from .encoders import ENCODERS, make_encoder
from .errors import (DTypeError, NonFiniteError, ShapeError, SpikingAttnError, all_finite, check_bool, check_choice,
                     check_fraction, check_int, check_positive_int, check_tensor)
from .graph import Readout, export_rule
from .layers import LinearBN
from .neuron import ENGINES, RESETS, check_v_init, population
from .opcount import count_rule
from .converters.rules import conversion_rule
from .converters.td import td_rule
from .surrogate import SURROGATES

MODEL_KINDS = ("spiking", "dense")
MAX_DEPTH = 1000  # blocks; deeper stacks are beyond anything this library is for


class FrozenOptions(dict):
    """A mechanism's options inside a frozen ``ModelConfig``: a dict that refuses to be changed."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("the mechanism_options of a ModelConfig cannot be changed; build a new config "
                        "(dataclasses.replace(config, mechanism_options={...}))")

    __setitem__ = __delitem__ = __ior__ = clear = pop = popitem = setdefault = update = _refuse

    def __reduce__(self):  # copy, deepcopy and pickle rebuild it whole instead of item by item
        return (FrozenOptions, (dict(self),))


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a classifier; stored by value in every checkpoint.

    ``attention`` is 'ssa' or 'sdsa' for the spiking model; the dense twin uses ``dense_attention``
    ('softmax', 'ssa' or 'sdsa'). ``mechanism`` names a registered mechanism ('none' is the plain
    transformer) and ``mechanism_options`` its own options (stored complete, with defaults filled in).
    ``num_cues`` is the width of the top-down cue (0: the model takes no cue).
    ``reset`` ('zero' or 'subtract') and ``v_init`` (the starting membrane as a fraction of the threshold)
    are the populations' reset; converted models (``spiking_attn.converters``) use reset by subtraction
    from half the threshold. ``qcfs_levels`` is the number of levels of the dense twin's QCFS activation
    (``dense_act='qcfs'``, the conversion-friendly activation).
    """

    in_features: int
    num_tokens: int
    num_classes: int
    model: str = "spiking"
    dim: int = 64
    depth: int = 2
    heads: int = 4
    mlp_ratio: float = 4.0
    attention: str = "sdsa"
    dense_attention: str = "softmax"
    dense_act: str = "relu"
    causal: bool = False
    timesteps: int = 4
    encoder: str = "direct"
    surrogate: str = "atan"
    dv: float = 0.5
    vth: float = 1.0
    learn_threshold: bool = False
    learn_bias: bool = False
    learn_decay: bool = False
    per_channel: bool = False
    engine: str = "native"
    reset: str = "zero"
    v_init: float = 0.0
    qcfs_levels: int = 8
    mechanism: str = "none"
    mechanism_options: dict = field(default_factory=dict, hash=False)
    num_cues: int = 0

    def __post_init__(self) -> None:
        for name in ("in_features", "num_tokens", "num_classes", "dim", "heads", "timesteps"):
            check_positive_int(getattr(self, name), name)
        check_int(self.depth, "depth", low=1, high=MAX_DEPTH)
        if isinstance(self.num_cues, bool) or not isinstance(self.num_cues, int) or self.num_cues < 0:
            raise SpikingAttnError(f"num_cues must be a non-negative integer, got {self.num_cues!r}")
        if self.dim % self.heads:
            raise SpikingAttnError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) \
                or not math.isfinite(self.mlp_ratio) or not self.mlp_ratio > 0 or int(self.dim * self.mlp_ratio) < 1:
            raise SpikingAttnError(f"mlp_ratio must be a positive number giving a hidden width of at least 1, "
                                   f"got {self.mlp_ratio!r}")
        for name in ("causal", "learn_threshold", "learn_bias", "learn_decay", "per_channel"):
            check_bool(getattr(self, name), name)
        check_choice(self.model, "model", MODEL_KINDS)
        check_choice(self.attention, "attention", SPIKING_KINDS)
        check_choice(self.dense_attention, "dense_attention", DENSE_KINDS)
        check_choice(self.dense_act, "dense_act", tuple(ACTIVATIONS))
        check_choice(self.encoder, "encoder", ENCODERS)
        check_choice(self.surrogate, "surrogate", tuple(SURROGATES))
        check_choice(self.engine, "engine", ENGINES)
        check_choice(self.reset, "reset", RESETS)
        check_v_init(self.v_init)
        check_int(self.qcfs_levels, "qcfs_levels", low=1, high=4096)
        for name in ("dv", "vth"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise DTypeError(f"{name} must be a number, got {value!r}")
        check_fraction(self.dv, "dv")
        if not (math.isfinite(self.vth) and self.vth > 0):
            raise SpikingAttnError(f"vth must be a positive finite number, got {self.vth}")
        from .mechanisms import get_mechanism

        spec = get_mechanism(self.mechanism)
        object.__setattr__(self, "mechanism_options", FrozenOptions(spec.options_dict(self.mechanism_options)))

    def to_dict(self) -> dict:
        """The config as plain data (what a checkpoint stores)."""
        data = asdict(self)
        data["mechanism_options"] = dict(data["mechanism_options"])
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise DTypeError(f"a model config must be a dict, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpikingAttnError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def lif_kwargs(self) -> dict:
        """Keyword arguments for every population of the model (``neuron.population``)."""
        return {"dv": self.dv, "vth": self.vth, "surrogate": self.surrogate, "engine": self.engine,
                "learn_threshold": self.learn_threshold, "learn_bias": self.learn_bias,
                "learn_decay": self.learn_decay, "per_channel": self.per_channel,
                "reset": self.reset, "v_init": self.v_init}


def cue_vector(cue, batch: int, num_cues: int, dtype: torch.dtype) -> Optional[torch.Tensor]:
    """Check a cue and return it as ``[B, C]`` floats (an index becomes one-hot), or None."""
    if cue is None:
        return None
    if num_cues == 0:
        raise SpikingAttnError("cue was given, but the model was built with num_cues=0 and takes no cue")
    if not isinstance(cue, torch.Tensor):
        raise DTypeError(f"cue must be a torch.Tensor (an index [B] or a vector [B, {num_cues}]), "
                         f"got {type(cue).__name__}")
    if cue.dtype == torch.bool or cue.is_complex():
        raise DTypeError(f"cue must hold integer indices or real numbers, got dtype {cue.dtype}")
    if not cue.is_floating_point():
        if cue.dim() != 1 or cue.shape[0] != batch:
            raise ShapeError(f"an index cue must have shape [B] = [{batch}], got {tuple(cue.shape)}")
        if bool((cue < 0).any()) or bool((cue >= num_cues).any()):
            raise SpikingAttnError(f"cue indices must lie in [0, {num_cues}), got range "
                                   f"[{int(cue.min())}, {int(cue.max())}]")
        return F.one_hot(cue.long(), num_cues).to(dtype)
    if cue.dim() != 2 or tuple(cue.shape) != (batch, num_cues):
        raise ShapeError(f"a vector cue must have shape [B, C] = [{batch}, {num_cues}], got {tuple(cue.shape)}")
    if not all_finite(cue):
        raise NonFiniteError("cue contains NaN or Inf")
    return cue.to(dtype)


def _check_tokens(x: torch.Tensor, config: ModelConfig, ndim) -> None:
    check_tensor(x, "x", ndim=ndim, last_dim=config.in_features, finite=False)
    if x.shape[-2] != config.num_tokens:
        raise ShapeError(f"x has {x.shape[-2]} tokens but the model expects {config.num_tokens}")


class SpikingClassifier(nn.Module):
    """Spiking classifier: encoder -> embedding -> the mechanism's blocks -> head.

    Input: analog tokens ``[B, N, F]`` (encoded to ``[T, B, N, F]`` by ``config.encoder``) or an
    already encoded ``[T, B, N, F]`` sequence; optional ``cue`` (see the module docstring).
    Output: logits ``[B, C]`` (mean over steps and tokens).
    """

    def __init__(self, config: ModelConfig, spec=None) -> None:
        super().__init__()
        from .mechanisms import get_mechanism

        spec = spec or get_mechanism(config.mechanism)
        self.config = c = config
        options = spec.parse_options(c.mechanism_options)
        self.encoder = make_encoder(c.encoder, c.timesteps)
        self.embed = LinearBN(c.in_features, c.dim)  # the encoding layer: analog input (with direct encoding)
        self.pos = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.cue_embed = LinearBN(c.num_cues, c.dim) if c.num_cues and spec.cue_token else None
        self.blocks = nn.ModuleList(spec.spiking_block(c, options) for _ in range(c.depth))
        self.head_lif = population(c.dim, c.lif_kwargs())
        self.head = nn.Linear(c.dim, c.num_classes)

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Check ``x`` and return the ``[T, B, N, F]`` input sequence."""
        c = self.config
        _check_tokens(x, c, (3, 4))
        x = x.to(self.embed.linear.weight.dtype)  # inputs follow the model's dtype (float64 in, float32 model)
        if x.dim() == 4:
            check_tensor(x, "x", timesteps=c.timesteps, finite=False)
            return x
        return self.encoder(x, generator=generator)

    def encode_cue(self, cue, batch: int, dtype: torch.dtype,
                   generator: Optional[torch.Generator] = None) -> Optional[torch.Tensor]:
        """Check ``cue`` and return it as a spike sequence ``[T, B, C]``, or None."""
        values = cue_vector(cue, batch, self.config.num_cues, dtype)
        return None if values is None else self.encoder(values, generator=generator, name="cue")

    def forward(self, x: torch.Tensor, cue: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        seq = self.encode(x, generator)  # [T, B, N, F]
        cue_seq = self.encode_cue(cue, seq.shape[1], seq.dtype, generator)  # [T, B, C] or None
        h = self.embed(seq) + self.pos  # [T, B, N, D] membrane currents
        if self.cue_embed is not None:
            source = cue_seq if cue_seq is not None else seq.new_zeros(*seq.shape[:2], self.config.num_cues)
            h = torch.cat([h, self.cue_embed(source).unsqueeze(2)], dim=2)  # [T, B, N+1, D]
        for block in self.blocks:
            h = block(h, cue=cue_seq)
        per_token = self.head(self.head_lif(h))  # [T, B, N(+1), C]
        return per_token.mean(dim=(0, 2))  # [B, C]


@export_rule(SpikingClassifier)
def _export_classifier(model: SpikingClassifier, graph, x, cue=None):
    """The encoding layer runs on the host (its input is analog): its currents, the positions and the
    cue token enter the network as host currents; an encoded cue enters as input spikes. The head's
    population is the last one on the network; the host reads its spikes out through the head."""
    seq = model.encode(x)  # [T, B, N, F]
    cue_seq = model.encode_cue(cue, seq.shape[1], seq.dtype)  # [T, B, C] or None
    inputs = {"input": seq}
    if model.cue_embed is not None and cue_seq is not None:
        inputs["cue"] = cue_seq

    def encode_step(given: dict) -> torch.Tensor:  # {"input": [K, N, F], "cue": [K, C]} -> [K, N(+1), D]
        x_t = given["input"]
        h = model.embed(x_t) + model.pos
        if model.cue_embed is not None:
            source = given["cue"] if "cue" in given else x_t.new_zeros(x_t.shape[0], model.config.num_cues)
            h = torch.cat([h, model.cue_embed(source).unsqueeze(1)], dim=1)
        return h

    k = seq.shape[0] * seq.shape[1]
    h = encode_step({name: v.reshape(k, *v.shape[2:]) for name, v in inputs.items()})
    stream = graph.host_current(h.reshape(*seq.shape[:2], *h.shape[1:]), encoding=(encode_step, inputs))
    cue_spikes = None if cue_seq is None or model.cue_embed is not None else graph.input_spikes("cue", cue_seq)
    for block in model.blocks:
        stream = graph.call(block, stream, cue=cue_spikes)
    head = graph.population(model.head_lif, stream)
    graph.readout = Readout(head.name, model.head.weight.detach().double().numpy(),
                            model.head.bias.detach().double().numpy())
    return head


class DenseClassifier(nn.Module):
    """Dense twin of ``SpikingClassifier``. Input ``[B, N, F]`` and optional ``cue``; output logits ``[B, C]``."""

    def __init__(self, config: ModelConfig, spec=None) -> None:
        super().__init__()
        from .mechanisms import get_mechanism

        spec = spec or get_mechanism(config.mechanism)
        self.config = c = config
        options = spec.parse_options(c.mechanism_options)
        self.embed = LinearBN(c.in_features, c.dim)
        self.pos = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.cue_embed = LinearBN(c.num_cues, c.dim) if c.num_cues and spec.cue_token else None
        self.blocks = nn.ModuleList(spec.dense_block(c, options) for _ in range(c.depth))
        self.head_act = ACTIVATIONS[c.dense_act]()
        self.head = nn.Linear(c.dim, c.num_classes)
        for module in self.modules():
            if isinstance(module, QCFS):
                module.levels = c.qcfs_levels

    def forward(self, x: torch.Tensor, cue: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        c = self.config
        _check_tokens(x, c, 3)
        check_tensor(x, "x")
        x = x.to(self.embed.linear.weight.dtype)  # inputs follow the model's dtype
        cue_vec = cue_vector(cue, x.shape[0], c.num_cues, x.dtype)  # [B, C] or None
        h = self.embed(x) + self.pos  # [B, N, D]
        if self.cue_embed is not None:
            source = cue_vec if cue_vec is not None else x.new_zeros(x.shape[0], c.num_cues)
            h = torch.cat([h, self.cue_embed(source).unsqueeze(1)], dim=1)  # [B, N+1, D]
        for block in self.blocks:
            h = block(h, cue=cue_vec)
        return self.head(self.head_act(h)).mean(dim=1)  # [B, C]


MODEL_CLASSES = {"spiking": SpikingClassifier, "dense": DenseClassifier}


def build_model(config: ModelConfig) -> nn.Module:
    """Build the model ``config`` describes: the registered mechanism ``config.mechanism``, as the
    spiking model or the dense twin (``config.model``)."""
    if not isinstance(config, ModelConfig):
        raise DTypeError(f"build_model takes a ModelConfig (ModelConfig.from_dict turns a dict into one), "
                         f"got {type(config).__name__}")
    from .mechanisms import get_mechanism

    return get_mechanism(config.mechanism).build(config)


@count_rule(SpikingClassifier, DenseClassifier)
def _count_classifier(model: nn.Module, call) -> None:
    """The head's mean over tokens (and steps). The learned positions are a fixed offset of the embedding
    (its bias, per token), so they fold."""
    call.add(adds=call.output_of(model.head).numel())


@conversion_rule(SpikingClassifier)
def _convert_classifier(model: SpikingClassifier, dense: DenseClassifier, ctx, unit) -> None:
    """The embedding, positions and cue token read analog input (direct encoding repeats it every step),
    so they keep the dense weights; the head reads the head population's spikes."""
    for block, dense_block in zip(model.blocks, dense.blocks):
        ctx.convert(block, dense_block)
    ctx.scale_input(model.head, ctx.threshold(model.head_lif, dense.head_act))


@td_rule(DenseClassifier)
def _td_classifier(model: DenseClassifier, run, x, *, cue=None):
    """The embedding and the head are units; the positions enter once; the mean over tokens passes changes.
    ``cue`` is the change of the cue vector ``[B, C]`` (``TimeDifferenceModel`` makes an index one-hot)."""
    c = model.config
    _check_tokens(x, c, 3)
    check_tensor(x, "x")
    x = x.to(model.embed.linear.weight.dtype)
    h = run.unit(model.embed, x) + run.once(model.pos)
    if model.cue_embed is not None:
        source = cue if cue is not None else x.new_zeros(x.shape[0], c.num_cues)
        h = torch.cat([h, run.unit(model.cue_embed, source).unsqueeze(1)], dim=1)
    for block in model.blocks:
        h = run.call(block, h, cue=cue)
    return run.unit(model.head, run.unit(model.head_act, h)).mean(dim=1)
