"""Cortico-thalamic attention: the superficial masks of each cortical area, dense twin beside spiking.

Trains the cortico-thalamic model and its dense twin on the digits as 8 row tokens (``digits_rows``: one
token per row, so that a mask reads as rows attending to rows), then shows, for one
test image, the mask each area (head) of the first block computes between rows: the dense twin's mask
values and the spiking mask neurons' firing rates. Row n of an area's mask says which rows' deep
spikes reach row n in that area.

    .venv/bin/python examples/cortical_areas.py [--out runs/cortical_areas] [--epochs 20] [--image 0]

Writes OUT/cortical_masks.png and prints each area's mean mask.
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


def masks(model, x: torch.Tensor) -> torch.Tensor:
    """The first block's masks for ``x`` ``[B, N, F]``: ``[B, H, N, N]``."""
    return exposed_signal(model, model.blocks[0].attn, "return_masks", x)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/cortical_areas")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--image", type=int, default=0, help="index of the test image to show")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_task("digits_rows")
    x = data.x_test[args.image:args.image + 1]
    found = {}
    for kind in ("dense", "spiking"):
        metrics = train(task="digits_rows", model=kind, mechanism="cortico_thalamic", epochs=args.epochs, out=out / kind,
                        overwrite=True, progress=False, figures=False)
        print(f"digits, {kind} cortico_thalamic: test accuracy {metrics['test_accuracy']:.3f}")
        found[kind] = masks(load_model(out / kind / "checkpoint.pt"), x)[0]  # [H, N, N]
        for area, mask in enumerate(found[kind]):
            print(f"{kind} area {area}: mean mask {float(mask.mean()):.3f}")
    areas = found["spiking"].shape[0]
    fig, axes = plt.subplots(2, areas + 1, figsize=(2.4 * (areas + 1), 5))
    titles = {"dense": "dense mask", "spiking": "spiking mask rate"}
    for row, kind in enumerate(("dense", "spiking")):
        axes[row, 0].imshow(x[0].numpy(), cmap="gray_r")
        axes[row, 0].set(title=f"digit {int(data.y_test[args.image])}", xticks=[], ylabel="row (token)")
        for area in range(areas):
            ax = axes[row, area + 1]
            im = ax.imshow(found[kind][area].numpy(), cmap="viridis", vmin=0)
            ax.set(title=f"{titles[kind]}, area {area}", xlabel="key row m", ylabel="query row n")
            fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "cortical_masks.png", dpi=110)
    print(f"wrote {out / 'cortical_masks.png'}")


if __name__ == "__main__":
    main()
