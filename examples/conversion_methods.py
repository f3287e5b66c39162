"""Three ways from a trained dense twin to a spiking model, side by side on the digits.

Trains the conversion-friendly dense twin (SDSA attention, ReLU) on the digits, then converts it
three ways with `spiking_attn.converters`: rate coding with calibrated thresholds, QCFS (the twin is
first fine-tuned with quantized activations) and exact time differences. Plots accuracy and output
error against T for the three methods on one figure.

    .venv/bin/python examples/conversion_methods.py [--out runs/conversion] [--epochs 40] [--finetune-epochs 40]

Writes OUT/conversion_methods.png and prints the accuracy-vs-T table of each method.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from spiking_attn import load_model, train  # noqa: E402
from spiking_attn.converters import convert, finetune_qcfs  # noqa: E402
from spiking_attn.data import load_task  # noqa: E402

STEPS = {"rate": [4, 8, 16, 32, 64], "qcfs": [2, 4, 8, 16, 32], "td": [1, 2, 4, 8]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/conversion")
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--finetune-epochs", type=int, default=40)
    args = parser.parse_args()
    out = Path(args.out)
    metrics = train(task="digits", model="dense", dense_attention="sdsa", epochs=args.epochs, out=out / "dense",
                    overwrite=True, progress=False, figures=False)
    print(f"dense twin (SDSA, ReLU): test accuracy {metrics['test_accuracy']:.4f}")
    data = load_task("digits")
    dense = load_model(out / "dense" / "checkpoint.pt")
    evaluation = {"x": data.x_test, "y": data.y_test}
    calibration = data.x_train[:512]
    results = {"rate": convert(dense, calibration, "rate", STEPS["rate"], evaluation=evaluation),
               "td": convert(dense, calibration, "td", STEPS["td"], evaluation=evaluation)}
    twin = finetune_qcfs(dense, data, levels=4, epochs=args.finetune_epochs)
    print(f"QCFS twin (L=4, {args.finetune_epochs} epochs of fine-tuning): test accuracy {twin.finetune_accuracy:.4f}")
    results["qcfs"] = convert(twin, calibration, "qcfs", STEPS["qcfs"], evaluation=evaluation)

    fig, (ax_acc, ax_err) = plt.subplots(1, 2, figsize=(10, 3.6))
    for i, (method, result) in enumerate(results.items()):
        steps = [r["timesteps"] for r in result.results]
        print(f"{method}: dense {result.dense_accuracy:.4f}; " +
              ", ".join(f"T={r['timesteps']} {r['accuracy']:.4f}" for r in result.results))
        ax_acc.plot(steps, [r["accuracy"] for r in result.results], marker="o", color=f"C{i}", label=method)
        ax_acc.axhline(result.dense_accuracy, color=f"C{i}", ls=":", lw=1)
        ax_err.plot(steps, [max(r["mean_abs_output_error"], 1e-9) for r in result.results], marker="o",
                    color=f"C{i}", label=method)
    ax_acc.set(xscale="log", xlabel="time steps T", ylabel="test accuracy (dotted: each method's dense twin)")
    ax_err.set(xscale="log", yscale="log", xlabel="time steps T", ylabel="mean |spiking - dense| logits")
    ax_acc.legend()
    ax_err.legend()
    fig.suptitle("digits: the dense SDSA twin converted three ways")
    fig.tight_layout()
    fig.savefig(out / "conversion_methods.png", dpi=110)
    print(f"wrote {out / 'conversion_methods.png'}")


if __name__ == "__main__":
    main()
