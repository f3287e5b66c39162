"""Pulvinar synchronization: the routing matrix between cortical areas, dense twin beside spiking.

Trains the spiking pulvinar model and its dense twin on the digits, then shows each one's routing
matrix averaged over test images: the dense softmax routing (rows sum to 1) and the spiking route
neurons' firing rates.

    .venv/bin/python examples/pulvinar_routing.py [--out runs/pulvinar] [--epochs 20]

Writes OUT/routing.png and prints both matrices.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from spiking_attn import load_model, train  # noqa: E402
from spiking_attn.recorder import exposed_signal  # noqa: E402
from spiking_attn.data import load_task  # noqa: E402


def routing(model, x: torch.Tensor) -> torch.Tensor:
    """The first block's routing matrix for ``x``, averaged over the images: ``[A, A]``."""
    return exposed_signal(model, model.blocks[0].attn, "return_routing", x).mean(0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/pulvinar")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    x = load_task("digits").x_test[:128]
    matrices = {}
    for kind in ("dense", "spiking"):
        metrics = train(task="digits", model=kind, mechanism="pulvinar", epochs=args.epochs, out=out / kind,
                        overwrite=True, progress=False, figures=False)
        print(f"digits, {kind} pulvinar: test accuracy {metrics['test_accuracy']:.3f}")
        matrices[kind] = routing(load_model(out / kind / "checkpoint.pt"), x)
        print(f"{kind} routing (row i: how much area i takes from each area j):")
        print(matrices[kind].numpy().round(2))
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.6))
    titles = {"dense": "dense twin: softmax routing", "spiking": "spiking: route neuron firing rate"}
    for ax, (kind, matrix) in zip(axes, matrices.items()):
        im = ax.imshow(matrix.numpy(), vmin=0, vmax=1, cmap="viridis")
        ax.set(title=titles[kind], xlabel="source area j", ylabel="receiving area i")
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "routing.png", dpi=110)
    print(f"wrote {out / 'routing.png'}")


if __name__ == "__main__":
    main()
