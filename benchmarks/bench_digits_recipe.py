"""Training recipes on the digits: test accuracy of both twins over seeds, and the time a run takes.

Each recipe is a set of ``train`` arguments; every (recipe, twin, seed) is one training run to the
end, and the table gives the per-seed accuracies, their mean, min and max, and the median seconds per
run. Issue 15's targets at the defaults: dense >= 0.985, spiking >= 0.975 (T=4), mean over 3 seeds.

    .venv/bin/python benchmarks/bench_digits_recipe.py [--recipes rows windows+e40 defaults] [--seeds 0 1 2]
        [--models spiking dense] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

RECIPES = {
    "defaults": {"task": "digits"},  # 8 tokens, each a window of 5 rows; 30 epochs
    "windows+e40": {"task": "digits", "epochs": 40},
    "rows": {"task": "digits_rows", "epochs": 40},  # the defaults before row windows: 8 row tokens, 40 epochs
    "rowcol": {"task": "digits_rowcol"},  # 8 row tokens, then 8 column tokens
    "augment": {"task": "digits_rows", "augment": True, "epochs": 40},
    "rowcol+dim128": {"task": "digits_rowcol", "dim": 128},
    "augment+e80": {"task": "digits_rows", "augment": True, "epochs": 80},
    "rowcol+augment+e80": {"task": "digits_rowcol", "augment": True, "epochs": 80},
}


def run(recipe: dict, model: str, seed: int) -> tuple:
    from spiking_attn.training import train

    with tempfile.TemporaryDirectory() as folder:
        t0 = time.perf_counter()
        metrics = train(model=model, seed=seed, out=folder + "/run", progress=False, figures=False, **recipe)
        return metrics["test_accuracy"], time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipes", nargs="+", default=["rows", "windows+e40", "defaults"], choices=sorted(RECIPES))
    parser.add_argument("--models", nargs="+", default=["spiking", "dense"], choices=("spiking", "dense"))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    rows = []
    print(f"{'recipe':16s} {'model':8s} {'per seed':28s} {'mean':>7s} {'min':>7s} {'max':>7s} {'s/run':>6s}")
    for name in args.recipes:
        for model in args.models:
            accs, secs = zip(*(run(RECIPES[name], model, seed) for seed in args.seeds))
            row = {"recipe": name, "model": model, "seeds": args.seeds, "accuracy": list(accs),
                   "mean": statistics.mean(accs), "min": min(accs), "max": max(accs),
                   "seconds_median": statistics.median(secs)}
            rows.append(row)
            print(f"{name:16s} {model:8s} {', '.join(f'{a:.4f}' for a in accs):28s} {row['mean']:7.4f} "
                  f"{row['min']:7.4f} {row['max']:7.4f} {row['seconds_median']:6.1f}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
