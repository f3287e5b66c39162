"""Deployment to Lava: spike agreement, prediction agreement, and the emulator against Lava's speed.

For every seed in ``--seeds`` and every model below, train it at the task's defaults (the runs are
kept in ``runs/bench_lava`` and reused), then:

1. ``deploy(..., precision='float')`` on the first ``--samples`` test samples: spike agreement of Lava
   with the float64 torch model (target 1.0);
2. ``deploy(..., precision='fixed')`` on the same samples, for each ``--weight-bits`` (16: two synapse
   groups per connection, 8: one): spike agreement of Lava with the bit-accurate emulator (target
   1.0) and Lava's steps per second;
3. the emulator over the whole test set (thresholds sized on the first 256 training samples, as
   ``spiking-attn deploy`` does): prediction agreement of the fixed-point network with the
   float torch model (target >= 0.99), and the emulator's steps per second over Lava's
   (target >= 100).

| model | |
|---|---|
| digits, SDSA | the plain spiking transformer |
| quadrant, thalamic gating, SDSA | the gating mechanism (SDSA: SSA's product does not export) |
| digits, pulvinar, SDSA | pulvinar synchronization |

    .venv/bin/python benchmarks/bench_lava.py [--seeds 0 1 2] [--samples 8] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from spiking_attn.hardware.lava import CALIBRATION_SAMPLES

MODELS = {
    "digits, SDSA": dict(task="digits", mechanism="none"),
    "quadrant, thalamic, SDSA": dict(task="quadrant", mechanism="thalamic"),
    "digits, pulvinar, SDSA": dict(task="digits", mechanism="pulvinar"),
}


def checkpoint(label: str, seed: int, kw: dict, data) -> str:
    """The checkpoint of ``label`` for ``seed``, trained now unless a finished run on ``data``'s tokens exists."""
    from pathlib import Path

    from spiking_attn.training import train

    folder = Path("runs/bench_lava") / f"{label.replace(', ', '_').replace(' ', '_')}_{seed}"
    fits = False
    if (folder / "metrics.json").exists():  # reuse a finished run only if it was trained on this task's tokens
        config = json.loads((folder / "metrics.json").read_text()).get("config", {})
        fits = (config.get("in_features"), config.get("num_tokens")) == (data.in_features, data.num_tokens)
    if not fits:
        t0 = time.perf_counter()
        metrics = train(model="spiking", attention="sdsa", seed=seed, out=folder, overwrite=True, progress=False,
                        figures=False, **kw)
        print(f"  trained {label} seed {seed}: test accuracy {metrics['test_accuracy']:.4f} "
              f"({time.perf_counter() - t0:.0f} s)", flush=True)
    return str(folder / "checkpoint.pt")


def whole_test_set(path: str, weight_bits: int, data) -> dict:
    """Fixed-point emulator against the float torch model over the whole test set of ``data`` (its task's)."""
    from spiking_attn.checkpoint import load_model
    from spiking_attn.graph import export_graph, torch_population_spikes
    from spiking_attn.hardware.fixed_point import emulate, peak_currents, quantize

    model = load_model(path)
    cue = data.context("test").get("cue")
    graph = export_graph(model, data.x_test, cue)
    _, torch_logits = torch_population_spikes(model, data.x_test, cue)
    cal = slice(0, CALIBRATION_SAMPLES)
    fixed = quantize(graph, peak_currents(export_graph(model, data.x_train[cal], data.context("train", cal).get("cue"))),
                     weight_bits)
    t0 = time.perf_counter()
    spikes = emulate(fixed)
    seconds = time.perf_counter() - t0
    fixed_logits = graph.readout.logits(spikes[graph.readout.source])
    labels = data.y_test.numpy()
    return {"samples": len(labels),
            "prediction_agreement": float((fixed_logits.argmax(1) == torch_logits.argmax(1)).mean()),
            "fixed_accuracy": float((fixed_logits.argmax(1) == labels).mean()),
            "float_accuracy": float((torch_logits.argmax(1) == labels).mean()),
            "emulator_steps_per_second": len(labels) * graph.timesteps / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--only", nargs="+", choices=list(MODELS))
    parser.add_argument("--weight-bits", type=int, nargs="+", default=[16, 8])
    parser.add_argument("--json")
    args = parser.parse_args()
    from spiking_attn.checkpoint import load_model
    from spiking_attn.data import load_task
    from spiking_attn.hardware.lava import deploy

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.samples} samples through Lava")
    rows = []
    for label, kw in MODELS.items():
        if args.only and label not in args.only:
            continue
        data = load_task(kw["task"])
        for seed in args.seeds:
            path = checkpoint(label, seed, kw, data)
            model = load_model(path)
            rows_ = slice(0, args.samples)
            x, cue, y = data.x_test[rows_], data.context("test", rows_).get("cue"), data.y_test[rows_].numpy()
            cal = slice(0, CALIBRATION_SAMPLES)
            calibration = (data.x_train[cal], data.context("train", cal).get("cue"))
            flt = deploy(model, x, cue, precision="float", labels=y)
            print(f"  {label:26s} seed {seed}: float: spike agreement {flt.spike_agreement():.4f}, "
                  f"Lava {flt.steps_per_second:.1f} steps/s", flush=True)
            for bits in args.weight_bits:
                fix = deploy(model, x, cue, precision="fixed", labels=y, calibration=calibration, weight_bits=bits)
                whole = whole_test_set(path, bits, data)
                row = {"model": label, "seed": seed, "weight_bits": bits,
                       "float_spike_agreement": flt.spike_agreement(), "fixed_spike_agreement": fix.spike_agreement(),
                       "fixed_prediction_agreement_lava": fix.prediction_agreement(),
                       "lava_steps_per_second": fix.steps_per_second, "cores": len(fix.mapping.cores),
                       "populations": len(fix.lava), "relays": len(fix.schedule.relays), **whole,
                       "emulator_speedup": whole["emulator_steps_per_second"] / fix.steps_per_second}
                rows.append(row)
                print(f"  {label:26s} seed {seed}: fixed {bits:2d}-bit weights: spike agreement with the emulator "
                      f"{row['fixed_spike_agreement']:.4f}; predictions agree with float on "
                      f"{row['prediction_agreement']:.4f} of {row['samples']} (accuracy {row['fixed_accuracy']:.4f} vs "
                      f"{row['float_accuracy']:.4f}); Lava {row['lava_steps_per_second']:.1f} steps/s, emulator "
                      f"{row['emulator_speedup']:.0f}x", flush=True)
    print()
    print(f"{'model':26s} {'bits':>4s} {'float spikes':>12s} {'fixed spikes':>12s} {'pred. agree mean (min)':>23s} "
          f"{'emulator x Lava mean (min)':>27s}")
    for label in MODELS:
        for bits in args.weight_bits:
            sel = [r for r in rows if r["model"] == label and r["weight_bits"] == bits]
            if not sel:
                continue
            print(f"{label:26s} {bits:4d} {min(r['float_spike_agreement'] for r in sel):12.4f} "
                  f"{min(r['fixed_spike_agreement'] for r in sel):12.4f} "
                  f"{np.mean([r['prediction_agreement'] for r in sel]):14.4f} ({min(r['prediction_agreement'] for r in sel):.4f}) "
                  f"{np.mean([r['emulator_speedup'] for r in sel]):18.0f}x ({min(r['emulator_speedup'] for r in sel):.0f}x)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
