"""Figures written by training: learning curves, and a spike raster beside the attention maps."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from .attention import DenseSelfAttention, SpikingSelfAttention, attention_map  # noqa: E402
from .outputs import atomic_write  # noqa: E402
from .recorder import SpikeRecorder  # noqa: E402


def _save(fig, path: str | os.PathLike) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_training(history: dict, path: str | os.PathLike, title: str = "") -> None:
    """Loss and accuracy per epoch. ``history`` has lists 'train_loss', 'train_accuracy', 'test_accuracy'."""
    epochs = range(1, len(history["train_loss"]) + 1)
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(9, 3.4))
    ax_loss.plot(epochs, history["train_loss"], marker="o", ms=3)
    ax_loss.set(xlabel="epoch", ylabel="train loss (cross-entropy)")
    ax_acc.plot(epochs, history["train_accuracy"], marker="o", ms=3, label="train")
    ax_acc.plot(epochs, history["test_accuracy"], marker="o", ms=3, label="test")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", ylim=(0, 1.02))
    ax_acc.legend()
    fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)


@torch.no_grad()
def _dense_attention_maps(model: nn.Module, x: torch.Tensor, context: dict) -> list:
    captured, handles = {}, []
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, DenseSelfAttention)]
    for name, layer in layers:
        for part in ("q_act", "k_act"):
            handles.append(getattr(layer, part).register_forward_hook(
                lambda _m, _i, out, key=(name, part): captured.__setitem__(key, out)))
    try:
        model(x, **context)
    finally:
        for h in handles:
            h.remove()
    maps = []
    for name, layer in layers:
        q, k = captured[(name, "q_act")], captured[(name, "k_act")]  # [B, N, D]
        scale = layer.scale if layer.kind == "softmax" else None
        maps.append((f"{name} ({layer.kind})", attention_map(q, k, layer.heads, layer.causal, scale)[0], "key token"))
    return maps


def plot_spikes_and_attention(model: nn.Module, x: torch.Tensor, path: str | os.PathLike, **context) -> None:
    """Spike raster of sample 0 for a few populations, and each attention layer's map.

    ``context`` holds the model's other inputs for that sample (``cue=...``).

    SSA maps are ``Q K^T`` averaged over steps and heads; an SDSA map shows, per token and channel,
    how often the query passed the ``LIF(sum K*V)`` mask. Dense models show their attention scores.
    """
    model.eval()
    x = x[:1]
    context = {k: v[:1] for k, v in context.items()}
    rasters, maps = [], []
    attn_layers = [(n, m) for n, m in model.named_modules() if isinstance(m, SpikingSelfAttention)]
    if attn_layers:
        with SpikeRecorder(model) as rec:
            with torch.no_grad():
                model(x, **context)
        spikes = rec.spikes
        names = [n for n in spikes if n.endswith(("pre_attn_lif", "head_lif"))][:3]
        rasters = [(n, spikes[n][:, 0]) for n in names]  # [T, N, D]
        for name, layer in attn_layers:
            q, k = spikes[f"{name}.q_lif"][:, :1], spikes[f"{name}.k_lif"][:, :1]
            if layer.kind == "ssa":
                maps.append((f"{name} (SSA: Q K^T)", attention_map(q, k, layer.heads, layer.causal)[0], "key token"))
            else:
                gate = spikes[f"{name}.attn_lif"][:, :1]  # [T, 1, 1|N, D]
                maps.append((f"{name} (SDSA: Q AND kv)", (q * gate).mean(0)[0], "channel"))
    else:
        maps = _dense_attention_maps(model, x, context)
    ncols = max(len(rasters) + len(maps), 1)
    fig, axes = plt.subplots(1, ncols, figsize=(3.6 * ncols, 3.6), squeeze=False)
    for ax, (name, s) in zip(axes[0], rasters):
        steps, tokens, dim = s.shape
        t_idx, n_idx, d_idx = torch.nonzero(s, as_tuple=True)
        ax.scatter((t_idx * tokens + n_idx).numpy(), d_idx.numpy(), s=2, c="k", marker="|")
        for t in range(1, steps):
            ax.axvline(t * tokens - 0.5, color="0.8", lw=0.6)
        ax.set(title=f"{name}\nspikes (rate {float(s.mean()):.3f})", xlabel="time step x token",
               ylabel="neuron (channel)", xlim=(-0.5, steps * tokens - 0.5), ylim=(-0.5, dim - 0.5))
    for ax, (name, m, xlabel) in zip(axes[0][len(rasters):], maps):
        im = ax.imshow(m.numpy(), aspect="auto", cmap="viridis")
        ax.set(title=name, xlabel=xlabel, ylabel="query token")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    _save(fig, path)
