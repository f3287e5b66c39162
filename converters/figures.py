"""The conversion figure: accuracy and output error against the number of time steps."""
from __future__ import annotations

import os

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spiking_attn.outputs import atomic_write  # noqa: E402


def plot_accuracy_vs_timesteps(conversion: dict, path: str | os.PathLike, title: str = "") -> None:
    """Two panels from ``conversion.json`` data: accuracy against T (the dense accuracy as a line) and the
    mean absolute output error against T (log scale)."""
    rows = conversion["results"]
    steps = [r["timesteps"] for r in rows]
    fig, (ax_acc, ax_err) = plt.subplots(1, 2, figsize=(9, 3.4))
    if all(r["accuracy"] is not None for r in rows):
        ax_acc.plot(steps, [r["accuracy"] for r in rows], marker="o", label=f"spiking ({conversion['method']})")
    if conversion.get("dense_accuracy") is not None:
        ax_acc.axhline(conversion["dense_accuracy"], color="k", ls="--", lw=1, label="dense twin")
    ax_acc.set(xscale="log", xlabel="time steps T", ylabel="test accuracy")
    ax_acc.set_xticks(steps, [str(t) for t in steps])
    ax_acc.legend()
    errors = [max(r["mean_abs_output_error"], 1e-12) for r in rows]
    ax_err.plot(steps, errors, marker="o", color="C3")
    ax_err.set(xscale="log", yscale="log", xlabel="time steps T", ylabel="mean |spiking - dense| output")
    ax_err.set_xticks(steps, [str(t) for t in steps])
    for ax in (ax_acc, ax_err):
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # only the evaluated T are labelled
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
