"""Basal-forebrain modulation: the arousal states a spiking model settles in, and the gains they set.

Trains the spiking basal-forebrain model on the digits with the arousal prior (so that it uses its
states), then plots, for test images grouped by digit class, the firing rate of each arousal state,
and the input gain each state sets on the attention populations, channel by channel.

    .venv/bin/python examples/arousal_states.py [--out runs/basal_forebrain] [--epochs 20]

Writes OUT/arousal.png and prints the mean arousal per class.
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/basal_forebrain")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args()
    out = Path(args.out)
    metrics = train(task="digits", mechanism="basal_forebrain", epochs=args.epochs, out=out, overwrite=True,
                    regularizers={"arousal_prior": 0.1}, progress=False, figures=False)
    print(f"digits, spiking basal forebrain: test accuracy {metrics['test_accuracy']:.3f}")
    model = load_model(out / "checkpoint.pt")
    data = load_task("digits")
    bf = model.blocks[0].attn
    arousal = exposed_signal(model, bf, "return_components", data.x_test)["arousal"]  # [B, S]
    per_class = torch.stack([arousal[data.y_test == c].mean(0) for c in range(10)])  # [10, S]
    gains = (1 + 0.5 * torch.tanh(bf.state_gain)).detach()  # [S, D]: the gain each state sets
    fig, (ax_a, ax_g) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 2]})
    im = ax_a.imshow(per_class.numpy(), cmap="magma", aspect="auto", vmin=0, vmax=1)
    ax_a.set(title="arousal state (firing share) by digit", xlabel="state", ylabel="digit class",
             xticks=range(per_class.shape[1]), yticks=range(10))
    fig.colorbar(im, ax=ax_a, fraction=0.046)
    im = ax_g.imshow(gains.numpy(), cmap="coolwarm", aspect="auto", vmin=0.5, vmax=1.5)
    ax_g.set(title="input gain set by each state, per channel", xlabel="channel", ylabel="state",
             yticks=range(gains.shape[0]))
    fig.colorbar(im, ax=ax_g, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "arousal.png", dpi=110)
    for c in range(10):
        print(f"digit {c}: arousal {[round(float(v), 2) for v in per_class[c]]}")
    print(f"wrote {out / 'arousal.png'}")


if __name__ == "__main__":
    main()
