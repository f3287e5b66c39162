"""The LIF kernel alone: one population's forward and forward+backward, by path and thread count.

A population (scalar dv and vth, atan surrogate, T=4) of the sizes the default digits model and the
block benchmark use, timed through

  * the torch operator (``torch.ops.spiking_attn.lif``, what ``LIFPopulation`` calls for plain populations),
  * the ctypes path (the same C kernel through a Python autograd.Function; ``native_ops`` off),
  * the operator with a learned threshold and bias (the kernel's plain path, which then also sums their
    gradients per column),
  * the kernel's general path: the population with a per-channel threshold shift (of zeros, so the
    arithmetic is the same), which every population with modulation, an adaptive threshold, a decaying
    current or reset by subtraction takes (through ctypes),

each with torch limited to 1 thread and with all of them, round-robin within each thread count. Medians
in microseconds per call, the Python call through ``LIFPopulation`` included.

    .venv/bin/python benchmarks/bench_lif_kernel.py [--repeats 200]
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

SHAPES = {"[4, 64, 8, 64]": (4, 64, 8, 64), "[4, 64, 8, 256]": (4, 64, 8, 256), "[4, 32, 64, 512]": (4, 32, 64, 512)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=200)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    from spiking_attn import native_ops
    from spiking_attn.lif_kernel import kernel_status
    from spiking_attn.neuron import LIFPopulation

    threads_all = torch.get_num_threads()
    print(f"torch {torch.__version__}, LIF kernel: {kernel_status()}, torch operator: {native_ops.status()}")
    paths = {"operator": (True, False), "ctypes": (False, False), "learned vth and bias": (True, True),
             "general (shift)": (True, False)}
    print(f"{'shape':18s} {'threads':>7s} {'path':24s} {'forward us':>11s} {'fwd+bwd us':>11s}")
    for label, shape in SHAPES.items():
        x = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 1.5
        grad = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
        pops = {name: LIFPopulation(dv=0.5, vth=1.0, learn_threshold=learned, learn_bias=learned)
                for name, (_, learned) in paths.items()}
        shift = {name: {"threshold_shift": torch.zeros(shape[-1])} if name.startswith("general") else {}
                 for name in paths}
        for threads in sorted({1, threads_all}):
            torch.set_num_threads(threads)
            fwd = {name: [] for name in paths}
            both = {name: [] for name in paths}
            for r in range(args.repeats + 10):
                for name, (operator, _) in paths.items():
                    native_ops.set_enabled(operator)
                    with torch.no_grad():
                        t0 = time.perf_counter()
                        pops[name](x, **shift[name])
                        t1 = time.perf_counter()
                    xi = x.clone().requires_grad_()
                    t2 = time.perf_counter()
                    pops[name](xi, **shift[name]).backward(grad)
                    t3 = time.perf_counter()
                    if r >= 10:  # the first ten rounds warm up
                        fwd[name].append(t1 - t0)
                        both[name].append(t3 - t2)
            for name in paths:
                print(f"{label:18s} {threads:7d} {name:24s} {1e6 * statistics.median(fwd[name]):11.1f} "
                      f"{1e6 * statistics.median(both[name]):11.1f}")
    native_ops.set_enabled(True)
    torch.set_num_threads(threads_all)


if __name__ == "__main__":
    main()
