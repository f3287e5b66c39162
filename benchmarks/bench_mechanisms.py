"""The mechanisms: accuracy on their tasks at defaults, and speed against their dense twins.

Accuracy (``--part accuracy``): `spiking-attn train --task TASK` at the task's defaults (quadrant: 20
epochs, 10000 training composites, SSA, T=4; digits: 40 epochs, SDSA, T=4; search: 20 epochs, 10000
canvases, T=4; translate: 30 epochs, 10000 strings, SSA, T=4), for every seed in
``--seeds``; prints mean, min and max.

| run | task | what it shows |
|---|---|---|
| spiking thalamic | quadrant | the gated model (target >= 0.90) |
| dense thalamic | quadrant | its dense twin (target >= 0.93) |
| spiking integrated | quadrant | the integrated block (target >= 0.90) |
| spiking plain, no cue | quadrant | the same budget without the cue: near chance (about 0.25) |
| spiking plain, cue token | quadrant | the plain model given the cue as an extra token |
| spiking cortico_thalamic | digits | cortico-thalamic attention (target >= 0.95) |
| dense cortico_thalamic | digits | its dense twin (reported) |
| spiking saliency | search | saliency with IOR (target >= 0.85) |
| dense saliency | search | its dense twin (target >= 0.90) |
| spiking synthetic_thalamus | quadrant | top-K gating with phase tags, K=8 (target >= 0.90) |
| dense synthetic_thalamus | quadrant | its dense twin (reported) |
| spiking seq2seq | translate | the encoder-decoder, sequence accuracy on reverse at length 8 (target >= 0.90) |
| dense seq2seq | translate | its dense twin (target >= 0.95) |

Speed (``--part speed``): one block of each mechanism, forward + backward at T=4, batch 32, 32 tokens,
dim 128 (the encoder-decoder, ``seq2seq``: the whole model at depth 1, teacher-forced on 32 positions),
spiking version and dense twin timed in alternation in the same run (median of ``--repeats``
each); prints the
spiking time per time step over the dense time (target <= 1.5).

K sweep (``--part ksweep``): the spiking synthetic thalamus on quadrant at its defaults with K (tokens let
into the workspace) in ``--ks`` (default 1 2 4 8), for every seed in ``--seeds``; prints the table and
writes accuracy against K to ``--figure`` (default runs/bench_mechanisms/thalamus_k.png).

    .venv/bin/python benchmarks/bench_mechanisms.py [--part speed|accuracy|ksweep|all] [--seeds 0 1 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

RUNS = {
    "spiking thalamic": dict(model="spiking", mechanism="thalamic"),
    "dense thalamic": dict(model="dense", mechanism="thalamic"),
    "spiking integrated": dict(model="spiking", mechanism="integrated"),
    "spiking plain, no cue": dict(model="spiking", mechanism="none", use_cue=False),
    "spiking plain, cue token": dict(model="spiking", mechanism="none"),
    "spiking cortico_thalamic": dict(model="spiking", mechanism="cortico_thalamic", task="digits"),
    "dense cortico_thalamic": dict(model="dense", mechanism="cortico_thalamic", task="digits"),
    "spiking saliency": dict(model="spiking", mechanism="saliency", task="search"),
    "dense saliency": dict(model="dense", mechanism="saliency", task="search"),
    "spiking synthetic_thalamus": dict(model="spiking", mechanism="synthetic_thalamus"),
    "dense synthetic_thalamus": dict(model="dense", mechanism="synthetic_thalamus"),
    "spiking seq2seq": dict(model="spiking", mechanism="seq2seq", task="translate"),
    "dense seq2seq": dict(model="dense", mechanism="seq2seq", task="translate"),
}
T, B, N, D, HEADS = 4, 32, 32, 128, 4


def accuracy(seeds, only=None) -> dict:
    from spiking_attn.training import train

    results = {}
    for label, kw in RUNS.items():
        if only and label not in only:
            continue
        kw = {"task": "quadrant", **kw}
        accs = []
        for seed in seeds:
            t0 = time.perf_counter()
            metrics = train(seed=seed, out=f"runs/bench_mechanisms/{label.replace(' ', '_')}_{seed}",
                            overwrite=True, progress=False, figures=False, **kw)
            accs.append(metrics["test_accuracy"])
            print(f"  {label:28s} seed {seed}: {metrics['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)",
                  flush=True)
        results[label] = {"task": kw["task"], "accuracies": accs, "mean": statistics.mean(accs), "min": min(accs),
                          "max": max(accs)}
    return results


def ksweep(ks, seeds, figure: str) -> dict:
    from spiking_attn.training import train

    results = {}
    for k in ks:
        accs = []
        for seed in seeds:
            t0 = time.perf_counter()
            metrics = train(task="quadrant", seed=seed, mechanism="synthetic_thalamus", mechanism_options={"k": k},
                            out=f"runs/bench_mechanisms/thalamus_k{k}_{seed}", overwrite=True, progress=False,
                            figures=False)
            accs.append(metrics["test_accuracy"])
            print(f"  K={k} seed {seed}: {metrics['test_accuracy']:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
        results[k] = {"accuracies": accs, "mean": statistics.mean(accs), "min": min(accs), "max": max(accs)}
    plot_ksweep(results, seeds, figure)
    return results


def plot_ksweep(results: dict, seeds, figure: str) -> None:
    """Accuracy against K (mean, with min to max over the seeds) to ``figure``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ks = sorted(results)
    fig, ax = plt.subplots(figsize=(4.6, 3.4))
    means = [results[k]["mean"] for k in ks]
    low = [results[k]["mean"] - results[k]["min"] for k in ks]
    high = [results[k]["max"] - results[k]["mean"] for k in ks]
    ax.errorbar(ks, means, yerr=[low, high], marker="o", capsize=3)
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set(xticks=ks, xticklabels=[str(k) for k in ks], xlabel="K (tokens into the workspace)",
           ylabel="test accuracy", title=f"synthetic thalamus on quadrant\n(seed{'s' if len(seeds) > 1 else ''} "
                                         f"{', '.join(map(str, seeds))}; min to max)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    os.makedirs(os.path.dirname(figure) or ".", exist_ok=True)
    fig.savefig(figure, dpi=110)
    print(f"wrote {figure}")


def _step(block, x, cue):
    def step():
        xs = x.clone().requires_grad_()
        block(xs, cue=cue).sum().backward()
    return step


def _paired_times(steps, repeats: int) -> list:
    """Median time of each step function, timed in alternation (one of each per round), so that a burst
    of load on a shared machine falls on both sides of a ratio rather than on one."""
    for step in steps:
        for _ in range(2):
            step()
    times = [[] for _ in steps]
    for _ in range(repeats):
        for step, record in zip(steps, times):
            t0 = time.perf_counter()
            step()
            record.append(time.perf_counter() - t0)
    return [statistics.median(record) for record in times]


def _model_speed(name: str, repeats: int) -> dict:
    """A whole model of another scaffold (the encoder-decoder, teacher-forced on N positions), depth 1."""
    from spiking_attn.models import ModelConfig, build_model

    timed = []
    for kind in ("spiking", "dense"):
        config = ModelConfig(in_features=11, num_tokens=N, num_classes=11, dim=D, heads=HEADS, depth=1, timesteps=T,
                             mechanism=name, model=kind, attention="ssa")
        torch.manual_seed(0)
        model = build_model(config)
        x = torch.nn.functional.one_hot(torch.randint(11, (B, N)), 11).float()
        target = torch.randint(11, (B, N))

        def step(model=model, x=x, target=target):
            model(x, target=target).sum().backward()
        timed.append(step)
    t_spiking, t_dense = _paired_times(timed, repeats)
    return {"spiking_ms": 1e3 * t_spiking, "dense_ms": 1e3 * t_dense, "per_step_ratio": t_spiking / T / t_dense}


def speed(repeats: int, only=None) -> dict:
    from spiking_attn.mechanisms import MECHANISMS
    from spiking_attn.models import ModelConfig

    results = {}
    for name, spec in MECHANISMS.items():
        if only and name not in only:
            continue
        if spec.scaffold != "classifier":
            results[name] = _model_speed(name, repeats)
            continue
        config = ModelConfig(in_features=D, num_tokens=N, num_classes=10, dim=D, heads=HEADS, timesteps=T, num_cues=4,
                             mechanism=name)
        options = spec.parse_options(config.mechanism_options)
        torch.manual_seed(0)
        spiking, dense = spec.spiking_block(config, options), spec.dense_block(config, options)
        cue_spikes = torch.zeros(T, B, 4)
        cue_spikes[..., 1] = 1.0
        t_spiking, t_dense = _paired_times([_step(spiking, torch.randn(T, B, N, D), cue_spikes),
                                            _step(dense, torch.randn(B, N, D), cue_spikes[0])], repeats)
        results[name] = {"spiking_ms": 1e3 * t_spiking, "dense_ms": 1e3 * t_dense,
                         "per_step_ratio": t_spiking / T / t_dense}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("speed", "accuracy", "ksweep", "all"), default="all")
    parser.add_argument("--ks", type=int, nargs="+", default=[1, 2, 4, 8], help="ksweep: the K to train")
    parser.add_argument("--figure", default="runs/bench_mechanisms/thalamus_k.png", help="ksweep: the figure")
    parser.add_argument("--replot", metavar="JSON", help="ksweep: redraw the figure from an earlier run's --json")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", choices=list(RUNS), help="accuracy: only these runs")
    parser.add_argument("--mechanisms", nargs="+", help="speed: only these mechanisms")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    args = parser.parse_args()
    if args.replot:
        with open(args.replot) as f:
            sweep = {int(k): v for k, v in json.load(f)["ksweep"].items()}
        plot_ksweep(sweep, args.seeds, args.figure)
        return
    from spiking_attn.lif_kernel import kernel_status

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LIF kernel: {kernel_status()}")
    out = {}
    if args.part in ("speed", "all"):
        print(f"\nOne block, forward+backward, T={T} B={B} N={N} D={D} heads={HEADS} (median of {args.repeats})")
        out["speed"] = speed(args.repeats, args.mechanisms)
        print(f"{'mechanism':18s} {'spiking ms':>11s} {'dense ms':>9s} {'spiking per step / dense':>25s}")
        for name, r in out["speed"].items():
            print(f"{name:18s} {r['spiking_ms']:11.1f} {r['dense_ms']:9.1f} {r['per_step_ratio']:24.2f}x")
    if args.part in ("accuracy", "all"):
        print(f"\nTest accuracy at the tasks' defaults over seeds {args.seeds}")
        out["accuracy"] = accuracy(args.seeds, args.only)
        print(f"{'run':28s} {'task':9s} {'mean':>7s} {'min':>7s} {'max':>7s}")
        for label, r in out["accuracy"].items():
            print(f"{label:28s} {r['task']:9s} {r['mean']:7.4f} {r['min']:7.4f} {r['max']:7.4f}")
    if args.part in ("ksweep", "all"):
        print(f"\nSynthetic thalamus on quadrant, accuracy against K over seeds {args.seeds}")
        out["ksweep"] = ksweep(args.ks, args.seeds, args.figure)
        print(f"{'K':>3s} {'mean':>7s} {'min':>7s} {'max':>7s}")
        for k, r in out["ksweep"].items():
            print(f"{k:3d} {r['mean']:7.4f} {r['min']:7.4f} {r['max']:7.4f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
