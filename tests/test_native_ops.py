"""The LIF kernel as a torch operator (native_ops): same results as the ctypes path, and the right calls."""
import itertools
import os
import subprocess
import sys

import pytest
import torch

from spiking_attn import native_ops
from spiking_attn.errors import NonFiniteError, SpikingAttnError
from spiking_attn.neuron import LIFPopulation


@pytest.fixture
def op_switch():
    previous = native_ops.set_enabled(True)
    yield native_ops.set_enabled
    native_ops.set_enabled(previous)


def test_operator_is_built_on_this_machine():
    # the Makefile's install step builds it; a failure here means users silently get the slower path
    assert native_ops.status() == "compiled"


def _run_both(make_pop, x, op_switch):
    """Spikes and gradients (input and every learnable parameter) through the operator and through ctypes."""
    results = []
    for enabled in (True, False):
        op_switch(enabled)
        torch.manual_seed(0)
        pop = make_pop().to(x.dtype)
        xi = x.detach().clone().requires_grad_()
        spikes = pop(xi)
        weights = torch.linspace(-1, 1, spikes.numel(), dtype=x.dtype).reshape(spikes.shape)
        (spikes * weights).sum().backward()
        grads = {name: p.grad for name, p in pop.named_parameters()}
        results.append((spikes, xi.grad, grads))
    return results


CASES = {
    "scalar": lambda: LIFPopulation(),
    "per-channel learned": lambda: LIFPopulation(vth=torch.linspace(0.5, 1.5, 8), dv=torch.linspace(0.2, 0.8, 8),
                                                 learn_threshold=True, learn_bias=True, learn_decay=True),
    "current decay": lambda: LIFPopulation(du=0.7, dv=0.4, bias=0.05),
    "detach, subtract, v_init": lambda: LIFPopulation(detach_reset=True, reset="subtract", v_init=0.3),
    "sigmoid": lambda: LIFPopulation(surrogate="sigmoid", learn_threshold=True),
    "fast_sigmoid": lambda: LIFPopulation(surrogate="fast_sigmoid", alpha=10.0),
}


@pytest.mark.parametrize("case,dtype", list(itertools.product(CASES, (torch.float32, torch.float64))))
def test_operator_equals_ctypes_path(case, dtype, op_switch):
    x = torch.randn(5, 3, 4, 8, generator=torch.Generator().manual_seed(1), dtype=dtype) * 1.5
    (s_op, gx_op, gp_op), (s_ct, gx_ct, gp_ct) = _run_both(CASES[case], x, op_switch)
    assert s_op.dtype == dtype and 0 < s_op.mean() < 1
    assert torch.equal(s_op, s_ct)  # the same kernel: bit for bit
    assert torch.equal(gx_op, gx_ct)
    assert gp_op.keys() == gp_ct.keys()
    for name in gp_op:  # per-column values summed to the parameter's shape: equal up to summation order
        torch.testing.assert_close(gp_op[name], gp_ct[name], rtol=1e-5 if dtype == torch.float32 else 1e-12, atol=0)
        assert gp_op[name].shape == gp_ct[name].shape


def test_large_population_split_across_threads_equals_one_chunk(op_switch):
    # 1M neurons: the operator splits the columns into chunks on torch's thread pool, ctypes runs one chunk
    x = torch.randn(4, 32, 64, 128, generator=torch.Generator().manual_seed(2))
    (s_op, gx_op, gp_op), (s_ct, gx_ct, gp_ct) = _run_both(
        lambda: LIFPopulation(vth=torch.linspace(0.5, 1.5, 128), learn_threshold=True), x, op_switch)
    assert torch.equal(s_op, s_ct) and torch.equal(gx_op, gx_ct)
    torch.testing.assert_close(gp_op["vth"], gp_ct["vth"], rtol=1e-5, atol=1e-6)


def _operator_runs(x_np):
    """Spike totals of a plain population on x and on a non-contiguous view of it (the operator copies that),
    and the threshold and bias gradients of a learned one: everything the operator does that could start a
    parallel region. Sums by numpy, so that torch's own reductions are not what the test exercises."""
    x = torch.from_numpy(x_np)
    plain = LIFPopulation(dv=0.3, vth=0.9)
    total = int(plain(x).numpy().sum())
    transposed = int(plain(x.transpose(1, 2)).numpy().sum())
    learned = LIFPopulation(dv=0.3, vth=torch.full((x.shape[-1],), 0.9), learn_threshold=True, learn_bias=True)
    xi = x.clone().requires_grad_()
    learned(xi).backward(torch.ones_like(xi))
    return total, transposed, learned.vth.grad.numpy().copy(), learned.bias.grad.numpy().copy()


def test_operator_runs_in_a_forked_child(op_switch):
    # The operator splits large populations on torch's OpenMP pool, whose threads do not exist in a forked
    # child (Lava forks its processes): a parallel region there waits forever. In a child the operator runs
    # its columns on the calling thread, and native_ops sets torch to one thread there, which covers the
    # copies and sums the operator leaves to torch (a non-contiguous input, learned parameters' gradients).
    import multiprocessing

    x = torch.randn(4, 64, 8, 256, generator=torch.Generator().manual_seed(3))  # several chunks
    expected = _operator_runs(x.numpy())  # the parent's pool has run
    threads = torch.get_num_threads()
    with multiprocessing.get_context("fork").Pool(1) as pool:
        total, transposed, vth_grad, bias_grad = pool.apply_async(_operator_runs, (x.numpy(),)).get(timeout=60)
        child_threads = pool.apply_async(torch.get_num_threads).get(timeout=60)
    assert total == transposed == expected[0] > 0 and expected[1] == expected[0]
    torch.testing.assert_close(torch.from_numpy(vth_grad), torch.from_numpy(expected[2]), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(torch.from_numpy(bias_grad), torch.from_numpy(expected[3]), rtol=1e-5, atol=1e-6)
    assert child_threads == 1 and torch.get_num_threads() == threads  # the parent keeps its threads


def test_only_plain_populations_take_the_operator(monkeypatch, op_switch):
    calls = []
    real = native_ops.lif
    monkeypatch.setattr(native_ops, "lif", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.rand(3, 2, 4, 6) * 2
    LIFPopulation()(x)
    LIFPopulation(vth=torch.ones(6))(x)
    assert len(calls) == 2
    LIFPopulation()(x, gain=torch.ones(1, 2, 1, 1))  # modulation
    LIFPopulation()(x, threshold_shift=torch.zeros(6))
    LIFPopulation(theta_decay=0.5, theta_step=0.5)(x)  # adaptive threshold
    LIFPopulation()(x, return_membrane=True)
    LIFPopulation(vth=torch.ones(4, 6))(x)  # per token and channel
    LIFPopulation(surrogate=type("Triangle", (), {"name": "t", "grad": lambda self, z: (1 - z.abs()).clamp(0)})())(x)
    assert len(calls) == 2
    op_switch(False)
    LIFPopulation()(x)
    assert len(calls) == 2


def test_operator_reports_non_finite_input(op_switch):
    x = torch.rand(3, 2, 5)
    x[1, 0, 2] = float("nan")
    x[2, 1, 0] = float("inf")
    with pytest.raises(NonFiniteError, match="2 NaN or Inf"):
        LIFPopulation()(x)


def test_operator_refuses_second_order_gradients(op_switch):
    x = torch.randn(3, 2, 5, dtype=torch.float64, requires_grad=True)
    with pytest.raises((SpikingAttnError, RuntimeError), match="first-order gradients only"):
        torch.autograd.grad(LIFPopulation(learn_threshold=True).double()(x).sum(), x, create_graph=True)


def test_set_enabled_takes_only_a_bool():
    with pytest.raises(SpikingAttnError, match="enabled must be True or False, got 'no'"):
        native_ops.set_enabled("no")
    assert native_ops.status() == "compiled"  # unchanged by the refused call


def test_environment_switch_turns_the_operator_off():
    code = "from spiking_attn import native_ops; print(native_ops.status())"
    env = {**os.environ, "SPIKING_ATTN_TORCH_OPS": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "disabled"


@pytest.mark.parametrize("name,value", [("dv", 1.5), ("du", -0.1), ("vth", 0.0), ("vth", float("nan")),
                                        ("bias", float("inf"))])
def test_operator_checks_parameter_values_like_the_general_path(name, value, op_switch):
    x = torch.rand(3, 2, 6)
    messages = []
    for enabled in (True, False):
        op_switch(enabled)
        pop = LIFPopulation(vth=torch.ones(6), learn_threshold=True)
        with torch.no_grad():  # set after construction, as a careless update would
            getattr(pop, name).view(-1)[-1] = value
        with pytest.raises(SpikingAttnError, match=f"LIFPopulation: {name} must be") as info:
            pop(x)
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_operator_refuses_parameters_that_do_not_broadcast(op_switch):
    pop = LIFPopulation()
    pop.vth = torch.ones(1, 1, 1, 6)  # one axis more than the population [B, D]
    with pytest.raises(SpikingAttnError, match="vth of shape"):
        pop(torch.rand(3, 2, 6))


def test_model_compiles_without_graph_breaks_and_matches_eager():
    # under torch.compile populations run lif_step in torch ops (the operator is opaque to the tracer),
    # and no check reads a tensor on the host, so the whole forward is one graph
    from spiking_attn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_features=8, num_tokens=4, num_classes=3, dim=16, depth=1, heads=2,
                                    timesteps=3, attention="sdsa")).double()
    x = torch.rand(5, 4, 8, dtype=torch.float64) * 2
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(x)
    assert explained.graph_count == 1 and explained.graph_break_count == 0
    eager = model(x)
    eager.sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    compiled = torch.compile(model, backend="aot_eager")(x)
    compiled.sum().backward()
    torch.testing.assert_close(compiled, eager)
    for name, g in grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, g)
    torch._dynamo.reset()


def test_a_failed_build_says_why_and_leaves_nothing_behind(tmp_path):
    # a fresh cache and a C++ compiler that fails: the operator is unavailable with the reason, the parallel
    # compiles' work folder is gone, and the LIF kernel still runs (through ctypes)
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "CXX": "/bin/false"}
    code = ("from spiking_attn import native_ops; import torch; from spiking_attn.neuron import LIFPopulation; "
            "print(native_ops.status()); print(int(LIFPopulation()(torch.ones(3, 2, 4) * 2).sum()))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    status, total = proc.stdout.strip().splitlines()[-2:]
    assert status.startswith("unavailable (false failed") and int(total) > 0
    leftovers = [p.name for p in (tmp_path / "spiking-attn").iterdir() if not p.name.endswith(".so")]
    assert leftovers == []
