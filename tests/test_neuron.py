import math

import pytest
import torch

from spiking_attn.errors import DTypeError, NonFiniteError, ShapeError, SpikingAttnError
from spiking_attn.neuron import LIFPopulation, lif_reference, lif_sequence
from spiking_attn.surrogate import get_surrogate


class _Heaviside(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, surrogate):
        ctx.save_for_backward(x)
        ctx.surrogate = surrogate
        return (x > 0).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        (x,) = ctx.saved_tensors
        return g * ctx.surrogate.grad(x), None


def autograd_lif(x, du, dv, vth, bias, surrogate, detach_reset=False):
    """Step-by-step LIF built from autograd ops: the ground truth for the fused backward."""
    u = torch.zeros_like(x[0])
    v = torch.zeros_like(x[0])
    out = []
    for t in range(x.shape[0]):
        u = u * (1 - du) + x[t]
        h = v * (1 - dv) + u + bias
        s = _Heaviside.apply(h - vth, surrogate)
        v = h * (1 - (s.detach() if detach_reset else s))
        out.append(s)
    return torch.stack(out)


def test_known_voltages_step_by_step():
    # du=1, dv=0.5, vth=1: h = 0.6, 0.9, 1.05 (spike, reset), 0.6, 0.9, 1.05 (spike)
    x = torch.full((6, 1), 0.6)
    spikes, _, v = lif_reference(x, du=1.0, dv=0.5, vth=1.0)
    assert spikes.flatten().tolist() == [0, 0, 1, 0, 0, 1]
    assert v.flatten().tolist() == pytest.approx([0.6, 0.9, 0.0, 0.6, 0.9, 0.0])
    pop = LIFPopulation(du=1.0, dv=0.5, vth=1.0)
    assert pop(x).flatten().tolist() == [0, 0, 1, 0, 0, 1]


def test_current_decay_matches_reference():
    x = torch.randn(8, 3, 5)
    ref, _, _ = lif_reference(x, du=0.3, dv=0.2, vth=0.7, bias=0.05)
    pop = LIFPopulation(du=0.3, dv=0.2, vth=0.7, bias=0.05)
    assert torch.equal(pop(x), ref.float())


def test_current_decay_known_values():
    # du=0.5: u = 1, 0.5, 0.25; dv=0 (no leak), vth=1.6: h = 1, 1.5, 1.75 -> spike at step 3
    x = torch.tensor([[1.0], [0.0], [0.0]])
    spikes, u, _ = lif_reference(x, du=0.5, dv=0.0, vth=1.6)
    assert u.flatten().tolist() == pytest.approx([1.0, 0.5, 0.25])
    assert spikes.flatten().tolist() == [0, 0, 1]
    assert LIFPopulation(du=0.5, dv=0.0, vth=1.6)(x).flatten().tolist() == [0, 0, 1]


def test_threshold_is_strict():
    x = torch.ones(3, 2)  # h == vth exactly at step 1
    assert LIFPopulation(dv=1.0, vth=1.0)(x).sum() == 0
    assert LIFPopulation(dv=0.5, vth=1.0, engine="spikingjelly")(torch.ones(1, 2)).sum() == 0


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid"])
@pytest.mark.parametrize("detach_reset", [False, True])
def test_native_and_spikingjelly_engines_agree(surrogate, detach_reset):
    x = torch.randn(6, 4, 7, 16) * 1.5
    kw = dict(dv=0.25, vth=0.8, surrogate=surrogate, detach_reset=detach_reset)
    native, sj = LIFPopulation(**kw), LIFPopulation(**kw, engine="spikingjelly")
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    sa, sb = native(xa), sj(xb)
    weight = torch.randn_like(x)
    (sa * weight).sum().backward()
    (sb * weight).sum().backward()
    assert torch.equal(sa, sb)
    assert 0.05 < float(sa.detach().mean()) < 0.6  # a meaningful test: neurons do fire, and not always
    torch.testing.assert_close(xa.grad, xb.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("surrogate", ["atan", "sigmoid", "fast_sigmoid"])
@pytest.mark.parametrize("du", [1.0, 0.4])
@pytest.mark.parametrize("detach_reset", [False, True])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])  # float32 runs the compiled kernel
def test_fused_backward_matches_autograd(surrogate, du, detach_reset, dtype):
    x = torch.randn(5, 3, 11, dtype=dtype) * 1.2
    sg = get_surrogate(surrogate)
    params = {k: torch.tensor(v, dtype=dtype, requires_grad=True)
              for k, v in dict(du=du, dv=0.3, vth=0.9, bias=0.1).items()}
    ref_params = {k: p.detach().clone().requires_grad_() for k, p in params.items()}
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    out = lif_sequence(xa, **params, surrogate=sg, detach_reset=detach_reset)
    ref = autograd_lif(xb, **ref_params, surrogate=sg, detach_reset=detach_reset)
    assert torch.equal(out, ref)
    weight = torch.randn_like(x)
    (out * weight).sum().backward()
    (ref * weight).sum().backward()
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else {}
    torch.testing.assert_close(xa.grad, xb.grad, **tol)
    for k in params:
        torch.testing.assert_close(params[k].grad, ref_params[k].grad, msg=f"gradient of {k}", **tol)


def test_compiled_kernel_is_used_and_matches_torch_loop(monkeypatch):
    from spiking_attn import lif_kernel

    assert lif_kernel.kernel_status() == "compiled"
    x = torch.randn(4, 70000) * 1.5  # large enough to be split across threads
    pop = LIFPopulation(dv=0.2, vth=0.9, learn_threshold=True)
    xa = x.clone().requires_grad_()
    out_kernel = pop(xa)
    (out_kernel * x).sum().backward()
    g_kernel, vth_kernel = xa.grad.clone(), pop.vth.grad.clone()
    pop.vth.grad = None
    monkeypatch.setattr(lif_kernel, "usable", lambda _x: False)
    xb = x.clone().requires_grad_()
    out_torch = pop(xb)
    (out_torch * x).sum().backward()
    assert torch.equal(out_kernel, out_torch)
    torch.testing.assert_close(g_kernel, xb.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(vth_kernel, pop.vth.grad, atol=1e-2, rtol=1e-4)


def test_learnable_threshold_and_decay_train():
    pop = LIFPopulation(learn_threshold=True, learn_decay=True)
    names = {n for n, _ in pop.named_parameters()}
    assert names == {"du", "dv", "vth", "bias"}
    opt = torch.optim.SGD(pop.parameters(), lr=0.1)
    x = torch.rand(4, 8, 10)
    before = float(pop.vth.detach())
    pop(x).mean().neg().backward()  # ask for more spikes: the threshold must fall
    opt.step()
    assert float(pop.vth) < before


def test_no_state_carried_between_calls():
    for engine in ("native", "spikingjelly"):
        pop = LIFPopulation(engine=engine)
        a = torch.rand(4, 2, 6) * 2
        first = pop(a)
        pop(torch.rand(4, 5, 6) * 3)  # another batch, another shape: no reset call needed
        assert torch.equal(pop(a), first)
        tensors = [k for k, v in vars(pop).items() if isinstance(v, torch.Tensor)]
        assert tensors == []


def test_forgotten_reset_does_not_keep_graphs():
    # Neither engine keeps a membrane tensor (and the autograd graph behind it) after a call.
    pop = LIFPopulation(engine="spikingjelly")
    x = torch.rand(3, 2, 4, requires_grad=True)
    pop(x).sum().backward()
    v = pop._sj_node.v
    assert not (isinstance(v, torch.Tensor) and v.requires_grad)


def test_bad_input_and_options():
    pop = LIFPopulation()
    with pytest.raises(DTypeError, match="floating-point"):
        pop(torch.ones(3, 2, dtype=torch.int64))
    with pytest.raises(ShapeError, match="rank"):
        pop(torch.ones(5))
    with pytest.raises(SpikingAttnError, match="engine"):
        LIFPopulation(engine="cuda")
    with pytest.raises(SpikingAttnError, match="surrogate"):
        LIFPopulation(surrogate="step")
    with pytest.raises(SpikingAttnError, match="du=1"):
        LIFPopulation(du=0.5, engine="spikingjelly")
    with pytest.raises(SpikingAttnError, match="dv"):
        LIFPopulation(dv=1.5)
    with pytest.raises(SpikingAttnError, match="vth"):
        LIFPopulation(vth=0.0)


def test_surrogate_formulas():
    x = torch.tensor([0.0, 0.5])
    assert get_surrogate("atan").grad(x)[0] == pytest.approx(1.0)
    assert get_surrogate("atan").grad(x)[1] == pytest.approx(1.0 / (1 + (math.pi / 2) ** 2))
    assert get_surrogate("sigmoid").grad(x)[0] == pytest.approx(1.0)
    assert get_surrogate("fast_sigmoid").grad(x)[1] == pytest.approx(1 / 13.5 ** 2)


@pytest.mark.parametrize("engine", ["native", "spikingjelly"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_rejected(engine, dtype, bad):
    x = torch.rand(3, 40000, dtype=dtype)
    x[2, 39999] = bad
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        LIFPopulation(engine=engine)(x)


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=40, deadline=None)
@given(du=st.floats(0.0, 1.0), dv=st.floats(0.0, 1.0), vth=st.floats(0.05, 3.0), bias=st.floats(-0.5, 0.5),
       steps=st.integers(1, 12), seed=st.integers(0, 2**16))
def test_any_parameters_match_the_step_by_step_reference(du, dv, vth, bias, steps, seed):
    x = torch.randn(steps, 2, 33, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    pop = LIFPopulation(du=du, dv=dv, vth=vth, bias=bias)
    stored = {k: float(getattr(pop, k)) for k in ("du", "dv", "vth", "bias")}  # parameters are float32
    expected, _, _ = lif_reference(x, **stored)
    assert torch.equal(pop(x), expected)  # float64 input runs the torch loop: the same roundings


def test_kernel_thread_pool_is_rebuilt_in_a_forked_child():
    # Lava forks its processes; a pool inherited from the parent has no threads in the child.
    import multiprocessing

    from spiking_attn import lif_kernel

    x = torch.randn(4, 70000)
    expected, _ = lif_kernel.forward(x, 1.0, 0.5, 1.0, 0.0)  # 2 chunks when torch has 2 threads
    if len(lif_kernel._chunks(70000)) < 2:
        pytest.skip("one thread: the pool is not used")
    assert lif_kernel._pool["executor"] is not None
    with multiprocessing.get_context("fork").Pool(1) as pool:
        total = pool.apply_async(_kernel_spike_total, (x.numpy(),)).get(timeout=60)
    assert total == int(expected.numpy().sum())


def _kernel_spike_total(x_np):
    from spiking_attn import lif_kernel

    spikes, _ = lif_kernel.forward(torch.from_numpy(x_np), 1.0, 0.5, 1.0, 0.0)
    return int(spikes.numpy().sum())
