"""Figures of the hardware stage: Lava's spikes beside the reference's, the core map with its traffic, and the
energy breakdown of a model beside its dense twin."""
from __future__ import annotations

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from spiking_attn.outputs import atomic_write  # noqa: E402


def _save(fig, path) -> None:
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)


def plot_raster(deployment, path: str | os.PathLike, sample: int = 0, max_neurons: int = 64) -> None:
    """One row of panels per population (up to ``max_neurons`` neurons each): Lava's spikes of ``sample``
    (left) beside the reference's (right); a red mark where they differ."""
    names = list(deployment.lava)
    fig, axes = plt.subplots(len(names), 2, figsize=(8, 0.55 * len(names) + 1.2), squeeze=False, sharex=True)
    ref_label = "emulator" if deployment.precision == "fixed" else "torch (float64)"
    for row, name in enumerate(names):
        lava = deployment.lava[name][:, sample, :max_neurons]  # [T, n]
        ref = deployment.reference[name][:, sample, :max_neurons]
        for col, (spikes, label) in enumerate(((lava, f"Lava ({deployment.precision})"), (ref, ref_label))):
            ax = axes[row, col]
            t, n = np.nonzero(spikes)
            ax.scatter(t, n, s=2, c="k", marker="|")
            bad_t, bad_n = np.nonzero(lava != ref)
            if bad_t.size:
                ax.scatter(bad_t, bad_n, s=6, c="r", marker="x")
            ax.set_yticks([])
            ax.set_xlim(-0.5, spikes.shape[0] - 0.5)
            if row == 0:
                ax.set_title(label, fontsize=9)
            if col == 0:
                ax.set_ylabel(name.replace("blocks.", "b"), rotation=0, ha="right", va="center", fontsize=6)
    axes[-1, 0].set_xlabel("time step")
    axes[-1, 1].set_xlabel("time step")
    fig.suptitle(f"sample {sample}: spike agreement {deployment.spike_agreement():.4f} over all samples")
    fig.tight_layout()
    _save(fig, path)


def plot_core_map(deployment, path: str | os.PathLike) -> None:
    """Neurons per core, coloured by core group (the gating and pulvinar groups stand apart), and the
    spikes sent between cores in the run."""
    mapping = deployment.mapping
    groups = sorted({c.group for c in mapping.cores})
    colours = {g: plt.cm.tab10(i % 10) for i, g in enumerate(groups)}
    fig, (ax_map, ax_traffic) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [1.6, 1]})
    for core in mapping.cores:
        bottom = 0
        for name, start, end in core.slices:
            ax_map.bar(core.index, end - start, bottom=bottom, color=colours[core.group], edgecolor="white", lw=0.3)
            bottom += end - start
    from matplotlib.patches import Patch

    ax_map.axhline(mapping.profile.neurons_per_core, color="grey", ls="--", lw=0.8)
    ax_map.set_yscale("log")  # a gating group of a few neurons stays visible beside full cores
    ax_map.set(xlabel="core", ylabel="neurons (log; bars split by population)",
               title=f"{len(mapping.cores)} cores, profile {mapping.profile.name}")
    ax_map.legend(handles=[Patch(color=colours[g], label=g) for g in groups], fontsize=6, loc="lower right")
    image = ax_traffic.imshow(np.log10(1 + deployment.traffic), cmap="viridis")
    ax_traffic.set(xlabel="receiving core", ylabel="sending core",
                   title=f"inter-core spikes: {int(deployment.traffic.sum())}")
    fig.colorbar(image, ax=ax_traffic, label="log10(1 + spikes)")
    fig.tight_layout()
    _save(fig, path)


def energy_group(layer: str) -> str:
    """The bar a layer's energy joins: the embedding, a block's attention (mechanism) or MLP, the head."""
    parts = layer.split(".")
    if parts[0] == "blocks" and len(parts) >= 3:
        branch = parts[2]
        if branch.startswith("pre_"):  # a branch's input population belongs to its branch
            branch = branch[len("pre_"):].removesuffix("_lif").removesuffix("_act")
        return ".".join([*parts[:2], branch])
    if parts[0] == "blocks":
        return ".".join(parts[:2]) + " (residual)" if len(parts) == 2 else ".".join(parts[:2])
    first = parts[0]
    if layer == "model":  # the classifier's own work: the head's mean over tokens and steps
        return "head"
    for suffix in ("_lif", "_act"):
        if first.endswith(suffix):
            first = first[: -len(suffix)]
    return first


def plot_energy_breakdown(report, path: str | os.PathLike) -> None:
    """Stacked bars of energy per layer group and part (MAC, AC, mask, add, neuron, spike, memory): the
    dense twin (hatched, left) beside the spiking model (right)."""
    from .energy import PARTS

    em = report.energy_model
    sides = [("ANN", report.ann), ("SNN", report.snn)] if report.ann is not None else [("SNN", report.snn)]
    groups: dict = {}
    for label, rep in sides:
        for name, ops in rep.per_layer.items():
            parts = em.breakdown(ops)
            slot = groups.setdefault(energy_group(name), {}).setdefault(label, dict.fromkeys(PARTS, 0.0))
            for k, v in parts.items():
                slot[k] += v
    names = [g for g, v in groups.items() if any(sum(p.values()) > 0 for p in v.values())]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(names) + 2), 4.2))
    colors = dict(zip(PARTS, plt.cm.tab10.colors))
    width = 0.38 if len(sides) == 2 else 0.6
    x = np.arange(len(names))
    for i, (label, _) in enumerate(sides):
        offset = (i - (len(sides) - 1) / 2) * width
        bottom = np.zeros(len(names))
        for part in PARTS:
            values = np.array([groups[g].get(label, {}).get(part, 0.0) for g in names])
            if not values.any():
                continue
            ax.bar(x + offset, values, width, bottom=bottom, color=colors[part], edgecolor="k", linewidth=0.3,
                   hatch="//" if label == "ANN" else None, label=f"{part}" if i == len(sides) - 1 or label == "ANN"
                   else None)
            bottom += values
    handles, labels = ax.get_legend_handles_labels()
    unique = dict(zip(labels, handles))
    ax.legend(unique.values(), unique.keys(), fontsize=8, ncol=2, title="hatched: ANN; plain: SNN", title_fontsize=8)
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("energy per inference (pJ)")
    tallest = max(sum(parts.values()) for g in names for parts in groups[g].values())
    ax.set_ylim(0, 1.08 * tallest)
    title = f"energy model {em.name}: SNN {report.energy('snn') / 1e6:.3f} uJ"
    if report.ann is not None:
        title += f", ANN {report.energy('ann') / 1e6:.3f} uJ ({report.ratio:.1f}x)"
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
