"""Weight products that skip the zeros of their input (csrc/spike_linear.cpp, native_ops.spike_linear), and the
opt-in switch that sends every LinearBN through them (native_ops.set_sparse_products)."""
import multiprocessing

import pytest
import torch

from spiking_attn import native_ops
from spiking_attn.block import SpikingTransformerBlock
from spiking_attn.layers import LinearBN


@pytest.fixture
def sparse():
    previous_ops = native_ops.set_enabled(True)
    previous = native_ops.set_sparse_products(True)
    assert native_ops.ops() is not None  # built by the Makefile's install step
    yield native_ops.set_sparse_products
    native_ops.set_sparse_products(previous)
    native_ops.set_enabled(previous_ops)


def spikes(*shape, p=0.2, dtype=torch.float32, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).to(dtype)


def sequential_sum(x, w):
    """Each output as the kernel sums it: the selected weights added in increasing input position (float64
    of exact partial sums would hide an order error, so the reference adds in the working dtype)."""
    out = torch.zeros(x.shape[0], w.shape[0], dtype=x.dtype)
    for k in range(x.shape[1]):
        out = out + x[:, k:k + 1] * w[:, k]
    return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1, 1, 1), (37, 5, 3), (300, 64, 64), (129, 33, 257), (64, 200, 100), (0, 8, 4)])
def test_sparse_forward_sums_the_selected_weights_in_input_order(sparse, dtype, shape):
    m, k, n = shape
    w = torch.randn(n, k, dtype=dtype, generator=torch.Generator().manual_seed(1))
    for p in (0.0, 0.1, 0.3):
        x = spikes(m, k, p=p, dtype=dtype, seed=2)
        y = native_ops.spike_linear(x, w)
        assert y.shape == (m, n) and y.dtype == dtype
        assert torch.equal(y, sequential_sum(x, w))  # output tiles of 64/16/1 columns, all in one order
        torch.testing.assert_close(y, x @ w.t())
    graded = spikes(m, k, p=0.3, dtype=dtype, seed=3) * torch.rand(m, k, dtype=dtype, generator=torch.Generator().manual_seed(4))
    torch.testing.assert_close(native_ops.spike_linear(graded, w), graded @ w.t())  # any values, not only spikes


def test_dense_input_takes_the_blas_product(sparse):
    x = torch.randn(200, 48, generator=torch.Generator().manual_seed(5))  # every entry nonzero
    w = torch.randn(24, 48, generator=torch.Generator().manual_seed(6))
    assert torch.equal(native_ops.spike_linear(x, w), torch.mm(x, w.t()))


def test_result_does_not_depend_on_the_thread_count(sparse):
    x, w = spikes(4096, 128, seed=7), torch.randn(96, 128, generator=torch.Generator().manual_seed(8))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = native_ops.spike_linear(x, w)
        torch.set_num_threads(2)
        assert torch.equal(native_ops.spike_linear(x, w), one)
    finally:
        torch.set_num_threads(threads)


def test_gradients_are_the_blas_products(sparse):
    x = spikes(70, 40, seed=9, dtype=torch.float64).requires_grad_()
    w = torch.randn(30, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(10), requires_grad=True)
    g = torch.randn(70, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    gx, gw = torch.autograd.grad(native_ops.spike_linear(x, w), (x, w), g)
    assert torch.equal(gx, g @ w.detach()) and torch.equal(gw, g.t() @ x.detach())
    (only_w,) = torch.autograd.grad(native_ops.spike_linear(x.detach(), w), (w,), g)
    assert torch.equal(only_w, gw)
    small = (x[:6, :5].detach().requires_grad_(), w[:4, :5].detach().requires_grad_())
    assert torch.autograd.gradcheck(native_ops.spike_linear, small)
    assert torch.autograd.gradgradcheck(native_ops.spike_linear, small)
    transposed = (x[:5, :6].detach().t().requires_grad_(), w[:4, :5].detach().requires_grad_())  # a copied input
    assert not transposed[0].is_contiguous()
    assert torch.autograd.gradgradcheck(native_ops.spike_linear, transposed)


def test_operator_rejects_bad_operands(sparse):
    op = torch.ops.spiking_attn.spike_linear
    with pytest.raises(RuntimeError, match=r"x must be \[M, K\] and w \[N, K\]"):
        op(spikes(3, 4), torch.randn(2, 5), 0.5)
    with pytest.raises(RuntimeError, match="one dtype"):
        op(spikes(3, 4), torch.randn(2, 4, dtype=torch.float64), 0.5)
    assert not native_ops.spike_linear_eligible(spikes(2, 3, 4), torch.randn(5, 4))
    assert not native_ops.spike_linear_eligible(spikes(3, 4), torch.randn(5, 4, dtype=torch.float64))


def test_switch_is_off_by_default_and_names_its_argument(sparse):
    sparse(False)
    assert not native_ops.spike_linear_eligible(spikes(3, 4), torch.randn(5, 4))
    with pytest.raises(TypeError, match="enabled"):
        native_ops.set_sparse_products("yes")


def test_linear_bn_and_a_block_give_the_same_results_to_rounding(sparse, monkeypatch):
    calls = []
    real = native_ops.spike_linear
    monkeypatch.setattr(native_ops, "spike_linear", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(0)
    block = SpikingTransformerBlock(32, 4, kind="ssa")
    x = torch.randn(4, 3, 10, 32, generator=torch.Generator().manual_seed(12)) * 2
    results = []
    for enabled in (True, False):
        sparse(enabled)
        xi = x.clone().requires_grad_()
        out = block(xi)
        out.sum().backward()
        results.append((out, xi.grad, {n: p.grad.clone() for n, p in block.named_parameters() if p.grad is not None}))
        block.zero_grad()
    assert len(calls) == 6  # q, k, v, out, fc1, fc2: once each, with the switch on
    (o1, g1, p1), (o2, g2, p2) = results
    # spikes can flip where a membrane lies within rounding of its threshold; none do in this small block
    torch.testing.assert_close(o1, o2, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
    for name in p1:
        torch.testing.assert_close(p1[name], p2[name], rtol=1e-4, atol=1e-4)
    layer = LinearBN(16, 8).eval()
    s = spikes(5, 7, 16, seed=13)
    sparse(True)
    on = layer(s)
    sparse(False)
    torch.testing.assert_close(on, layer(s))


def test_hooked_layers_are_called_as_usual(sparse, monkeypatch):
    # the operation counter and the spike-driven report hook nn.Linear: they must see every layer
    from spiking_attn.models import ModelConfig, build_model
    from spiking_attn.spike_driven import spike_driven_report

    monkeypatch.setattr(native_ops, "spike_linear", lambda *a: pytest.fail("a hooked layer took the sparse product"))
    model = build_model(ModelConfig(in_features=8, num_tokens=6, num_classes=3, dim=16, depth=1, heads=2)).eval()
    report = spike_driven_report(model, torch.rand(4, 6, 8))
    assert report.non_binary == ["embed.linear"]
    monkeypatch.undo()  # one hooked layer: it is called, the others take the sparse product
    calls = []
    real = native_ops.spike_linear
    monkeypatch.setattr(native_ops, "spike_linear", lambda *a: calls.append(1) or real(*a))
    seen = []
    handle = model.blocks[0].attn.q.linear.register_forward_hook(lambda *a: seen.append(1))
    model(torch.rand(4, 6, 8))
    handle.remove()
    assert seen == [1] and len(calls) >= 5  # k, v, out, fc1, fc2 (and the head's layers, if any)


def _product_total(n):
    x, w = spikes(n, 64, seed=14), torch.randn(64, 64, generator=torch.Generator().manual_seed(15))
    return native_ops.spike_linear(x, w).numpy()  # (a torch sum's order depends on the thread count)


def test_operator_runs_in_a_forked_child(sparse):
    expected = _product_total(8192)  # rows split over torch's pool in the parent
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert (pool.apply_async(_product_total, (8192,)).get(timeout=60) == expected).all()


TINY = dict(task="cue", dim=16, depth=1, heads=2, timesteps=2, epochs=1, progress=False, figures=False)


def test_train_sets_sparse_products_for_its_run_in_every_process(tmp_path):
    from spiking_attn.errors import DTypeError
    from spiking_attn.training import train

    assert not native_ops.sparse_products_enabled()
    assert train(**TINY, out=tmp_path / "off")["sparse_products"] is False
    assert train(**TINY, out=tmp_path / "on", sparse_products=True)["sparse_products"] is True
    assert not native_ops.sparse_products_enabled()  # the run's setting ends with it
    two = train(**TINY, out=tmp_path / "two", sparse_products=True, nproc=2)
    assert two["sparse_products"] is True and two["nproc"] == 2  # rank 0's own setting, in its own process
    with pytest.raises(DTypeError, match="sparse_products"):
        train(**TINY, out=tmp_path / "bad", sparse_products="yes")


def test_command_line_flag_reaches_metrics(tmp_path):
    import json

    from spiking_attn.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--task", "cue", "--dim", "16", "--depth", "1", "--heads", "2", "-T", "2", "--epochs", "1",
                 "--no-progress", "--sparse-products", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["sparse_products"] is True
    assert not native_ops.sparse_products_enabled()
