"""Wall time of `spiking-attn train` on one process against several (`--nproc`), side by side.

Each repetition runs the command line a user would type, in a fresh process, and times all of it:
start-up (Python, torch, the processes of a multi-process run joining their group), training, the
per-epoch evaluation and checkpoint, and the final metrics and figures. The model is the digits default
(D=64, 2 blocks, 4 heads, T=4, batch 64); one epoch unless `--epochs` says otherwise. Prints min, median
and max per process count, the ratio of medians against one process, and each run's training loss and test
accuracy (a multi-process run equals the one-process run up to float rounding, so they should agree).

Threads: each run inherits OMP_NUM_THREADS; without it, one process uses every core it may run on and
`--nproc N` gives each process cores/N threads (torchrun instead sets OMP_NUM_THREADS=1 when it is unset).
State it with the numbers.

    .venv/bin/python benchmarks/bench_distributed.py [--epochs 1] [--repeats 3] [--nprocs 1 2] [--task digits]
        [-- more train options, e.g. --batch-size 512 --dim 128]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path("runs/bench_distributed")


def one_run(task: str, epochs: int, nproc: int, out: Path, extra: list) -> tuple:
    """Seconds the command took, and its metrics."""
    command = [sys.executable, "-m", "spiking_attn.cli", "train", "--task", task, "--epochs", str(epochs),
               "--out", str(out), "--overwrite", "--no-progress", "--nproc", str(nproc), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds, json.loads((out / "metrics.json").read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="digits")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--nprocs", type=int, nargs="+", default=[1, 2])
    parser.add_argument("extra", nargs=argparse.REMAINDER, help="after --: more options for spiking-attn train")
    args = parser.parse_args()
    extra = args.extra[1:] if args.extra[:1] == ["--"] else args.extra
    threads = os.environ.get("OMP_NUM_THREADS", f"unset ({len(os.sched_getaffinity(0))} cores)")
    print(f"spiking-attn train --task {args.task} --epochs {args.epochs} {' '.join(extra)}".rstrip()
          + f", {args.repeats} repetitions, OMP_NUM_THREADS={threads}", flush=True)
    times = {n: [] for n in args.nprocs}
    for rep in range(args.repeats):  # interleaved, so that a change in the machine's load hits every count alike
        for n in args.nprocs:
            seconds, metrics = one_run(args.task, args.epochs, n, ROOT / f"nproc{n}", extra)
            times[n].append(seconds)
            print(f"  repetition {rep + 1}, --nproc {n}: {seconds:6.1f} s   train loss "
                  f"{metrics['history']['train_loss'][-1]:.6f}, test accuracy {metrics['test_accuracy']:.4f}",
                  flush=True)
    base = statistics.median(times[args.nprocs[0]])
    print(f"{'--nproc':>8} {'min s':>8} {'median s':>9} {'max s':>8} {'median / --nproc ' + str(args.nprocs[0]):>20}")
    for n in args.nprocs:
        t = times[n]
        print(f"{n:>8} {min(t):>8.1f} {statistics.median(t):>9.1f} {max(t):>8.1f} "
              f"{statistics.median(t) / base:>20.2f}")


if __name__ == "__main__":
    main()
