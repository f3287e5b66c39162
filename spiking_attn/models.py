"""Token classifiers: embedding -> L transformer blocks -> head, as a spiking model or its dense twin.

Both read one frozen ``ModelConfig``. Parameter names match between the two (``embed``, ``pos``,
``blocks.i.attn.q.linear.weight``, ..., ``head``), so weights copy across by name.

The spiking head is applied to every token's spikes at every step and then averaged over tokens and
steps (the same as averaging first, because the head is linear), so the head's input stays binary.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Optional

import torch
from torch import nn

from .attention import ACTIVATIONS, DENSE_KINDS, SPIKING_KINDS
from .block import DenseTransformerBlock, SpikingTransformerBlock
from .encoders import ENCODERS, make_encoder
from .errors import ShapeError, SpikingAttnError, check_choice, check_fraction, check_positive_int, check_tensor
from .layers import LinearBN
from .neuron import ENGINES, LIFPopulation
from .surrogate import SURROGATES

MODEL_KINDS = ("spiking", "dense")


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a classifier; stored by value in every checkpoint.

    ``attention`` is 'ssa' or 'sdsa' for the spiking model; the dense twin uses
    ``dense_attention`` ('softmax', 'ssa' or 'sdsa').
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
    learn_decay: bool = False
    engine: str = "native"

    def __post_init__(self) -> None:
        for name in ("in_features", "num_tokens", "num_classes", "dim", "depth", "heads", "timesteps"):
            check_positive_int(getattr(self, name), name)
        if self.dim % self.heads:
            raise SpikingAttnError(f"dim ({self.dim}) must be divisible by heads ({self.heads})")
        if not self.mlp_ratio > 0:
            raise SpikingAttnError(f"mlp_ratio must be positive, got {self.mlp_ratio}")
        check_choice(self.model, "model", MODEL_KINDS)
        check_choice(self.attention, "attention", SPIKING_KINDS)
        check_choice(self.dense_attention, "dense_attention", DENSE_KINDS)
        check_choice(self.dense_act, "dense_act", tuple(ACTIVATIONS))
        check_choice(self.encoder, "encoder", ENCODERS)
        check_choice(self.surrogate, "surrogate", tuple(SURROGATES))
        check_choice(self.engine, "engine", ENGINES)
        if self.engine == "spikingjelly" and (self.learn_threshold or self.learn_decay):
            raise SpikingAttnError("engine 'spikingjelly' does not support learn_threshold or learn_decay")
        check_fraction(self.dv, "dv")
        if not self.vth > 0:
            raise SpikingAttnError(f"vth must be positive, got {self.vth}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpikingAttnError(f"unknown config field(s): {', '.join(unknown)}")
        return cls(**data)

    def lif_kwargs(self) -> dict:
        return {"dv": self.dv, "vth": self.vth, "surrogate": self.surrogate, "engine": self.engine,
                "learn_threshold": self.learn_threshold, "learn_decay": self.learn_decay}


class SpikingClassifier(nn.Module):
    """Spiking transformer classifier.

    Input: analog tokens ``[B, N, F]`` (encoded to ``[T, B, N, F]`` by ``config.encoder``) or an
    already encoded ``[T, B, N, F]`` sequence. Output: logits ``[B, C]`` (mean over steps and tokens).
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        lif = c.lif_kwargs()
        self.encoder = make_encoder(c.encoder, c.timesteps)
        self.embed = LinearBN(c.in_features, c.dim)  # the encoding layer: the only analog input
        self.pos = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            SpikingTransformerBlock(c.dim, c.heads, c.attention, c.causal, c.mlp_ratio, lif)
            for _ in range(c.depth)
        )
        self.head_lif = LIFPopulation(**lif)
        self.head = nn.Linear(c.dim, c.num_classes)

    def encode(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Check ``x`` and return the ``[T, B, N, F]`` input sequence."""
        c = self.config
        check_tensor(x, "x", ndim=(3, 4), last_dim=c.in_features)
        if x.shape[-2] != c.num_tokens:
            raise ShapeError(f"x has {x.shape[-2]} tokens but the model expects {c.num_tokens}")
        if x.dim() == 4:
            check_tensor(x, "x", timesteps=c.timesteps, finite=False)
            return x
        if c.encoder == "rate":
            return self.encoder(x, generator=generator)
        return self.encoder(x)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        seq = self.encode(x, generator)  # [T, B, N, F]
        h = self.embed(seq) + self.pos  # [T, B, N, D] membrane currents
        for block in self.blocks:
            h = block(h)
        per_token = self.head(self.head_lif(h))  # [T, B, N, C]
        return per_token.mean(dim=(0, 2))  # [B, C]


class DenseClassifier(nn.Module):
    """Dense twin of ``SpikingClassifier``. Input ``[B, N, F]``, output logits ``[B, C]``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.embed = LinearBN(c.in_features, c.dim)
        self.pos = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.blocks = nn.ModuleList(
            DenseTransformerBlock(c.dim, c.heads, c.dense_attention, c.causal, c.mlp_ratio, c.dense_act)
            for _ in range(c.depth)
        )
        self.head_act = ACTIVATIONS[c.dense_act]()
        self.head = nn.Linear(c.dim, c.num_classes)

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        c = self.config
        check_tensor(x, "x", ndim=3, last_dim=c.in_features)
        if x.shape[-2] != c.num_tokens:
            raise ShapeError(f"x has {x.shape[-2]} tokens but the model expects {c.num_tokens}")
        h = self.embed(x) + self.pos  # [B, N, D]
        for block in self.blocks:
            h = block(h)
        return self.head(self.head_act(h)).mean(dim=1)  # [B, C]


def build_model(config: ModelConfig) -> nn.Module:
    """Build the classifier that ``config.model`` names."""
    return SpikingClassifier(config) if config.model == "spiking" else DenseClassifier(config)
