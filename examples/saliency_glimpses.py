"""Saliency and inhibition of return: where the model looks, glimpse by glimpse, on the search task.

Trains the saliency model and its dense twin on ``search`` (four digits in a 3x3 grid of cells; the goal
names a digit class; the answer is its cell), then shows, for a few test canvases, the canvas with the
goal and, for each glimpse (a time step of the spiking model, a glimpse of the dense twin's IOR loop),
a block's saliency map (``--block``, default the last) over the 6x6 grid of patch locations: the dense softmax map and the
spiking saliency neurons' spikes.

    .venv/bin/python examples/saliency_glimpses.py [--out runs/saliency] [--epochs 20] [--images 3]
        [--spiking DIR/checkpoint.pt --dense DIR/checkpoint.pt]   (trained runs to show, instead of training)

Writes OUT/saliency_glimpses.png and prints, per canvas, the location each glimpse attends most.
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
from spiking_attn.mechanisms.saliency import grid_shape  # noqa: E402


def glimpses(model, x: torch.Tensor, cue: torch.Tensor, block: int = -1) -> torch.Tensor:
    """Block ``block``'s saliency per glimpse, ``[B, G, N]``: dense maps, or spikes (steps as glimpses)."""
    maps = exposed_signal(model, model.blocks[block].attn, "return_maps", x, cue=cue)
    return maps if model.config.model == "dense" else maps.transpose(0, 1)  # spiking: [T, B, N] -> [B, T, N]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/saliency")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--images", type=int, default=3)
    parser.add_argument("--block", type=int, default=-1, help="which block's saliency to show (default the last)")
    parser.add_argument("--spiking", help="a trained spiking saliency checkpoint on search (skips its training)")
    parser.add_argument("--dense", help="a trained dense saliency checkpoint on search (skips its training)")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_task("search")
    x, cue, y = data.x_test[:args.images], data.cue_test[:args.images], data.y_test[:args.images]
    found = {}
    for kind in ("dense", "spiking"):
        checkpoint = getattr(args, kind)
        if checkpoint is None:
            metrics = train(task="search", model=kind, mechanism="saliency", epochs=args.epochs, out=out / kind,
                            overwrite=True, progress=False, figures=False)
            print(f"search, {kind} saliency: test accuracy {metrics['test_accuracy']:.3f}")
            checkpoint = out / kind / "checkpoint.pt"
        else:
            out.mkdir(parents=True, exist_ok=True)
        found[kind] = glimpses(load_model(checkpoint), x, cue, args.block)
    h, w = grid_shape(data.num_tokens)
    steps = found["spiking"].shape[1]
    fig, axes = plt.subplots(2 * args.images, steps + 1, figsize=(2.1 * (steps + 1), 4.2 * args.images),
                             squeeze=False)
    for i in range(args.images):
        canvas = x[i].reshape(h, w, 4, 4).permute(0, 2, 1, 3).reshape(4 * h, 4 * w)
        for r, kind in enumerate(("dense", "spiking")):
            row = axes[2 * i + r]
            row[0].imshow(canvas.numpy(), cmap="gray_r")
            row[0].set(title=f"find {int(cue[i])} (cell {int(y[i])})", xticks=[], yticks=[])
            peaks = []
            for g in range(steps):
                grid = found[kind][i, g].reshape(h, w)
                peaks.append(int(found[kind][i, g].argmax()))
                row[g + 1].imshow(grid.numpy(), cmap="magma", vmin=0)
                row[g + 1].set(title=f"{kind} glimpse {g + 1}", xticks=[], yticks=[])
            print(f"canvas {i} (find {int(cue[i])}, cell {int(y[i])}), {kind}: most attended location per glimpse "
                  f"{peaks}")
    fig.tight_layout()
    fig.savefig(out / "saliency_glimpses.png", dpi=100)
    print(f"wrote {out / 'saliency_glimpses.png'}")


if __name__ == "__main__":
    main()
