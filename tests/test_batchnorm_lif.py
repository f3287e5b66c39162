"""BatchNorm in the project's kernel, alone and fused with the population it feeds (csrc/batchnorm_lif.cpp,
native_ops.batchnorm / batchnorm_lif), and the opt-in switch that sends LinearBN through it
(native_ops.set_fused_batchnorm)."""
import copy
import json
import subprocess
import sys

import pytest
import torch
from torch import nn

from spiking_attn import native_ops
from spiking_attn.block import SpikingTransformerBlock
from spiking_attn.errors import DTypeError, NonFiniteError, SpikingAttnError
from spiking_attn.layers import LinearBN
from spiking_attn.neuron import LIFPopulation


@pytest.fixture
def fused():
    previous_ops = native_ops.set_enabled(True)
    previous = native_ops.set_fused_batchnorm(True)
    assert native_ops.ops() is not None  # built by the Makefile's install step
    yield
    native_ops.set_fused_batchnorm(previous)
    native_ops.set_enabled(previous_ops)


@pytest.fixture
def calls(monkeypatch):
    """How often each kernel ran: {"batchnorm_lif": n, "batchnorm": n}."""
    counts = {"batchnorm_lif": 0, "batchnorm": 0}
    for name in counts:
        original = getattr(native_ops, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            counts[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(native_ops, name, counted)
    return counts


def spikes(*shape, p=0.3, dtype=torch.float64, seed=0):
    return (torch.rand(*shape, generator=torch.Generator().manual_seed(seed)) < p).to(dtype)


def layer_pair(cin, cout, dtype, seed=0):
    torch.manual_seed(seed)
    layer = LinearBN(cin, cout).to(dtype)
    with torch.no_grad():  # away from BatchNorm's start, so a wrong weight or bias would show
        layer.bn.weight.uniform_(0.5, 2.0)
        layer.bn.bias.uniform_(-0.5, 0.5)
    return layer, copy.deepcopy(layer)


def run(layer, x, on, population=None, grad=None, repeats=1):
    """Output and every gradient of ``layer`` (firing ``population`` if given), with fused BatchNorm ``on``."""
    previous = native_ops.set_fused_batchnorm(on)
    try:
        for _ in range(repeats):
            xs = x.clone().requires_grad_()
            out = layer(xs) if population is None else layer.fire(xs, population)
        (out.sum() if grad is None else (out * grad).sum()).backward()
    finally:
        native_ops.set_fused_batchnorm(previous)
    bn = layer.bn

    def copy_of(t):  # (a BatchNorm without a bias, or without running statistics, has None there)
        return None if t is None else t.detach().clone()

    return {"out": out.detach(), "dx": xs.grad, "dW": layer.linear.weight.grad, "dgamma": bn.weight.grad,
            "dbeta": None if bn.bias is None else bn.bias.grad, "running_mean": copy_of(bn.running_mean),
            "running_var": copy_of(bn.running_var), "batches": copy_of(bn.num_batches_tracked)}


def assert_close(a, b, rtol, atol=0.0):
    for name in a:
        assert (a[name] is None) == (b[name] is None), name
        if a[name] is not None:
            torch.testing.assert_close(a[name], b[name], rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


POPULATIONS = {  # the population's keyword arguments for a width
    "atan": lambda width: dict(),
    "sigmoid": lambda width: dict(surrogate="sigmoid"),
    "fast_sigmoid, v_init": lambda width: dict(surrogate="fast_sigmoid", v_init=0.3),
    "atan, alpha 2.5": lambda width: dict(surrogate="atan", alpha=2.5),
    "per-channel dv, vth, bias; detach": lambda width: dict(
        dv=torch.linspace(0.1, 0.9, width), vth=torch.linspace(0.5, 1.5, width), bias=torch.linspace(-0.1, 0.1, width),
        shape=(width,), detach_reset=True),
}


@pytest.mark.parametrize("name", list(POPULATIONS))
@pytest.mark.parametrize("width", [37, 128])  # 37: whole vectors and a tail of single channels
def test_fused_equals_batchnorm_then_population_in_float64(fused, calls, name, width):
    population = LIFPopulation(**POPULATIONS[name](width)).double()
    plain, fusing = layer_pair(24, width, torch.float64)
    x = spikes(4, 3, 10, 24)
    grad = torch.randn(4, 3, 10, width, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    expected, got = run(plain, x, False, population, grad), run(fusing, x, True, population, grad)
    assert torch.equal(got["out"], expected["out"])  # the same spikes: no membrane sits within 1e-15 of vth
    assert 0.05 < float(got["out"].mean()) < 0.5
    assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert int(got["batches"]) == 1
    assert calls == {"batchnorm_lif": 1, "batchnorm": 0}


@pytest.mark.parametrize("width", [128, 37])  # 37: the scalar tail of the float32 kernel
def test_fused_float32_agrees_to_rounding(fused, calls, width):
    population = LIFPopulation()
    plain, fusing = layer_pair(64, width, torch.float32)
    x = spikes(4, 8, 16, 64, dtype=torch.float32)
    expected, got = run(plain, x, False, population), run(fusing, x, True, population)
    assert calls["batchnorm_lif"] == 1
    flips = int((got["out"] != expected["out"]).sum())
    assert flips <= got["out"].numel() // 1000  # a spike may flip where the membrane meets vth within rounding
    # each gradient within float32 rounding of its largest entry (sums of 2048 terms each); a flipped spike
    # would move the gradients by more, so this seed and width must flip none
    assert flips == 0
    for name in ("dx", "dW", "dgamma", "dbeta"):
        scale = float(expected[name].abs().max())
        assert float((got[name] - expected[name]).abs().max()) <= 1e-5 * scale, name


@pytest.mark.parametrize("settings", [{"momentum": None}, {"track_running_stats": False}])
def test_fused_running_statistics_follow_torch(fused, calls, settings):
    population = LIFPopulation().double()
    plain, fusing = layer_pair(16, 24, torch.float64)
    for layer in (plain, fusing):
        bn = nn.BatchNorm1d(24, **settings).double()
        bn.load_state_dict(layer.bn.state_dict(), strict=False)
        layer.bn = bn
    for seed in range(3):
        x = spikes(3, 4, 5, 16, seed=seed)
        expected, got = run(plain, x, False, population), run(fusing, x, True, population)
        assert torch.equal(got["out"], expected["out"])
    assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert calls["batchnorm_lif"] == 3


@pytest.mark.parametrize("momentum", [0.1, None])  # None: the cumulative average, as nn.BatchNorm1d
def test_batchnorm_alone_equals_torch_with_a_broadcast_gradient(fused, calls, momentum):
    plain, own = layer_pair(24, 37, torch.float64)
    plain.bn.momentum = own.bn.momentum = momentum
    x = torch.randn(4, 3, 10, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    # out.sum().backward(): the gradient arrives broadcast (zero strides), as from a model's mean over tokens
    expected, got = run(plain, x, False, repeats=3), run(own, x, True, repeats=3)
    assert_close(got, expected, rtol=1e-10, atol=1e-12)
    assert int(got["batches"]) == 3
    assert calls == {"batchnorm_lif": 0, "batchnorm": 3}


def test_results_do_not_depend_on_the_thread_count(fused):
    population = LIFPopulation()
    x = spikes(4, 8, 16, 64, dtype=torch.float32)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            layer, _ = layer_pair(64, 96, torch.float32)
            results.append((run(layer, x, True, population), run(layer_pair(64, 96, torch.float32)[0], x, True)))
    finally:
        torch.set_num_threads(threads)
    for one, two in zip(results[0], results[1]):
        for name in one:
            assert torch.equal(one[name], two[name]), name


def test_block_with_fused_batchnorm_matches_the_block_without(fused, calls):
    torch.manual_seed(0)
    block = SpikingTransformerBlock(32, 4, kind="ssa").double()
    other = copy.deepcopy(block)
    x = torch.randn(3, 2, 12, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    got = run_block(block, x, True)
    # q, k, v and the MLP's hidden layer fused; out and fc2 run the BatchNorm alone
    assert calls == {"batchnorm_lif": 4, "batchnorm": 2}
    expected = run_block(other, x, False)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def run_block(block, x, on):
    previous = native_ops.set_fused_batchnorm(on)
    try:
        xs = x.clone().requires_grad_()
        out = block(xs)
        out.sum().backward()
    finally:
        native_ops.set_fused_batchnorm(previous)
    return [out.detach(), xs.grad] + [p.grad for p in block.parameters()]


def test_what_cannot_be_fused_runs_the_two_modules(fused, calls):
    from spiking_attn.global_batchnorm import convert_batchnorm

    x = spikes(4, 2, 6, 16)

    class Subclass(LIFPopulation):  # may override forward: never bypassed
        pass

    cases = {
        "a subclass": Subclass().double(),
        "learned threshold": LIFPopulation(learn_threshold=True).double(),
        "adaptive threshold": LIFPopulation(theta_decay=0.1, theta_step=0.5).double(),
        "synaptic decay": LIFPopulation(du=0.5).double(),
        "reset by subtraction": LIFPopulation(reset="subtract").double(),
        "spikingjelly engine": LIFPopulation(engine="spikingjelly").double(),
    }
    for name, population in cases.items():
        plain, fusing = layer_pair(16, 8, torch.float64)
        expected, got = run(plain, x, False, population), run(fusing, x, True, population)
        assert torch.equal(got["out"], expected["out"]), name
        # (the BatchNorm still runs in the project's kernel: the same values to rounding)
        torch.testing.assert_close(got["dx"], expected["dx"], rtol=1e-10, atol=1e-12, msg=name)
    assert calls == {"batchnorm_lif": 0, "batchnorm": len(cases)}

    # BatchNorms the kernel must leave to torch: the same bits as with the option off
    plain, synced = layer_pair(16, 8, torch.float64)
    convert_batchnorm(synced)  # a multi-process run's BatchNorm over every process
    seen = []
    hooked_bn, backward_hooked = layer_pair(16, 8, torch.float64)
    backward_hooked.bn.register_full_backward_hook(lambda *args: seen.append(1))
    no_bias = layer_pair(16, 8, torch.float64)[0]
    no_bias.bn = nn.BatchNorm1d(8, bias=False).double()
    for layer in (synced, backward_hooked, no_bias):
        reference = copy.deepcopy(layer)
        expected, got = run(reference, x, False, LIFPopulation().double()), run(layer, x, True, LIFPopulation().double())
        assert torch.equal(got["dx"], expected["dx"])
    assert type(synced.bn).__name__ == "GlobalBatchNorm" and seen == [1, 1]  # the hook saw both backward passes

    hooked = LIFPopulation().double()
    hooked.register_forward_hook(lambda *args: None)  # the spike recorder hooks populations this way
    run(layer_pair(16, 8, torch.float64)[1], x, True, hooked)
    evaluating, _ = layer_pair(16, 8, torch.float64)
    evaluating.eval()
    with torch.no_grad():
        native_ops.set_fused_batchnorm(True)
        evaluating.fire(x, LIFPopulation().double())
    # (the hooked population's BatchNorm, itself unhooked, ran alone in the kernel; evaluation mode ran torch's)
    assert calls["batchnorm_lif"] == 0 and calls["batchnorm"] == len(cases) + 1


def test_modulated_route_does_not_fuse(fused):
    from spiking_attn.attention import SpikingSelfAttention

    torch.manual_seed(0)
    attn = SpikingSelfAttention(16, 2, kind="sdsa").double()
    other = copy.deepcopy(attn)
    x = spikes(2, 2, 5, 16)
    gain = torch.rand(2, 2, 1, 16, dtype=torch.float64) + 0.5
    native_ops.set_fused_batchnorm(True)
    got = attn.route(x, gain=gain)
    native_ops.set_fused_batchnorm(False)
    assert torch.equal(got, other.route(x, gain=gain))


def test_bad_input_and_parameters_are_named(fused, calls):
    layer, _ = layer_pair(8, 16, torch.float32)
    x = spikes(2, 2, 4, 8, dtype=torch.float32)
    before = {k: v.clone() for k, v in layer.bn.state_dict().items()}

    def untouched():  # an error leaves the running statistics and the batch count as they were
        return all(torch.equal(before[k], v) for k, v in layer.bn.state_dict().items())

    with pytest.raises(NonFiniteError, match="BatchNorm's input, weight or bias"):
        with torch.no_grad():
            layer.linear.weight[0, 0] = float("nan")
        layer.fire(x, LIFPopulation())
    assert untouched()
    layer, _ = layer_pair(8, 16, torch.float32)
    before = {k: v.clone() for k, v in layer.bn.state_dict().items()}
    for name, value in (("vth", -1.0), ("dv", -1e-8), ("bias", float("inf"))):
        population = LIFPopulation()
        with torch.no_grad():  # a buffer set by hand, outside the domain the constructor checks
            getattr(population, name).fill_(value)
        with pytest.raises(SpikingAttnError, match=f"{name} must be"):
            layer.fire(x, population)
        assert untouched()
    assert calls["batchnorm_lif"] == 4
    with pytest.raises(NonFiniteError, match="NaN or Inf"):
        layer(torch.full((2, 2, 4, 8), float("nan")))
    with pytest.raises(DTypeError, match="enabled"):
        native_ops.set_fused_batchnorm("yes")
    with pytest.raises(SpikingAttnError, match="unknown option"):
        native_ops.set_option("fast", True)


def test_second_order_gradients_are_refused(fused):
    layer, _ = layer_pair(8, 16, torch.float64)
    x = spikes(2, 2, 4, 8).requires_grad_()
    out = layer.fire(x, LIFPopulation().double())
    with pytest.raises(RuntimeError, match="fused BatchNorm and LIF give first-order gradients only"):
        torch.autograd.grad(out.sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="BatchNorm kernel gives first-order gradients only"):
        x2 = torch.randn(2, 2, 4, 8, dtype=torch.float64, requires_grad=True)
        torch.autograd.grad(layer(x2).pow(2).sum(), x2, create_graph=True)


def test_environment_variable_turns_it_on_at_import():
    code = "from spiking_attn import native_ops; print(native_ops.fused_batchnorm_enabled())"
    on = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                        env={**__import__("os").environ, "SPIKING_ATTN_FUSED_BATCHNORM": "1"})
    assert on.stdout.strip() == "True"


TINY = dict(task="cue", dim=16, depth=1, heads=2, timesteps=2, epochs=1, progress=False, figures=False)


def test_train_sets_fused_batchnorm_for_its_run(tmp_path, calls):
    from spiking_attn.training import train

    assert not native_ops.fused_batchnorm_enabled()
    off = train(**TINY, out=tmp_path / "off")
    assert off["fused_batchnorm"] is False and off["sparse_products"] is False
    assert calls == {"batchnorm_lif": 0, "batchnorm": 0}
    on = train(**TINY, out=tmp_path / "on", fused_batchnorm=True, sparse_products=True)
    assert on["fused_batchnorm"] is True and on["sparse_products"] is True
    assert calls["batchnorm_lif"] > 0 and calls["batchnorm"] > 0
    assert not native_ops.fused_batchnorm_enabled() and not native_ops.sparse_products_enabled()
    with pytest.raises(DTypeError, match="fused_batchnorm"):
        train(**TINY, out=tmp_path / "bad", fused_batchnorm=1)


def test_command_line_flag_reaches_metrics(tmp_path):
    from spiking_attn.cli import main

    out = tmp_path / "cli"
    assert main(["train", "--task", "cue", "--dim", "16", "--depth", "1", "--heads", "2", "-T", "2", "--epochs", "1",
                 "--no-progress", "--fused-batchnorm", "--out", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["fused_batchnorm"] is True
    assert not native_ops.fused_batchnorm_enabled()


def test_batchnorm_module_state_matches_torch_after_training_steps(fused):
    """Running statistics after several steps, then eval mode reads them: the fused layer's eval output
    equals the plain layer's."""
    population = LIFPopulation().double()
    plain, fusing = layer_pair(16, 24, torch.float64)
    for seed in range(4):
        x = spikes(3, 4, 5, 16, seed=seed)
        run(plain, x, False, population)
        run(fusing, x, True, population)
    for module in (plain, fusing):
        module.eval()
    x = spikes(3, 4, 5, 16, seed=9)
    with torch.no_grad():
        torch.testing.assert_close(fusing(x), plain(x), rtol=1e-10, atol=1e-12)
    assert isinstance(fusing.bn, nn.BatchNorm1d)


def test_torch_batchnorm_gets_a_dense_gradient_and_the_same_values(monkeypatch):
    """With the option off, LinearBN hands torch's BatchNorm a contiguous copy of a broadcast gradient
    (its [rows, C] kernel is slow on zero strides); a contiguous gradient passes untouched."""
    from spiking_attn import layers

    seen = []
    original = layers._dense_gradient

    def watched(grad):
        out = original(grad)
        seen.append((grad.is_contiguous(), out is None or out.is_contiguous()))
        return out

    monkeypatch.setattr(layers, "_dense_gradient", watched)
    monkeypatch.setitem(native_ops._state, "fused_batchnorm", False)
    layer, reference = layer_pair(24, 37, torch.float64)
    x = torch.randn(4, 3, 10, 24, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    xs = x.clone().requires_grad_()
    layer(xs).sum().backward()  # broadcast: copied
    xr = x.clone().requires_grad_()
    out = reference.bn(reference.linear(xr.reshape(-1, 24)))  # torch's modules alone, no hook
    out.sum().backward()
    grad = torch.randn(4, 3, 10, 37, dtype=torch.float64)
    xd = x.clone().requires_grad_()
    layer(xd).mul(grad).sum().backward()  # dense: passed as it is
    assert seen == [(False, True), (True, True)]
    torch.testing.assert_close(xs.grad, xr.grad.reshape(xs.shape), rtol=1e-12, atol=1e-14)
