"""End-to-end training time on the digits: this library against the same network in SpikingJelly and in snnTorch.

The network is the default spiking classifier (T=4, D=64, 2 SDSA blocks, MLP ratio 4, the digits task's 8
tokens of 40 pixels, each a window of 5 rows):
encoding layer (Linear + BatchNorm) plus positions, then per block ``x = x + Attn(LIF(x))`` and
``x = x + MLP(LIF(x))``, then a LIF and the head, logits averaged over steps and tokens. SDSA is
``kv = LIF(sum_tokens K*V)``, ``Q*kv``. Every LIF is the same neuron: ``v = v/2 + x``, threshold 1 (0.5 after
the token sum), reset to zero. The three versions differ only in who runs the neurons and the layout:

* ``spiking-attn``: ``build_model`` with the library's native engine (``[T, B, N, D]``), its populations run
  as the compiled torch operator (``native_ops``);
* ``spiking-attn (ctypes)``: the same with that operator off: the same kernel through ctypes and a Python
  ``autograd.Function`` (the path before the operator existed), to show what the operator buys;
* ``spiking-attn (sparse)``: the first with the opt-in sparse products on (``native_ops.set_sparse_products``:
  every weight layer's forward product adds the weight rows its input spikes select; off by default, since
  rounding then differs from the BLAS product's); the peers' rows keep the BLAS products;
* ``spiking-attn (fused)``: the first with the opt-in fused BatchNorm on (``native_ops.set_fused_batchnorm``:
  each training-mode BatchNorm runs in the project's kernel, fused with the population it feeds where one
  does; off by default for the same reason); the peers' rows keep ``nn.BatchNorm1d``;
* ``spikingjelly``: ``neuron.LIFNode(tau=2, decay_input=False, v_reset=0, step_mode='m')`` (2.0.0 runs it in
  torch on the CPU), with the library's ``LinearBN`` (``nn.Linear`` + ``nn.BatchNorm1d`` over the folded ``[T*B*N, D]``
  batch), so the weight layers are the same code in all three;
* ``snntorch``: ``snn.Leaky(beta=0.5, reset_mechanism='zero')`` stepped over T in Python.

A fourth row, ``no-neurons``, is the same network with every population an identity: the weight layers,
BatchNorms, attention arithmetic and optimiser alone, which all three versions compute. The peers'
time over it is the most that any neuron engine could gain on them.

Each is trained with the same loop (AdamW, lr 6e-3, batch 64, the same batch order) for ``--epochs``
epochs, ``--repeats`` times, one after the other; the table gives min / median / max seconds per epoch
and the ratio of the peers' medians to ours. The per-iteration block figure is in
``bench_attention_block.py``.

    .venv/bin/python benchmarks/bench_end_to_end.py [--epochs 2] [--repeats 3] [--json out.json] [--compile]

With ``--compile`` every model runs under ``torch.compile`` (inductor, CPU). Our native engine then runs
``lif_step`` in torch ops (the kernel is opaque to the tracer), so our model compiles into one graph.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
from torch import nn
from torch.nn import functional as F

from spiking_attn.layers import LinearBN

T, DIM, DEPTH, HEADS, MLP = 4, 64, 2, 4, 4


class PeerClassifier(nn.Module):
    """The default classifier with ``lif(vth)`` making every population ([T, B, ...] in, spikes out)."""

    def __init__(self, lif, in_features: int, tokens: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.embed, self.pos = LinearBN(in_features, DIM), nn.Parameter(torch.zeros(tokens, DIM))
        self.blocks = nn.ModuleList()
        for _ in range(DEPTH):
            self.blocks.append(nn.ModuleDict({
                "pre_attn": lif(1.0), "q": LinearBN(DIM, DIM), "k": LinearBN(DIM, DIM), "v": LinearBN(DIM, DIM),
                "q_lif": lif(1.0), "k_lif": lif(1.0), "v_lif": lif(1.0), "kv_lif": lif(0.5), "out": LinearBN(DIM, DIM),
                "pre_mlp": lif(1.0), "fc1": LinearBN(DIM, MLP * DIM), "fc1_lif": lif(1.0), "fc2": LinearBN(MLP * DIM, DIM)}))
        self.head_lif, self.head = lif(1.0), nn.Linear(DIM, classes)

    def forward(self, x):  # x [B, N, F]
        h = self.embed(x.unsqueeze(0).expand(T, *x.shape)) + self.pos  # [T, B, N, D]
        for b in self.blocks:
            s = b["pre_attn"](h)
            q, k, v = b["q_lif"](b["q"](s)), b["k_lif"](b["k"](s)), b["v_lif"](b["v"](s))
            kv = b["kv_lif"]((k * v).sum(dim=-2, keepdim=True))
            h = h + b["out"](q * kv)
            h = h + b["fc2"](b["fc1_lif"](b["fc1"](b["pre_mlp"](h))))
        return self.head(self.head_lif(h)).mean(dim=(0, 2))


def spikingjelly_lif(vth: float) -> nn.Module:
    from spikingjelly.activation_based import neuron

    class Node(nn.Module):
        def __init__(self):
            super().__init__()
            self.node = neuron.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, v_threshold=vth, step_mode="m")

        def forward(self, x):
            self.node.reset()
            return self.node(x)

    return Node()


def snntorch_lif(vth: float) -> nn.Module:
    import snntorch

    class Node(nn.Module):
        def __init__(self):
            super().__init__()
            self.cell = snntorch.Leaky(beta=0.5, threshold=vth, reset_mechanism="zero")

        def forward(self, x):
            mem, out = self.cell.reset_mem(), []
            for t in range(x.shape[0]):
                spk, mem = self.cell(x[t], mem)
                out.append(spk)
            return torch.stack(out)

    return Node()


def build(name: str, in_features: int) -> nn.Module:
    torch.manual_seed(0)
    if name.startswith("spiking-attn"):
        from spiking_attn.models import ModelConfig, build_model

        return build_model(ModelConfig(in_features=in_features, num_tokens=8, num_classes=10, dim=DIM, depth=DEPTH,
                                       heads=HEADS, timesteps=T, attention="sdsa"))
    if name == "no-neurons":  # the floor: every population an identity; the weight layers and the rest kept
        return PeerClassifier(lambda vth: nn.Identity(), in_features)
    return PeerClassifier(spikingjelly_lif if name == "spikingjelly" else snntorch_lif, in_features)


def epoch_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epoch: int) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=6e-3, weight_decay=0.01, foreach=True)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
    model.train()
    t0 = time.perf_counter()
    for start in range(0, len(order), 64):
        idx = order[start:start + 64]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2, help="epochs per repetition (default 2)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--compile", action="store_true",
                        help="wrap every model in torch.compile (the warm-up is then a whole epoch, so that both "
                             "batch shapes are compiled before timing)")
    args = parser.parse_args()
    from spiking_attn.data import load_task
    from spiking_attn import native_ops
    from spiking_attn.lif_kernel import kernel_status

    data = load_task("digits")
    names = ("spiking-attn", "spiking-attn (ctypes)", "spiking-attn (sparse)", "spiking-attn (fused)", "spikingjelly",
             "snntorch", "no-neurons")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LIF kernel: {kernel_status()}, "
          f"torch operator: {native_ops.status()}{', torch.compile' if args.compile else ''}; "
          f"digits, {len(data.x_train)} training samples, batch 64, {args.epochs} epoch(s) x {args.repeats}")
    times = {n: [] for n in names}
    for r in range(args.repeats):  # round-robin, so that machine noise hits every library alike
        for n in names:
            native_ops.set_enabled(n != "spiking-attn (ctypes)")
            native_ops.set_sparse_products(n == "spiking-attn (sparse)")
            native_ops.set_fused_batchnorm(n == "spiking-attn (fused)")
            model = build(n, data.in_features)
            if args.compile:
                model = torch.compile(model)
                epoch_seconds(model, data.x_train, data.y_train, -1)  # compiles both batch shapes
            else:
                epoch_seconds(model, data.x_train[:128], data.y_train[:128], -1)  # warm-up (kernel load, allocator)
            times[n] += [epoch_seconds(model, data.x_train, data.y_train, e) for e in range(args.epochs)]
    native_ops.set_sparse_products(False)
    native_ops.set_fused_batchnorm(False)
    ours = statistics.median(times["spiking-attn"])
    print(f"{'library':22s} {'min s':>7s} {'median s':>9s} {'max s':>7s} {'median / ours':>14s}")
    for n in names:
        ts = times[n]
        print(f"{n:22s} {min(ts):7.2f} {statistics.median(ts):9.2f} {max(ts):7.2f} {statistics.median(ts) / ours:13.2f}x")
    floor = statistics.median(times["no-neurons"])
    print("ceiling (peer / no-neurons, the most any neuron engine could gain): " + ", ".join(
        f"{n} {statistics.median(times[n]) / floor:.2f}x" for n in ("spikingjelly", "snntorch")))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(times, f, indent=2)


if __name__ == "__main__":
    main()
