"""Predictive processing: positive and negative prediction-error spikes, level by level.

Trains the spiking predictive-processing model on the digits with the free-energy regulariser, then
records, for one test image, the positive and negative error populations of every level of the first
block, and plots their spikes over time and channel; a second panel gives the error spike count per
level over the test set.

    .venv/bin/python examples/prediction_errors.py [--out runs/predictive] [--epochs 20]

Writes OUT/prediction_errors.png and prints the error spikes per level.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from spiking_attn import SpikeRecorder, load_model, train  # noqa: E402
from spiking_attn.data import load_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/predictive")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    metrics = train(task="digits", mechanism="predictive", epochs=args.epochs, out=out, overwrite=True,
                    regularizers={"free_energy": 0.01}, progress=False, figures=False)
    print(f"digits, spiking predictive processing: test accuracy {metrics['test_accuracy']:.3f}")
    model = load_model(out / "checkpoint.pt")
    pc = model.blocks[0].attn
    names = [f"blocks.0.attn.error_{sign}.{level}" for level in range(pc.levels) for sign in ("pos", "neg")]
    x = load_task("digits").x_test
    with SpikeRecorder(model, names=names) as rec, torch.no_grad():
        model(x)
    spikes = rec.spikes  # each [T, B, D]
    fig, axes = plt.subplots(1, pc.levels + 1, figsize=(4 * (pc.levels + 1), 3.6))
    for level in range(pc.levels):
        pos, neg = spikes[names[2 * level]][:, 0], spikes[names[2 * level + 1]][:, 0]  # [T, D], image 0
        ax = axes[level]
        t, d = torch.nonzero(pos, as_tuple=True)
        ax.scatter(t.numpy(), d.numpy(), marker="|", c="tab:red", label="positive error")
        t, d = torch.nonzero(neg, as_tuple=True)
        ax.scatter(t.numpy() + 0.25, d.numpy(), marker="|", c="tab:blue", label="negative error")
        ax.set(title=f"level {level}: error spikes, image 0", xlabel="time step", ylabel="channel",
               xlim=(-0.5, pos.shape[0] - 0.25))
        ax.legend(loc="upper right", fontsize=7)
    counts = [[float(spikes[names[2 * level + k]].sum(dim=(0, 2)).mean()) for k in (0, 1)] for level in range(pc.levels)]
    ax = axes[-1]
    levels = torch.arange(pc.levels)
    ax.bar(levels - 0.2, [c[0] for c in counts], 0.4, color="tab:red", label="positive")
    ax.bar(levels + 0.2, [c[1] for c in counts], 0.4, color="tab:blue", label="negative")
    ax.set(title="error spikes per image (test set)", xlabel="level", xticks=levels.tolist())
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "prediction_errors.png", dpi=110)
    for level, (p, n) in enumerate(counts):
        print(f"level {level}: {p:.1f} positive and {n:.1f} negative error spikes per image")
    print(f"wrote {out / 'prediction_errors.png'}")


if __name__ == "__main__":
    main()
