"""Synthetic thalamus: which tokens the k-winner-take-all lets into the workspace, and their phase tags.

Trains the spiking synthetic thalamus on ``quadrant`` (the cue, naming a quadrant, is the task
embedding), then shows for one test image under each of the four cues: the first block's selection
(exactly K row tokens pass at each step) and the phase raster (a token's phase unit fires on the step
of the cycle that is its phase; tokens in phase fire together).

    .venv/bin/python examples/thalamus_workspace.py [--out runs/thalamus] [--epochs 20] [--k 8]
        [--checkpoint DIR/checkpoint.pt]   (a trained run to show, instead of training)

Writes OUT/thalamus_workspace.png and prints, per cue, the tokens selected at step 0.
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


def parts(model, x: torch.Tensor, cue: torch.Tensor) -> dict:
    """The first block's selection and phase spikes, ``[T, B, N]`` each."""
    return exposed_signal(model, model.blocks[0].attn, "return_parts", x, cue=cue)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/thalamus")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--k", type=int, default=8, help="tokens let into the workspace")
    parser.add_argument("--checkpoint", help="a trained spiking synthetic-thalamus checkpoint on quadrant")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_task("quadrant")
    checkpoint = args.checkpoint
    if checkpoint is None:
        metrics = train(task="quadrant", mechanism="synthetic_thalamus", mechanism_options={"k": args.k},
                        epochs=args.epochs, out=out / "spiking", overwrite=True, progress=False, figures=False)
        print(f"quadrant, spiking synthetic_thalamus (K={args.k}): test accuracy {metrics['test_accuracy']:.3f}")
        checkpoint = out / "spiking" / "checkpoint.pt"
    else:
        out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    x = data.x_test[:1].expand(4, -1, -1)
    cues = torch.arange(4)
    found = parts(model, x, cues)
    names = ["top left", "top right", "bottom left", "bottom right"]
    fig, axes = plt.subplots(2, 5, figsize=(15, 6), gridspec_kw={"width_ratios": [1.3, 1, 1, 1, 1]})
    for r in range(2):
        axes[r, 0].imshow(data.x_test[0].numpy(), cmap="gray_r")
        axes[r, 0].set(title="digits (row tokens)", ylabel="row token", xticks=[])
    for c in range(4):
        selected, phase = found["selected"][:, c].T, found["phase"][:, c].T  # [N, T]
        print(f"cue {c} ({names[c]}): tokens selected at step 0: {selected[:, 0].nonzero().flatten().tolist()}")
        axes[0, c + 1].imshow(selected.numpy(), cmap="Greens", vmin=0, vmax=1, aspect="auto")
        axes[0, c + 1].set(title=f"cue: {names[c]}\nk-WTA selection (K={model.blocks[0].attn.k})", xlabel="step",
                           ylabel="row token")
        axes[1, c + 1].imshow((phase * selected).numpy(), cmap="Purples", vmin=0, vmax=1, aspect="auto")
        axes[1, c + 1].set(title="phase spikes (selected)", xlabel="step", ylabel="row token")
    fig.tight_layout()
    fig.savefig(out / "thalamus_workspace.png", dpi=100)
    print(f"wrote {out / 'thalamus_workspace.png'}")


if __name__ == "__main__":
    main()
