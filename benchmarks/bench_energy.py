"""Energy of the digits classifier against its trained dense twin, over seeds, with the accuracy cost.

For every seed: train the spiking classifier and its dense twin (the same defaults, `spiking-attn
train --task digits`), then `estimate` both on the 360 test samples with each energy model. A
recipe adds training options to the spiking model only:

| recipe | spiking training |
|---|---|
| default | the defaults |
| sparse | `--reg rate_target=W --target-rate R`: pulls every population's firing rate towards R |

Prints, per seed, both accuracies, the accuracy lost (points), the mean firing rate, the 45 nm ratio
ANN/SNN with the textbook bound (E_MAC/E_AC)/(rate*T), and the ratio under the other energy models;
then mean, min and max. Target (45 nm): ratio >= 5 at <= 1 point lost.

    .venv/bin/python benchmarks/bench_energy.py [--recipes default sparse] [--seeds 0 1 2] [--reuse] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

RECIPES = {
    "default": {},
    "sparse": {"regularizers": {"rate_target": 2.0}, "target_rate": 0.05},
}
MODELS = ("45nm", "45nm-fp16", "45nm-int8", "45nm-memory", "loihi")
ROOT = Path("runs/bench_energy")


def _train(out: Path, seed: int, model: str, extra: dict, reuse: bool = False) -> Path:
    from spiking_attn.training import train

    metrics_file = out / "metrics.json"
    if reuse and metrics_file.is_file() and json.loads(metrics_file.read_text()).get("completed"):
        print(f"  reusing {out.name}: test accuracy {json.loads(metrics_file.read_text())['test_accuracy']:.4f}")
        return out / "checkpoint.pt"
    t0 = time.perf_counter()
    metrics = train(task="digits", model=model, seed=seed, out=out, overwrite=True, progress=False, figures=False,
                    **extra)
    print(f"  trained {out.name}: test accuracy {metrics['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return out / "checkpoint.pt"


def run(recipes, seeds, reuse: bool = False) -> dict:
    from spiking_attn.checkpoint import load_model
    from spiking_attn.data import load_task
    from spiking_attn.hardware.energy import estimate

    data = load_task("digits")
    results = {}
    for seed in seeds:
        dense = load_model(_train(ROOT / f"dense_{seed}", seed, "dense", {}, reuse))
        for recipe in recipes:
            snn = load_model(_train(ROOT / f"spiking_{recipe}_{seed}", seed, "spiking", RECIPES[recipe], reuse))
            row = {}
            for name in MODELS:
                report = estimate(snn, data.x_test, name, labels=data.y_test, twin=dense)
                row[name] = report.ratio
                if name == "45nm":
                    row.update(snn_accuracy=report.accuracy["snn"], ann_accuracy=report.accuracy["ann"],
                               rate=report.mean_firing_rate(), bound=report.bound(),
                               snn_pJ=report.energy("snn"), ann_pJ=report.energy("ann"))
            row["points_lost"] = 100 * (row["ann_accuracy"] - row["snn_accuracy"])
            results.setdefault(recipe, {})[seed] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=list(RECIPES))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--reuse", action="store_true",
                        help=f"reuse completed runs in {ROOT}/ instead of training again (estimates are redone)")
    args = parser.parse_args()
    print(f"digits, 360 test samples; recipes {args.recipes}, seeds {args.seeds}")
    results = run(args.recipes, args.seeds, args.reuse)
    header = (f"{'recipe':8s} {'seed':>4s} {'SNN acc':>8s} {'ANN acc':>8s} {'lost pts':>8s} {'rate':>7s} "
              f"{'45nm':>7s} {'bound':>7s} " + " ".join(f"{m:>11s}" for m in MODELS[1:]))
    print("\n" + header)
    for recipe, rows in results.items():
        for seed, r in rows.items():
            print(f"{recipe:8s} {seed:4d} {r['snn_accuracy']:8.4f} {r['ann_accuracy']:8.4f} {r['points_lost']:8.2f} "
                  f"{r['rate']:7.4f} {r['45nm']:6.2f}x {r['bound']:6.2f}x "
                  + " ".join(f"{r[m]:10.2f}x" for m in MODELS[1:]))
        for label, fn in (("mean", statistics.mean), ("min", min), ("max", max)):
            vals = list(rows.values())
            print(f"{recipe:8s} {label:>4s} {fn(v['snn_accuracy'] for v in vals):8.4f} "
                  f"{fn(v['ann_accuracy'] for v in vals):8.4f} {fn(v['points_lost'] for v in vals):8.2f} "
                  f"{fn(v['rate'] for v in vals):7.4f} {fn(v['45nm'] for v in vals):6.2f}x "
                  f"{fn(v['bound'] for v in vals):6.2f}x " + " ".join(f"{fn(v[m] for v in vals):10.2f}x"
                                                                      for m in MODELS[1:]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
