"""Spiking attention block: forward + backward time and peak memory on CPU, side by side.

Compares, in one run and on the same input ([T, B, N, D] = [4, 32, 64, 128], SSA, 4 heads):
  * spiking-attn block, native engine (compiled fused LIF kernel, called as a torch operator);
  * the same with sparse products on (``native-sparse``: ``native_ops.set_sparse_products``, opt-in; every
    weight layer's forward product adds the weight rows its input spikes select, ``csrc/spike_linear.cpp``);
  * the same with fused BatchNorm on (``native-fused``: ``native_ops.set_fused_batchnorm``, opt-in; each
    BatchNorm that feeds a population runs with it as one operator, ``csrc/batchnorm_lif.cpp``), and with
    both options on (``native-fused-sparse``);
  * the same block with that operator off (``native-ctypes``: the same kernel through ctypes and a Python
    autograd.Function, the path before the operator existed);
  * spiking-attn block, spikingjelly engine (SpikingJelly's LIFNode inside our block);
  * a Spikformer-style block written only with SpikingJelly layers (layer.Conv1d, layer.BatchNorm1d,
    neuron.LIFNode, [T, B, C, N] layout, (Q K^T) V as in the published code).
A table then times one BatchNorm alone over the block's rows, torch's module against the fused option's
BatchNorm-alone kernel, with a broadcast gradient (as ``.sum().backward()`` gives the block's last
BatchNorms) and a dense one. The ``no-neurons`` row is our block with every population replaced by an identity: the products,
BatchNorms and attention arithmetic alone, which every variant computes too. Its speed-up over the
Spikformer block is the most that any neuron engine could give. The ``products-only`` row is the block's six
weight products alone (no BatchNorm, neurons or attention): the Spikformer block's time over it bounds what
any block with dense float32 products could reach. Then one LIF population alone (ours, SpikingJelly's LIFNode, snnTorch's Leaky); our population with
per-channel parameters, learned thresholds, modulation and an adaptive threshold, each against scalar
parameters; and token scaling of the attention module alone (SSA and SDSA, causal or not, each also with
the opt-in fused BatchNorm) for N in 64..2048, with the causal SSA product alone by path (the compiled scan the spiking attention runs, against
torch's products over blocks of tokens); ``--only scaling`` runs that part alone. Every table is timed round-robin (one step of each row in
turn, medians per row), so that a slow spell of this shared machine hits every row alike and the ratios
are taken within one spell.

    .venv/bin/python benchmarks/bench_attention_block.py [--repeats 10] [--json out.json]

Each peak-memory figure is measured in a fresh subprocess: the peak resident set size during three
forward+backward passes minus the resident size just before them.
"""
from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

T, B, N, D, HEADS = 4, 32, 64, 128, 4


class SpikformerReferenceBlock(nn.Module):
    """Spikformer's encoder block (SSA + MLP) written with SpikingJelly layers only."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        from spikingjelly.activation_based import layer, neuron

        def proj(cin, cout):
            return nn.Sequential(layer.Conv1d(cin, cout, 1, bias=False, step_mode="m"),
                                 layer.BatchNorm1d(cout, step_mode="m"))

        def lif(vth=1.0):
            return neuron.LIFNode(tau=2.0, v_threshold=vth, detach_reset=True, step_mode="m")

        self.heads, self.scale = heads, 0.125
        self.q, self.k, self.v = proj(dim, dim), proj(dim, dim), proj(dim, dim)
        self.q_lif, self.k_lif, self.v_lif, self.attn_lif = lif(), lif(), lif(), lif(0.5)
        self.out, self.out_lif = proj(dim, dim), lif()
        self.fc1, self.fc1_lif = proj(dim, 4 * dim), lif()
        self.fc2, self.fc2_lif = proj(4 * dim, dim), lif()

    def _heads(self, x):  # [T, B, C, N] -> [T, B, H, N, C/H]
        t, b, c, n = x.shape
        return x.reshape(t, b, self.heads, c // self.heads, n).transpose(-1, -2)

    def forward(self, x):  # x: spikes [T, B, C, N]
        from spikingjelly.activation_based import functional

        functional.reset_net(self)
        q = self._heads(self.q_lif(self.q(x)))
        k = self._heads(self.k_lif(self.k(x)))
        v = self._heads(self.v_lif(self.v(x)))
        attn = (q @ k.transpose(-2, -1)) * self.scale  # [T, B, H, N, N]
        y = (attn @ v).transpose(-1, -2).reshape(x.shape)  # [T, B, C, N]
        x = x + self.out_lif(self.out(self.attn_lif(y)))
        return x + self.fc2_lif(self.fc2(self.fc1_lif(self.fc1(x))))


def _switch(variant: str) -> None:
    """The operator settings of ``variant`` (the torch operator; the opt-in sparse products and fused BatchNorm)."""
    from spiking_attn import native_ops

    native_ops.set_enabled(variant != "native-ctypes")
    native_ops.set_sparse_products(variant in ("native-sparse", "native-fused-sparse"))
    native_ops.set_fused_batchnorm(variant in ("native-fused", "native-fused-sparse"))


def build(variant: str):
    """The block of ``variant`` and its input. ``native`` runs plain populations as the compiled torch operator
    (``native_ops``); ``native-ctypes`` is the same block with the operator off (the kernel through ctypes)."""
    from spiking_attn.block import SpikingTransformerBlock

    _switch(variant)
    if variant == "products-only":
        return ProductsOnly(D), torch.randn(T, B, N, D)

    if variant == "sj-spikformer":
        return SpikformerReferenceBlock(D, HEADS), (torch.rand(T, B, D, N) < 0.2).float()
    engine = "spikingjelly" if variant == "spikingjelly-engine" else "native"
    block = SpikingTransformerBlock(D, HEADS, kind="ssa", lif={"engine": engine})
    if variant == "no-neurons":  # the floor: every population an identity, the products and BatchNorms kept
        _remove_neurons(block)
    return block, torch.randn(T, B, N, D)


class ProductsOnly(nn.Module):
    """The block's six weight products alone (q, k, v, out: D x D; fc1: D x 4D; fc2: 4D x D) on its
    [T*B*N, D] rows, with nothing else: no BatchNorm, no neurons, no attention. Every variant computes these
    products, in float32, so the Spikformer block's time over this one bounds the speed-up of any block
    that keeps them dense."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.q, self.k, self.v, self.out = (nn.Linear(dim, dim, bias=False) for _ in range(4))
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim, bias=False), nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        h = x.reshape(-1, x.shape[-1])
        h = h + self.out(self.q(h) + self.k(h) + self.v(h))
        return (h + self.fc2(self.fc1(h))).reshape(x.shape)


class PassThrough(nn.Module):
    """A population's stand-in that returns its input (and ignores the modulation a population takes)."""

    def forward(self, x, gain=None, threshold_shift=None, return_membrane=False):
        return x


def _remove_neurons(model: nn.Module) -> None:
    """Replace every LIF population of ``model`` by ``PassThrough`` (what is left is the rest of the block's work)."""
    from spiking_attn.neuron import LIFPopulation

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LIFPopulation):
                setattr(parent, name, PassThrough())


def step(model, x):
    x = x.clone().requires_grad_()
    model(x).sum().backward()


def round_robin(cases: dict, repeats: int, rounds: int = 3, settle: int = 2, before=None) -> dict:
    """Median seconds of one forward+backward per case (name -> (model, x)), over ``repeats`` timed steps
    split into ``rounds`` rounds; in each round every case runs ``settle`` untimed steps, then its timed
    ones, before the next case. So a slow spell of this shared machine falls on several cases alike
    rather than on whichever ran during it, and the steps right after another case are not timed (a small
    step right after a large one runs slower for a step or two, the allocator and the operating system
    settling: see the README). ``before(name)``, if given, runs before each case's turn."""
    per_round = -(-repeats // rounds)  # (so rounds * per_round >= repeats steps are timed: timed_steps())
    times = {name: [] for name in cases}
    for _ in range(rounds):
        for name, (model, x) in cases.items():
            if before is not None:
                before(name)
            for _ in range(settle):
                step(model, x)
            for _ in range(per_round):
                t0 = time.perf_counter()
                step(model, x)
                times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(ts) for name, ts in times.items()}


def timed_steps(repeats: int, rounds: int = 3) -> str:
    """How ``round_robin`` times ``repeats``, for the tables' headers."""
    return f"median of {rounds * -(-repeats // rounds)} steps in {rounds} rounds, round-robin"


def time_variants(variants, repeats: int) -> dict:
    """Median seconds per block variant, round-robin (the torch operator switched for each step)."""
    from spiking_attn import native_ops

    cases = {}
    for v in variants:
        torch.manual_seed(0)
        cases[v] = build(v)
    try:
        return round_robin(cases, repeats, before=_switch)
    finally:
        native_ops.set_enabled(True)
        native_ops.set_sparse_products(False)
        native_ops.set_fused_batchnorm(False)


def _peak_rss_kib() -> int:
    """This process's peak resident size (VmHWM). Not getrusage's ru_maxrss: Linux carries that over from
    the parent through fork and exec, so a parent holding many models would set every child's figure."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


def peak_memory_child(variant: str) -> None:
    torch.manual_seed(0)
    model, x = build(variant)
    base = _rss_kib()
    for _ in range(3):
        step(model, x)
    print(json.dumps({"peak_mib": (_peak_rss_kib() - base) / 1024}))


def peak_memory(variant: str) -> float:
    proc = subprocess.run([sys.executable, __file__, "--memory-child", variant], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])["peak_mib"]


def lif_alone(repeats: int) -> dict:
    """One population over [T, B, N, 4D] = [4, 32, 64, 512]: ours, SpikingJelly's LIFNode, snnTorch's Leaky."""
    import snntorch
    from spikingjelly.activation_based import neuron

    from spiking_attn.neuron import LIFPopulation

    class SnnTorchLeaky(nn.Module):  # snnTorch steps in Python; beta = 1 - dv, reset to zero
        def __init__(self):
            super().__init__()
            self.cell = snntorch.Leaky(beta=0.5, threshold=1.0, reset_mechanism="zero")

        def forward(self, x):
            mem = self.cell.reset_mem()
            out = []
            for t in range(x.shape[0]):
                spk, mem = self.cell(x[t], mem)
                out.append(spk)
            return torch.stack(out)

    class SpikingJellyLIF(nn.Module):
        def __init__(self):
            super().__init__()
            self.node = neuron.LIFNode(tau=2.0, decay_input=False, v_reset=0.0, step_mode="m")

        def forward(self, x):
            self.node.reset()
            return self.node(x)

    x = torch.randn(T, B, N, 4 * D)
    models = {"native": LIFPopulation(), "spikingjelly LIFNode": SpikingJellyLIF(), "snntorch Leaky": SnnTorchLeaky()}
    times = round_robin({name: (model, x) for name, model in models.items()}, repeats)
    return {name: 1e3 * t for name, t in times.items()}


def lif_layouts(repeats: int) -> dict:
    """Our population over [T, B, N, 4D] with each parameter layout, timed round-robin; ms per layout."""
    from spiking_attn.neuron import LIFPopulation

    width = 4 * D
    channel = torch.linspace(0.5, 1.5, width)
    layouts = {
        "scalar parameters": (LIFPopulation(), {}),
        "per-channel vth, dv, bias": (LIFPopulation(vth=channel, dv=channel / 3, bias=channel / 100), {}),
        "learned scalar vth": (LIFPopulation(learn_threshold=True), {}),
        "learned per-channel vth": (LIFPopulation(learn_threshold=True, shape=(width,)), {}),
        "gain per sample": (LIFPopulation(), {"gain": torch.rand(B, 1, 1) + 0.5}),
        "threshold shift per channel": (LIFPopulation(), {"threshold_shift": channel - 1}),
        "adaptive threshold": (LIFPopulation(theta_decay=0.1, theta_step=0.5), {}),
        # the basal forebrain's modulation: learned, per step, sample and channel, gradients summed in the kernel
        "gain+shift per step/sample/channel": (LIFPopulation(), {
            "gain": (torch.rand(T, B, 1, width) + 0.5).requires_grad_(),
            "threshold_shift": (torch.randn(T, B, 1, width) * 0.1).requires_grad_()}),
    }
    x = torch.randn(T, B, N, width)

    def run(pop, kwargs):
        xs = x.clone().requires_grad_()
        pop(xs, **kwargs).sum().backward()

    for pop, kwargs in layouts.values():  # warm up
        run(pop, kwargs)
    times = {name: [] for name in layouts}
    for _ in range(repeats):
        for name, (pop, kwargs) in layouts.items():
            t0 = time.perf_counter()
            run(pop, kwargs)
            times[name].append(time.perf_counter() - t0)
    return {name: 1e3 * statistics.median(ts) for name, ts in times.items()}


def token_scaling(repeats: int) -> dict:
    """Median seconds of the attention module by kind and tokens; each kind also with the opt-in fused
    BatchNorm (``<kind> +fused``: ``native_ops.set_fused_batchnorm``)."""
    from spiking_attn import native_ops
    from spiking_attn.attention import SpikingSelfAttention

    results = {}
    for fused in (False, True):
        for label, kind, causal in (("ssa", "ssa", False), ("ssa-causal", "ssa", True), ("sdsa", "sdsa", False),
                                    ("sdsa-causal", "sdsa", True)):
            torch.manual_seed(0)
            attn = SpikingSelfAttention(D, HEADS, kind=kind, causal=causal)
            cases = {n: (attn, (torch.rand(T, 4, n, D) < 0.2).float()) for n in (64, 256, 1024, 2048)}
            previous = native_ops.set_fused_batchnorm(fused)
            try:  # the lengths in turn: a ratio within one spell
                results[label + (" +fused" if fused else "")] = round_robin(cases, repeats)
            finally:
                native_ops.set_fused_batchnorm(previous)
    return results


class CausalProduct(nn.Module):
    """The causal SSA product alone on stacked spikes ``[3, T, B, H, N, Dh]`` (q, k, v): ``blocks`` is
    ``attention.linear_attention_product`` (torch's products over blocks of 32 tokens), ``scan`` the
    compiled running-state scan (``native_ops.causal_scan``) that the spiking attention runs."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spiking_attn import native_ops
        from spiking_attn.attention import linear_attention_product

        q, k, v = x.unbind(0)
        return native_ops.causal_scan(q, k, v) if self.path == "scan" else linear_attention_product(q, k, v, True)


class BatchNormRows(nn.Module):
    """A training-mode ``nn.BatchNorm1d`` over rows ``[M, C]`` whose output is summed (``step``'s
    ``.sum().backward()``: the gradient arrives broadcast, with zero strides) or weighted by a fixed dense
    tensor (``dense``: a dense gradient); ``ours`` runs it through ``native_ops.batchnorm``."""

    def __init__(self, channels: int, ours: bool, dense: bool) -> None:
        super().__init__()
        self.bn, self.ours = nn.BatchNorm1d(channels), ours
        self.weight = torch.randn(B * N * T, channels) if dense else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from spiking_attn import native_ops

        y = native_ops.batchnorm(x, self.bn) if self.ours else self.bn(x)
        return y if self.weight is None else y * self.weight


def batchnorm_alone(repeats: int) -> dict:
    """Median seconds of one BatchNorm forward+backward over the block's rows [T*B*N, D], torch's module
    against the project's kernel (the fused BatchNorm option's BatchNorm-alone path), by gradient layout."""
    from spiking_attn import native_ops

    if native_ops.ops() is None:
        return {}
    previous = native_ops.set_fused_batchnorm(True)
    try:
        x = torch.randn(T * B * N, D)
        cases = {(who, grad): (BatchNormRows(D, who == "ours", grad == "dense"), x)
                 for who in ("torch", "ours") for grad in ("broadcast", "dense")}
        return round_robin(cases, repeats)
    finally:
        native_ops.set_fused_batchnorm(previous)


def print_batchnorm_alone(times: dict, repeats: int) -> None:
    if not times:
        return
    print(f"\nBatchNorm alone, forward+backward, [{T * B * N}, {D}] rows (ms, {timed_steps(repeats)})")
    print(f"{'gradient':12s} {'torch':>9s} {'ours':>9s} {'torch / ours':>13s}")
    for grad in ("broadcast", "dense"):
        t, o = times[("torch", grad)], times[("ours", grad)]
        print(f"{grad:12s} {1e3 * t:9.2f} {1e3 * o:9.2f} {t / o:12.2f}x")


PRODUCT_LENGTHS = (256, 1024, 2048)


def causal_product(repeats: int) -> dict:
    """Median seconds of the causal product's forward+backward by path and tokens (spikes at rate 0.2)."""
    from spiking_attn import native_ops

    if native_ops.ops() is None:
        return {}
    cases = {}
    for n in PRODUCT_LENGTHS:
        x = (torch.rand(3, T, 4, HEADS, n, D // HEADS, generator=torch.Generator().manual_seed(n)) < 0.2).float()
        for path in ("blocks", "scan"):
            cases[(path, n)] = (CausalProduct(path), x)
    times = round_robin(cases, repeats)
    return {path: {n: times[(path, n)] for n in PRODUCT_LENGTHS} for path in ("blocks", "scan")}


def print_causal_product(product: dict, repeats: int) -> None:
    if not product:
        print("\nCausal product: the torch operator is not built, so only the blocks exist")
        return
    print(f"\nCausal SSA product alone, forward+backward, [T, B, H, N, Dh] = [{T}, 4, {HEADS}, N, {D // HEADS}], "
          f"spikes at rate 0.2 (ms, {timed_steps(repeats)})")
    print(f"{'path':12s}" + "".join(f"{'N=' + str(n):>10s}" for n in PRODUCT_LENGTHS) + f"{'t(2048)/t(256)':>16s}")
    for path, row in product.items():
        print(f"{path:12s}" + "".join(f"{1e3 * t:10.2f}" for t in row.values()) + f"{row[2048] / row[256]:16.2f}")
    print(f"{'scan speed-up':12s}" + "".join(f"{product['blocks'][n] / product['scan'][n]:9.2f}x"
                                          for n in PRODUCT_LENGTHS))


def print_scaling(scaling: dict, repeats: int) -> None:
    print(f"\nAttention module forward+backward vs tokens, T={T} B=4 D={D} (ms, {timed_steps(repeats)})")
    print(f"{'kind':18s}" + "".join(f"{'N=' + str(n):>10s}" for n in (64, 256, 1024, 2048)) + f"{'t(2048)/t(256)':>16s}")
    for label, row in scaling.items():
        print(f"{label:18s}" + "".join(f"{1e3 * t:10.2f}" for t in row.values()) + f"{row[2048] / row[256]:16.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--only", choices=("block", "scaling"),
                        help="run one part: the block table (with peak memory), or the token scaling")
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be at least 1, got {args.repeats}")
    if args.memory_child:
        peak_memory_child(args.memory_child)
        return
    from spiking_attn.lif_kernel import kernel_status
    from spiking_attn.native_ops import status as operator_status

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, LIF kernel: {kernel_status()}, "
          f"torch operator: {operator_status()}")
    if args.only == "scaling":
        print_scaling(token_scaling(args.repeats), args.repeats)
        print_causal_product(causal_product(args.repeats), args.repeats)
        return
    print(f"\nBlock forward+backward, SSA, T={T} B={B} N={N} D={D} heads={HEADS} "
          f"({timed_steps(args.repeats)})")
    variants = ("native", "native-sparse", "native-fused", "native-fused-sparse", "native-ctypes",
                "spikingjelly-engine", "sj-spikformer", "no-neurons", "products-only")
    times = time_variants(variants, args.repeats)
    block = {v: {"ms": 1e3 * times[v], "peak_mib": peak_memory(v)} for v in variants}
    ref = block["sj-spikformer"]["ms"]
    print(f"{'variant':24s} {'time ms':>9s} {'peak MiB':>9s} {'speed-up vs sj-spikformer':>26s}")
    for v, r in block.items():
        print(f"{v:24s} {r['ms']:9.1f} {r['peak_mib']:9.0f} {ref / r['ms']:25.2f}x")
    batchnorm = batchnorm_alone(args.repeats)
    print_batchnorm_alone(batchnorm, args.repeats)
    batchnorm = {f"{who} {grad}": t for (who, grad), t in batchnorm.items()}
    if args.only == "block":
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"block": block, "batchnorm_alone_s": batchnorm}, f, indent=2)
        return
    print(f"\nOne LIF population forward+backward, [T, B, N, 4D] = [{T}, {B}, {N}, {4 * D}] "
          f"({timed_steps(args.repeats)})")
    lif = lif_alone(args.repeats)
    print(f"{'population':24s} {'time ms':>9s} {'native speed-up':>16s}")
    for name, ms in lif.items():
        print(f"{name:24s} {ms:9.1f} {ms / lif['native']:15.2f}x")
    print(f"\nOur population, forward+backward by parameter layout, [{T}, {B}, {N}, {4 * D}] "
          f"(median of {2 * args.repeats}, round-robin)")
    layouts = lif_layouts(2 * args.repeats)
    base = layouts["scalar parameters"]
    print(f"{'layout':34s} {'time ms':>9s} {'vs scalar':>10s}")
    for name, ms in layouts.items():
        print(f"{name:34s} {ms:9.2f} {ms / base:9.2f}x")
    scaling = token_scaling(args.repeats)
    print_scaling(scaling, args.repeats)
    product = causal_product(args.repeats)
    print_causal_product(product, args.repeats)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"block": block, "batchnorm_alone_s": batchnorm, "lif_ms": lif, "lif_layouts_ms": layouts, "token_scaling_s": scaling,
                       "causal_product_s": product}, f, indent=2)


if __name__ == "__main__":
    main()
