"""The spiking encoder-decoder: reverse a digit string, and see where each output position looked.

Trains the spiking encoder-decoder on ``translate`` (reverse digit strings), decodes a few test
strings greedily, and plots the last decoder block's cross-attention for one of them: for each output
position, the SSA scores (Q K^T, averaged over steps and heads) over the source positions. Reversal
shows as an anti-diagonal.

    .venv/bin/python examples/seq2seq_attention.py [--out runs/seq2seq] [--epochs 30]
        [--checkpoint DIR/checkpoint.pt]   (a trained run to show, instead of training)

Writes OUT/cross_attention.png and prints the decoded strings.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spiking_attn import load_model, train  # noqa: E402
from spiking_attn.data import load_task  # noqa: E402
from spiking_attn.mechanisms.seq2seq import cross_attention_map  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/seq2seq")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--checkpoint", help="a trained spiking seq2seq checkpoint on translate")
    args = parser.parse_args()
    out = Path(args.out)
    data = load_task("translate")
    checkpoint = args.checkpoint
    if checkpoint is None:
        metrics = train(task="translate", epochs=args.epochs, out=out / "spiking", overwrite=True, progress=False,
                        figures=False)
        print(f"translate (reverse), spiking seq2seq: sequence accuracy {metrics['test_accuracy']:.3f}")
        checkpoint = out / "spiking" / "checkpoint.pt"
    else:
        out.mkdir(parents=True, exist_ok=True)
    model = load_model(checkpoint)
    x = data.x_test[:4]
    decoded = model.generate(x)
    for source, output in zip(x.argmax(-1), decoded):
        print(f"source {' '.join(map(str, source.tolist()))} -> decoded {' '.join(map(str, output.tolist()))}")
    scores = cross_attention_map(model, x[:1])[0]  # [L, M]
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    im = ax.imshow(scores.numpy(), cmap="viridis")
    source = " ".join(map(str, x[0].argmax(-1).tolist()))
    ax.set(title=f"cross-attention, source {source}", xlabel="source position", ylabel="output position")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    fig.savefig(out / "cross_attention.png", dpi=110)
    print(f"wrote {out / 'cross_attention.png'}")


if __name__ == "__main__":
    main()
