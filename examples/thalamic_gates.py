"""Thalamic gating on the quadrant task: which attention heads each cue opens, step by step.

Trains the spiking thalamic-gating model on `quadrant` (the cue names the quadrant whose digit is the
label), then records the gate population of the first block for test images under each of the four
cues and plots the gate firing rate per head and time step, one panel per cue.

    .venv/bin/python examples/thalamic_gates.py [--out runs/thalamic] [--epochs 20]

Writes OUT/gate_firing.png and prints the test accuracy and the gate rates.
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

QUADRANTS = ("top left", "top right", "bottom left", "bottom right")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/thalamic")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    metrics = train(task="quadrant", mechanism="thalamic", epochs=args.epochs, out=out, overwrite=True,
                    progress=False, figures=False)
    print(f"quadrant, spiking thalamic gating, T={metrics['timesteps']}: test accuracy {metrics['test_accuracy']:.3f}")

    model = load_model(out / "checkpoint.pt")
    x = load_task("quadrant").x_test[:128]
    rates = []
    for cue in range(4):
        with SpikeRecorder(model, names=["blocks.0.attn.gate"]) as rec, torch.no_grad():
            model(x, cue=torch.full((len(x),), cue))
        rates.append(rec.spikes["blocks.0.attn.gate"].mean(1))  # [T, H]: rate over the images
    fig, axes = plt.subplots(1, 4, figsize=(13, 3.2), sharey=True)
    for ax, cue, rate in zip(axes, range(4), rates):
        im = ax.imshow(rate.T.numpy(), vmin=0, vmax=1, cmap="magma", aspect="auto")
        ax.set(title=f"cue: {QUADRANTS[cue]}", xlabel="time step", ylabel="head" if cue == 0 else None,
               xticks=range(rate.shape[0]), yticks=range(rate.shape[1]))
        print(f"cue {cue} ({QUADRANTS[cue]}): gate rate per head {[round(float(r), 2) for r in rate.mean(0)]}")
    fig.colorbar(im, ax=axes, fraction=0.02, label="gate firing rate")
    fig.suptitle("block 0 gate population: firing per head and step, for each cue")
    fig.savefig(out / "gate_firing.png", dpi=110, bbox_inches="tight")
    print(f"wrote {out / 'gate_firing.png'}")


if __name__ == "__main__":
    main()
