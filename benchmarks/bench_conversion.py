"""ANN-to-SNN conversion: accuracy against T for every method, over seeds, and a table per mechanism.

Part `targets` (the plain transformer on `digits` and on `quadrant`, seeds 0 1 2): train two dense twins
per seed with conversion-friendly SDSA attention, one with ReLU and one with QCFS activations (L = 4),
then run `spiking-attn convert`'s code path on each:

| route | source twin | T |
|---|---|---|
| rate | ReLU | 4 8 16 32 64 |
| qcfs | QCFS, trained from the start | 2 4 8 16 32 |
| qcfs fine-tuned | ReLU, fine-tuned with QCFS for the task's epochs | 2 4 8 16 32 |
| td | ReLU | 1 4 16 |

Targets: qcfs within 1.0 point of the dense accuracy at some T <= 16; td equal accuracy with summed
outputs within 1e-4 of the dense outputs; rate's output error falling with T.

Part `mechanisms` (digits, seed 0): every registered mechanism's dense twin (SDSA, ReLU and QCFS) through
rate, qcfs and td; a mechanism a binary method cannot convert yet is listed with the converter's reason.

    .venv/bin/python benchmarks/bench_conversion.py [--part targets mechanisms] [--tasks digits quadrant]
                                                  [--seeds 0 1 2] [--reuse] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

ROOT = Path("runs/bench_conversion")
LEVELS = 4
STEPS = {"rate": [4, 8, 16, 32, 64], "qcfs": [2, 4, 8, 16, 32], "qcfs-finetuned": [2, 4, 8, 16, 32], "td": [1, 4, 16]}


def _train(out: Path, task: str, seed: int, reuse: bool, **extra) -> Path:
    from spiking_attn.training import train

    metrics_file = out / "metrics.json"
    if reuse and metrics_file.is_file() and json.loads(metrics_file.read_text()).get("completed"):
        return out / "checkpoint.pt"
    t0 = time.perf_counter()
    metrics = train(task=task, model="dense", seed=seed, out=out, overwrite=True, progress=False, figures=False,
                    dense_attention="sdsa", **extra)
    print(f"  trained {out.name}: test accuracy {metrics['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)",
          flush=True)
    return out / "checkpoint.pt"


def _convert(source: Path, method: str, out: Path, steps) -> dict:
    from spiking_attn.converters.conversion import CONVERSION_OUTPUTS, convert_checkpoint
    from spiking_attn.outputs import RunFolder

    t0 = time.perf_counter()
    with RunFolder(out, overwrite=True, markers=("conversion.json",), files=CONVERSION_OUTPUTS,
                   keep_if="conversion.json") as folder:
        info = convert_checkpoint(source, method=method, timesteps=steps, out=folder, qcfs_levels=LEVELS,
                                  progress=False)
    info["seconds"] = time.perf_counter() - t0
    return info


def _row(info: dict) -> str:
    cells = " ".join(f"T={r['timesteps']}:{r['accuracy']:.4f}/{r['mean_abs_output_error']:.2g}" for r in info["results"])
    return f"dense {info['dense_accuracy']:.4f} | {cells}"


def _best_within(info: dict, limit: int = 16) -> float:
    """Points lost at the best T <= limit (the dense accuracy of the route's own source twin)."""
    best = max(r["accuracy"] for r in info["results"] if r["timesteps"] <= limit)
    return 100 * (info["dense_accuracy"] - best)


def targets(tasks, seeds, reuse: bool) -> dict:
    out = {}
    for task in tasks:
        for seed in seeds:
            relu = _train(ROOT / f"{task}_relu_{seed}", task, seed, reuse)
            qcfs = _train(ROOT / f"{task}_qcfs_{seed}", task, seed, reuse, dense_act="qcfs", qcfs_levels=LEVELS)
            runs = {"rate": _convert(relu, "rate", ROOT / f"{task}_rate_{seed}", STEPS["rate"]),
                    "qcfs": _convert(qcfs, "qcfs", ROOT / f"{task}_qcfsconv_{seed}", STEPS["qcfs"]),
                    "qcfs-finetuned": _convert(relu, "qcfs", ROOT / f"{task}_qcfsft_{seed}", STEPS["qcfs-finetuned"]),
                    "td": _convert(relu, "td", ROOT / f"{task}_td_{seed}", STEPS["td"])}
            for route, info in runs.items():
                print(f"{task} seed {seed} {route:>15}: {_row(info)} ({info['seconds']:.0f} s)", flush=True)
            out[f"{task}/{seed}"] = runs
    print("\nsummary over seeds (points lost against the route's own dense twin; min / mean / max)")
    for task in tasks:
        for route in ("rate", "qcfs", "qcfs-finetuned"):
            lost = [_best_within(out[f"{task}/{s}"][route]) for s in seeds]
            errors = [[r["mean_abs_output_error"] for r in out[f"{task}/{s}"][route]["results"]] for s in seeds]
            falling = all(all(b < a for a, b in zip(e, e[1:])) for e in errors)
            print(f"  {task:>8} {route:>15}: best T<=16 loses {min(lost):+.2f} / {statistics.mean(lost):+.2f} / "
                  f"{max(lost):+.2f} points; output error falls with T in every seed: {falling}")
        src = [out[f"{task}/{s}"]["qcfs-finetuned"].get("finetuned", {}).get("source_accuracy") for s in seeds]
        ft = [_best_within(out[f"{task}/{s}"]["qcfs-finetuned"]) + 100 * (s_acc - out[f"{task}/{s}"]["qcfs-finetuned"]
              ["dense_accuracy"]) for s, s_acc in zip(seeds, src)]
        print(f"  {task:>8} qcfs-finetuned against the ReLU source twin: {min(ft):+.2f} / {statistics.mean(ft):+.2f} / "
              f"{max(ft):+.2f} points")
        td = [max(r["mean_abs_output_error"] for r in out[f"{task}/{s}"]["td"]["results"]) for s in seeds]
        same = all(all(r["accuracy"] == out[f"{task}/{s}"]["td"]["dense_accuracy"] for r in out[f"{task}/{s}"]["td"]
                       ["results"]) for s in seeds)
        print(f"  {task:>8} {'td':>15}: largest mean |output error| {max(td):.2g}; accuracy equal to dense: {same}")
    return out


def mechanisms(reuse: bool) -> dict:
    from spiking_attn.converters import ConversionError
    from spiking_attn.mechanisms import mechanism_names

    table = {}
    for name in mechanism_names("classifier"):  # the encoder-decoder has a task of its own
        relu = _train(ROOT / f"mech_{name}_relu", "digits", 0, reuse, mechanism=name)
        qcfs = _train(ROOT / f"mech_{name}_qcfs", "digits", 0, reuse, mechanism=name, dense_act="qcfs",
                      qcfs_levels=LEVELS)
        row = {}
        for method, source, steps in (("rate", relu, [8, 32, 64]), ("qcfs", qcfs, [4, 8, 16]), ("td", relu, [4])):
            try:
                info = _convert(source, method, ROOT / f"mechconv_{name}_{method}", steps)
                row[method] = {"dense": info["dense_accuracy"], "results": info["results"]}
                print(f"{name:>16} {method:>5}: {_row(info)}", flush=True)
            except ConversionError as exc:
                row[method] = {"error": str(exc)}
                print(f"{name:>16} {method:>5}: not converted: {str(exc)[:150]}", flush=True)
        table[name] = row
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", nargs="+", choices=("targets", "mechanisms"), default=["targets", "mechanisms"])
    parser.add_argument("--tasks", nargs="+", default=["digits", "quadrant"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--reuse", action="store_true", help="reuse finished training runs in runs/bench_conversion")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()
    result = {}
    if "targets" in args.part:
        result["targets"] = targets(args.tasks, args.seeds, args.reuse)
    if "mechanisms" in args.part:
        result["mechanisms"] = mechanisms(args.reuse)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
