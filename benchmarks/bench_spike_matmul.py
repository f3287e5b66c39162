"""Does skipping the zeros of a spike matrix pay on the CPU? Dense ``mm`` against sparse products.

Every weight layer of the spiking classifier after the encoding layer reads spikes, so its forward
product ``S W^T`` and its weight gradient ``G^T S`` could skip the zeros of ``S``. This times, at the
digits classifier's sizes (``[T*B*N, D_in] = [2048, 64]`` or ``[2048, 256]``) and at firing rates
around the ones the trained model shows (0.08-0.45 per population; ``metrics.json`` of ``make demo``):

* ``dense``: ``torch.mm`` (the BLAS product every layer uses now);
* ``csr``: ``torch.sparse.mm`` with ``S`` in CSR form, the conversion included (it must happen on
  every call, since the spikes change);
* ``gather``: the rows of ``W^T`` picked by the nonzeros and summed with ``index_add_``;
* ``kernel``: ``native_ops.spike_linear`` (``csrc/spike_linear.cpp``, the forward product of the opt-in
  sparse products): the same gather and sum, compiled, per row in vector registers (the BLAS product
  above ``SPARSE_MAX_DENSITY``, so at 0.75 this column shows that switch). Also at the attention
  benchmark block's sizes (``[8192, 128]`` rows).

    .venv/bin/python benchmarks/bench_spike_matmul.py [--repeats 50] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

SHAPES = [(2048, 64, 64), (2048, 64, 256), (2048, 256, 64),  # (rows, in, out): q/k/v/out, fc1, fc2 of digits
          (8192, 128, 128), (8192, 128, 512), (8192, 512, 128)]  # and of bench_attention_block's block
RATES = [0.05, 0.1, 0.2, 0.3, 0.45, 0.75]


def timed(fn, repeats: int) -> float:
    """Median milliseconds of ``fn()`` over ``repeats`` calls, after three warm-up calls."""
    for _ in range(3):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def gather_product(s: torch.Tensor, wt: torch.Tensor) -> torch.Tensor:
    """``s @ wt`` from the nonzeros of ``s`` only: each nonzero adds its row of ``wt`` to its output row."""
    rows, cols = s.nonzero(as_tuple=True)
    out = torch.zeros(s.shape[0], wt.shape[1], dtype=wt.dtype)
    return out.index_add_(0, rows, wt[cols] * s[rows, cols, None])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; median ms of {args.repeats} calls")
    from spiking_attn import native_ops

    if native_ops.ops() is None:
        parser.error(f"the torch operator is not built ({native_ops.status()}); run make install")
    print(f"{'rows x in x out':16s} {'rate':>5s} {'dense':>7s} {'csr':>7s} {'gather':>7s} {'kernel':>7s} "
          f"{'dense/csr':>9s} {'dense/gather':>12s} {'dense/kernel':>12s}")
    g = torch.Generator().manual_seed(0)
    for rows, d_in, d_out in SHAPES:
        w = torch.randn(d_out, d_in, generator=g)
        wt = w.t().contiguous()
        for rate in RATES:
            s = (torch.rand(rows, d_in, generator=g) < rate).float()
            reference = s @ w.t()
            for product in (lambda: torch.sparse.mm(s.to_sparse_csr(), wt), lambda: gather_product(s, wt),
                            lambda: native_ops.spike_linear(s, w)):
                torch.testing.assert_close(product(), reference, rtol=1e-4, atol=1e-4)
            dense = timed(lambda: torch.mm(s, wt), args.repeats)
            csr = timed(lambda: torch.sparse.mm(s.to_sparse_csr(), wt), args.repeats)
            gather = timed(lambda: gather_product(s, wt), args.repeats)
            kernel = timed(lambda: native_ops.spike_linear(s, w), args.repeats)
            print(f"{rows}x{d_in}x{d_out:<8d} {rate:5.2f} {dense:7.3f} {csr:7.3f} {gather:7.3f} {kernel:7.3f} "
                  f"{dense / csr:8.2f}x {dense / gather:11.2f}x {dense / kernel:11.2f}x", flush=True)


if __name__ == "__main__":
    main()
