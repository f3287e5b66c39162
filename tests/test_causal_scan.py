"""Causal linear attention as a compiled running-state scan (csrc/causal_scan.cpp, native_ops.causal_scan):
exactly the masked quadratic product on spikes, autograd's gradients up to rounding, and the path the
spiking attention takes when the operator is loaded."""
import multiprocessing

import pytest
import torch

from spiking_attn import attention, native_ops
from spiking_attn.attention import SpikingSelfAttention, linear_attention_product, spike_attention_product


@pytest.fixture
def op_switch():
    previous = native_ops.set_enabled(True)
    yield native_ops.set_enabled
    native_ops.set_enabled(previous)


def spikes(*shape, p=0.25, dtype=torch.float32, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).to(dtype)


def masked_quadratic(q, k, v):
    n = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), 0.0)
    return scores @ v


def scan(q, k, v):
    assert native_ops.scan_eligible(q, k, v)
    return native_ops.causal_scan(q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1, 8, 8), (2, 3, 4, 7, 16, 12), (4, 2, 2, 300, 32, 32), (3, 5, 0, 4, 4),
                                   (2, 65, 9, 3)])
def test_scan_equals_the_masked_quadratic_product_exactly_on_spikes(op_switch, dtype, shape):
    *lead, n, dk = shape[:-1] if len(shape) == 6 else shape
    dv = shape[-1] if len(shape) == 6 else dk
    for p in (0.05, 0.25, 0.6, 1.0):  # sparse to all-active: the zero skipping must not change a sum
        q, k = spikes(*lead, n, dk, p=p, dtype=dtype, seed=1), spikes(*lead, n, dk, p=p, dtype=dtype, seed=2)
        v = spikes(*lead, n, dv, p=p, dtype=dtype, seed=3)
        out = scan(q, k, v)
        assert out.shape == (*lead, n, dv) and out.dtype == dtype
        assert torch.equal(out, masked_quadratic(q, k, v))
        assert torch.equal(out, linear_attention_product(q, k, v, causal=True))


def test_scan_with_empty_key_width_gives_zeros(op_switch):
    q, v = torch.ones(2, 40, 0, requires_grad=True), torch.ones(2, 40, 5, requires_grad=True)
    out = scan(q, q, v)
    assert torch.equal(out, torch.zeros(2, 40, 5))
    (gv,) = torch.autograd.grad(out.sum(), v)
    assert torch.equal(gv, torch.zeros(2, 40, 5))


def test_scan_reads_non_contiguous_heads(op_switch):
    # the attention passes head views ([..., H, N, Dh] transposed out of [..., N, D])
    x = [spikes(2, 3, 40, 24, seed=s) for s in range(3)]
    q, k, v = (attention._split_heads(t, 3) for t in x)
    assert not q.is_contiguous()
    assert torch.equal(scan(q, k, v), masked_quadratic(q, k, v))


@pytest.mark.parametrize("needs", [(True, True, True), (True, False, False), (False, True, False), (False, False, True),
                                   (False, True, True), (True, True, False), (True, False, True)])
def test_scan_gradients_match_autograd_of_the_quadratic_form(op_switch, needs):
    torch.manual_seed(0)
    for q0, k0, v0 in ((spikes(2, 3, 37, 8, dtype=torch.float64, seed=4), spikes(2, 3, 37, 8, dtype=torch.float64, seed=5),
                        spikes(2, 3, 37, 5, dtype=torch.float64, seed=6)),
                       (torch.randn(2, 3, 37, 8, dtype=torch.float64), torch.randn(2, 3, 37, 8, dtype=torch.float64),
                        torch.randn(2, 3, 37, 5, dtype=torch.float64))):  # any values: only speed needs zeros
        weights = torch.randn(2, 3, 37, 5, dtype=torch.float64)
        grads = []
        for fn in (scan, masked_quadratic):
            ins = [t.clone().requires_grad_(need) for t, need in zip((q0, k0, v0), needs)]
            out = fn(*ins)
            wanted = [t for t in ins if t.requires_grad]
            grads.append(torch.autograd.grad((out * weights).sum(), wanted))
            if fn is scan:
                torch.testing.assert_close(out, masked_quadratic(q0, k0, v0), rtol=1e-12, atol=1e-10)
        for ours, ref in zip(*grads):
            torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-10)


def test_scan_gradients_in_float32(op_switch):
    q, k, v = (spikes(4, 2, 4, 256, 16, seed=s).requires_grad_() for s in range(3))
    weights = torch.randn(4, 2, 4, 256, 16, generator=torch.Generator().manual_seed(9))
    ours = torch.autograd.grad((scan(q, k, v) * weights).sum(), (q, k, v))
    ref = torch.autograd.grad((masked_quadratic(q, k, v) * weights).sum(), (q, k, v))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-4)


def test_scan_rejects_mismatched_operands_and_second_order(op_switch):
    q, k, v = spikes(2, 5, 4), spikes(2, 5, 4), spikes(2, 5, 3)
    assert not native_ops.scan_eligible(q, spikes(2, 6, 4), v)
    assert not native_ops.scan_eligible(q, k, spikes(2, 6, 3))
    assert not native_ops.scan_eligible(q, k, v.double())
    assert not native_ops.scan_eligible(q.to(torch.int64), k.to(torch.int64), v.to(torch.int64))
    ops = torch.ops.spiking_attn
    with pytest.raises(RuntimeError, match="q and k must have one shape"):
        ops.causal_scan(q, spikes(2, 6, 4), v)
    with pytest.raises(RuntimeError, match="v must match q"):
        ops.causal_scan(q, k, spikes(2, 6, 3))
    with pytest.raises(RuntimeError, match="one dtype"):
        ops.causal_scan(q, k, v.double())
    qg = q.clone().requires_grad_()
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(scan(qg, k, v).sum(), qg, create_graph=True)


def test_spikingjelly_engine_keeps_second_order_gradients_of_causal_ssa(op_switch, monkeypatch):
    monkeypatch.setattr(native_ops, "causal_scan", lambda *a: pytest.fail("the scan ran"))
    attn = SpikingSelfAttention(8, heads=2, kind="ssa", causal=True, lif={"engine": "spikingjelly"}).double()
    x = spikes(2, 1, 40, 8, dtype=torch.float64, p=0.5).requires_grad_()  # beyond one block: the scan's range
    (g,) = torch.autograd.grad(attn(x).pow(2).sum(), x, create_graph=True)
    assert g.requires_grad


def test_spiking_causal_ssa_takes_the_scan_and_gives_the_blocks_result(op_switch, monkeypatch):
    calls = []
    real = native_ops.causal_scan
    monkeypatch.setattr(native_ops, "causal_scan", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    attn = SpikingSelfAttention(32, heads=4, kind="ssa", causal=True)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(attn, name).linear.weight.mul_(4.0)  # enough input that the populations fire
    x = spikes(4, 3, 70, 32, p=0.3, seed=7)
    results = []
    for enabled in (True, False):
        op_switch(enabled)
        xi = x.clone().requires_grad_()
        routed = attn.route(xi)
        routed.sum().backward()
        results.append((routed, xi.grad, {n: p.grad.clone() for n, p in attn.named_parameters() if p.grad is not None}))
        attn.zero_grad()
    assert calls == [1]  # once, with the operator on; never with it off
    (r1, gx1, p1), (r2, gx2, p2) = results
    assert r1.sum() > 0 and torch.equal(r1, r2)  # the routed spikes: identical (integer sums)
    torch.testing.assert_close(gx1, gx2, rtol=1e-4, atol=1e-5)
    assert p1.keys() == p2.keys() and len(p1) >= 6  # q, k, v weights and BatchNorms
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], rtol=1e-4, atol=1e-5)
    # not causal, or one block of tokens (where the block's masked product is faster), keep torch's products
    op_switch(True)
    assert spike_attention_product(*(spikes(2, 40, 4, seed=s) for s in range(3)), causal=False).shape == (2, 40, 4)
    n = attention.CAUSAL_CHUNK
    q, k, v = (spikes(2, n, 4, seed=s) for s in range(3))
    assert torch.equal(spike_attention_product(q, k, v, causal=True), masked_quadratic(q, k, v))
    assert calls == [1]
    q, k, v = (spikes(2, n + 1, 4, seed=s) for s in range(3))
    assert torch.equal(spike_attention_product(q, k, v, causal=True), masked_quadratic(q, k, v))
    assert calls == [1, 1]


def _scan_total(n):
    q, k, v = (spikes(8, 4, n, 16, seed=s) for s in range(3))
    return float(native_ops.causal_scan(q, k, v).sum())


def test_scan_runs_in_a_forked_child(op_switch):
    # the scan splits heads on torch's OpenMP pool, which a forked child does not have (see test_native_ops)
    expected = _scan_total(512)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_scan_total, (512,)).get(timeout=60) == expected


def test_attention_with_its_populations_replaced_still_runs(op_switch):
    # the benchmarks' no-neurons block and converted models put other modules where the populations were
    class Binarise(torch.nn.Module):
        def forward(self, x, gain=None, threshold_shift=None):
            return (x > 0).to(x.dtype)

    attn = SpikingSelfAttention(16, heads=2, kind="ssa", causal=True)
    for name in ("q_lif", "k_lif", "v_lif"):
        setattr(attn, name, Binarise())
    x = spikes(2, 1, 40, 16, seed=11)
    assert attn(x).shape == (2, 1, 40, 16)
