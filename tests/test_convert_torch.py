"""Conversion of plain torch models (converters/torch_models.py) and the detection of functional
nonlinearities inside forward (converters/functional.py)."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from spiking_attn.converters.functional import functional_calls
from spiking_attn.converters.qcfs import QCFS
from spiking_attn.converters.rules import ConversionError
from spiking_attn.converters.torch_models import (FitSize2d, SpikingSequential, TorchTDModel, convert_torch_model,
                                                  fold_into_linear, fold_pool_into_conv)
from spiking_attn.errors import DTypeError, ShapeError, SpikingAttnError
from spiking_attn.neuron import LIFPopulation
from spiking_attn.spike_driven import spike_driven_report


# ------------------------------------------------------------------- data and models
@pytest.fixture(scope="module")
def digits():
    from sklearn.datasets import load_digits

    data = load_digits()
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data.target), generator=g)
    x = torch.tensor(data.data, dtype=torch.float32)[order] / 16.0  # [1797, 64] in [0, 1]
    y = torch.tensor(data.target)[order]
    return x[:1200], y[:1200], x[1200:1500], y[1200:1500]


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    model.train()
    for _ in range(steps):
        rows = torch.randint(0, len(x), (128,))
        loss = F.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def _trained_cnn(images: torch.Tensor, y: torch.Tensor) -> nn.Module:
    """Conv-BN-ReLU-AvgPool-Conv-ReLU-Flatten-Linear on the 8x8 digits, trained 60 steps."""
    return _train(nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AvgPool2d(2),
                                nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 16, 10)),
                  images, y, steps=60)


def _check_rate(conversion, dense_accuracy_margin=0.04):
    rows = {r["timesteps"]: r for r in conversion.results}
    assert set(rows[4]) >= {"timesteps", "accuracy", "mean_abs_output_error", "firing_rate"}
    assert rows[64]["mean_abs_output_error"] < rows[4]["mean_abs_output_error"] / 3
    assert rows[64]["accuracy"] >= conversion.dense_accuracy - dense_accuracy_margin
    assert 0 < rows[64]["firing_rate"] < 1


def test_rate_conversion_of_an_mlp_with_batchnorm(digits):
    x, y, xt, yt = digits
    dense = _train(nn.Sequential(nn.Linear(64, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.1),
                                 nn.Linear(32, 10)), x, y, steps=60)
    conversion = convert_torch_model(dense, x[:256], "rate", (4, 64), evaluation={"x": xt, "y": yt})
    assert conversion.dense_accuracy > 0.85
    _check_rate(conversion)
    spiking = conversion.model
    assert isinstance(spiking, SpikingSequential) and spiking.timesteps == 64
    # BatchNorm folded, Dropout gone: Linear, population, Linear
    assert [type(s) for s in spiking.stages] == [nn.Linear, LIFPopulation, nn.Linear]
    (name, vth), = conversion.thresholds.items()
    assert conversion.sources[name] == "2" and vth > 0
    # the population's threshold is lambda; the layer reading its spikes carries lambda in its weights
    assert torch.allclose(spiking.stages[2].weight, dense[4].weight * vth)
    report = spike_driven_report(spiking, xt[:16])
    assert report.checked == ["stages.0", "stages.2"] and report.non_binary == ["stages.0"]  # only the encoder
    # a time-first input [T, B, ...] runs as given; the same input repeated is the direct encoding
    with torch.no_grad():
        repeated = spiking(xt[:8].expand(64, -1, -1))
        assert torch.allclose(repeated, spiking(xt[:8]), atol=1e-5)


def test_rate_conversion_of_a_cnn_folds_the_average_pooling(digits):
    x, y, xt, yt = digits
    images, test_images = x.reshape(-1, 1, 8, 8), xt.reshape(-1, 1, 8, 8)
    dense = _trained_cnn(images, y)
    conversion = convert_torch_model(dense, images[:256], "rate", (4, 64),
                                     evaluation={"x": test_images, "y": yt})
    assert conversion.dense_accuracy > 0.85
    _check_rate(conversion)
    stages = conversion.model.stages
    # the pooling went into the second convolution: 6x6 kernel, stride 2, reading the spikes themselves
    assert [type(s) for s in stages] == [nn.Conv2d, LIFPopulation, nn.Conv2d, LIFPopulation, nn.Flatten, nn.Linear]
    assert stages[2].kernel_size == (6, 6) and stages[2].stride == (2, 2)
    report = spike_driven_report(conversion.model, test_images[:16])
    assert report.checked == ["stages.0", "stages.2", "stages.5"] and report.non_binary == ["stages.0"]


def test_qcfs_conversion_is_exact_at_t_equal_l_for_one_hidden_layer():
    # a constant drive for T = L steps: the population's count * lambda / T is the QCFS output, exactly
    torch.manual_seed(1)
    dense = nn.Sequential(nn.Linear(6, 16), QCFS(levels=4, clip=2.0), nn.Linear(16, 3)).double().eval()
    x = torch.randn(64, 6, dtype=torch.float64)
    conversion = convert_torch_model(dense, x, "qcfs", (4, 32))
    assert conversion.results[0]["mean_abs_output_error"] < 1e-9
    assert list(conversion.thresholds.values()) == [2.0]
    with pytest.raises(ConversionError, match="no learned clip|has none"):
        convert_torch_model(nn.Sequential(nn.Linear(6, 4), nn.ReLU()), x.float(), "qcfs", 4)


# ------------------------------------------------------------------- average pooling
@pytest.mark.parametrize("kernel, stride, conv", [
    (2, 2, dict(kernel_size=3, padding=1)),
    (2, 3, dict(kernel_size=3, padding=2, stride=2, dilation=2)),
    (1, 2, dict(kernel_size=2)),
])
@pytest.mark.parametrize("size", [8, 9, 11])
def test_an_average_pooling_folds_exactly_into_the_convolution_after_it(kernel, stride, conv, size):
    pool, layer = nn.AvgPool2d(kernel, stride), nn.Conv2d(3, 5, **conv)
    x = torch.randn(2, 3, size, size)
    stages = fold_pool_into_conv(pool, layer, (3, size, size))
    out = x
    for stage in stages:
        out = stage(out)
    with torch.no_grad():
        assert torch.allclose(out, layer(pool(x)), atol=1e-5)
    refit = ((size - kernel) // stride + 1) * stride != size  # the rows the pooling reads are not all rows
    assert any(isinstance(s, FitSize2d) for s in stages) == refit
    # overlapping windows do not compose into one convolution
    assert fold_pool_into_conv(nn.AvgPool2d(3, 2), layer, (3, size, size)) is None


def test_pooling_and_flattening_fold_exactly_into_the_linear_after_them():
    chain, linear = [nn.AvgPool2d(3, 2, padding=1), nn.Flatten()], nn.Linear(3 * 4 * 4, 5)
    x = torch.randn(2, 3, 8, 8)
    flatten, folded = fold_into_linear(chain, linear, (3, 8, 8))
    with torch.no_grad():
        assert torch.allclose(folded(flatten(x)), linear(chain[1](chain[0](x))), atol=1e-5)


def test_a_pooling_that_cannot_fold_is_rebinarised_by_a_pooling_population():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AvgPool2d(3, 2, padding=1),
                          nn.Conv2d(4, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(16, 3)).eval()
    x = torch.rand(32, 1, 8, 8)
    conversion = convert_torch_model(dense, x, "rate", (8, 128))
    stages = conversion.model.stages
    assert [type(s) for s in stages][:5] == [nn.Conv2d, LIFPopulation, nn.AvgPool2d, LIFPopulation, nn.Conv2d]
    assert conversion.thresholds["stages.3"] == 1.0 and conversion.sources["stages.3"] == "2 (pooling)"
    assert spike_driven_report(conversion.model, x[:4]).non_binary == ["stages.0"]
    errors = [r["mean_abs_output_error"] for r in conversion.results]
    assert errors[1] < errors[0]


# ------------------------------------------------------------------- td
class AttentionBlock(nn.Module):
    """A pre-norm transformer block: LayerNorm, softmax attention, a GELU MLP, residuals."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.MultiheadAttention(width, 2, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(width, 32), nn.GELU(), nn.Linear(32, width))

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(x)


class ReluBlock(nn.Module):
    """A custom container whose own forward holds a functional ReLU."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.lin = nn.Linear(width, width)

    def forward(self, x):
        return F.relu(self.lin(x)) * 2.0 + x


def _transformer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), AttentionBlock(), nn.LayerNorm(16), nn.Flatten(), nn.Dropout(0.2),
                         nn.Linear(16 * 5, 4))


def test_td_is_exact_on_gelu_layernorm_and_multihead_attention():
    dense = _transformer()
    x = torch.randn(16, 5, 8)
    conversion = convert_torch_model(dense, x, "td", (1, 8, 32))
    assert all(r["mean_abs_output_error"] < 1e-5 and r["firing_rate"] is None for r in conversion.results)
    td = conversion.model
    assert isinstance(td, TorchTDModel)
    with torch.no_grad():
        assert torch.allclose(td(x), dense(x), atol=1e-4)
        steps = td.with_timesteps(16).steps(x)
        assert steps.shape == (16, 16, 4) and torch.allclose(steps.sum(0), dense(x), atol=1e-4)
    assert td.units["1"] == "custom AttentionBlock" and td.units["2"] == "built-in LayerNorm"
    assert not dense.training  # evaluating left the dense model in eval mode (its Dropout off)


def test_td_runs_a_custom_container_with_a_functional_relu_as_one_exact_unit():
    torch.manual_seed(0)
    dense = nn.Sequential(nn.Linear(4, 16), ReluBlock(), nn.Linear(16, 2))
    x = torch.randn(32, 4)
    conversion = convert_torch_model(dense, x, "td", 16)
    with torch.no_grad():
        assert torch.allclose(conversion.model(x), dense(x), atol=1e-4)
    assert conversion.model.units["1"] == "custom ReluBlock, calls torch.nn.functional.relu in forward"
    # a custom root is one unit too, and still exact
    root = ReluBlock(4)
    with torch.no_grad():
        assert torch.allclose(convert_torch_model(root, x, "td", 8).model(x), root(x), atol=1e-4)


def test_rate_refuses_gelu_layernorm_attention_and_functional_calls_naming_each_module():
    dense = nn.Sequential(_transformer(), ReluBlock(4))
    x = torch.randn(4, 5, 8)
    with pytest.raises(ConversionError) as error:
        convert_torch_model(dense, x, "rate", 4)
    message = str(error.value)
    for expected in ("0.1.norm (LayerNorm)", "0.1.attn (MultiheadAttention)", "0.1.mlp.1 (GELU)",
                     "0.2 (LayerNorm)", "1 (ReluBlock) calls torch.nn.functional.relu inside forward"):
        assert expected in message
    assert "use nn.ReLU (or QCFS)" in message and "use BatchNorm" in message and "--method td" in message
    with pytest.raises(ConversionError, match=r"0 \(GELU\).*--method td"):
        convert_torch_model(nn.Sequential(nn.GELU(), nn.Linear(8, 2)), torch.randn(4, 8), "qcfs", 4)


def test_rate_refuses_structures_without_a_spike_driven_form():
    x = torch.randn(8, 6)
    with pytest.raises(ConversionError, match=r"2 \(Linear\) reads the output of 0.*no activation between"):
        convert_torch_model(nn.Sequential(nn.Linear(6, 6), nn.Flatten(), nn.Linear(6, 2)), x, "rate", 4)
    with pytest.raises(ConversionError, match=r"2 \(BatchNorm1d\) must come right after the Linear"):
        convert_torch_model(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.BatchNorm1d(6), nn.Linear(6, 2)), x, "rate", 4)
    relu = nn.ReLU()
    with pytest.raises(ConversionError, match="is the same module as"):
        convert_torch_model(nn.Sequential(nn.Linear(6, 6), relu, nn.Linear(6, 6), relu), x, "rate", 4)

    class Sneaky(nn.Linear):  # a Linear whose forward is its own: not a Linear to the converter
        def forward(self, x):
            return torch.tanh(super().forward(x))

    with pytest.raises(ConversionError, match=r"0 \(Sneaky\) calls torch.tanh inside forward"):
        convert_torch_model(nn.Sequential(Sneaky(6, 6), nn.ReLU()), x, "rate", 4)


# ------------------------------------------------------------------- functional calls
class Mixer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Linear(8, 8)
        self.gain = nn.Parameter(torch.ones(8))
        self.register_buffer("offset", torch.zeros(8))

    def forward(self, x):  # [B, N, 8]
        q = self.q(x)
        a = F.relu(q)
        y = x @ a.transpose(-1, -2)  # [B, N, N]: a product of two activations
        s = torch.softmax(y, dim=-1)
        # linear: sums, reshapes, products and quotients with numbers and parameters
        z = (x + q) * 0.5 - self.offset
        z = z * self.gain.exp().unsqueeze(0) / 4 + torch.ones(8)
        z = torch.cat([z, z], dim=-1).reshape(*z.shape[:-1], 2, 8).sum(-2).permute(0, 2, 1).transpose(1, 2)
        z = z.flatten(1).unflatten(1, (-1, 8))[:, :, :8].cumsum(1).mean(0, keepdim=True).expand_as(z)
        z = z @ self.q.weight.T  # times a parameter
        return s @ z


class Linearly(nn.Module):
    def forward(self, x):
        return torch.stack([x, -x]).sum(0) * 3 - x.mean(-1, keepdim=True)


def test_functional_calls_finds_relu_softmax_and_matmul_but_no_linear_op():
    model = nn.Sequential(Mixer(), Linearly(), nn.ReLU())
    calls = functional_calls(model, torch.randn(2, 5, 8))
    assert calls == {"0": ["torch.nn.functional.relu", "torch.matmul", "torch.softmax"],
                     "2": ["torch.nn.functional.relu"]}  # 0.q (a Linear) and 1 (linear only) are clean
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_functional_calls_reports_products_and_divisions_of_activations():
    class Gate(nn.Module):
        def forward(self, x):
            return x * torch.sigmoid(x) / x.abs().sum(-1, keepdim=True) + 1.0 / x

    calls = functional_calls(Gate(), torch.rand(3, 4) + 0.5)
    assert calls == {"": ["torch.sigmoid", "torch.mul (activation * activation)", "torch.abs",
                          "torch.div (by an activation)"]}


def test_functional_calls_removes_its_hooks_on_error_and_restores_the_mode():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x).view(7, 7)

    model = Broken().train()
    with pytest.raises(RuntimeError):
        functional_calls(model, torch.randn(2, 3))
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    assert model.training
    with pytest.raises(DTypeError):
        functional_calls(lambda x: x, torch.randn(2))


# ------------------------------------------------------------------- bad input
def test_bad_input():
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(8, 6)
    with pytest.raises(DTypeError, match="nn.Module"):
        convert_torch_model(lambda v: v, x)
    with pytest.raises(SpikingAttnError, match="calibration set is empty"):
        convert_torch_model(model, torch.empty(0, 6))
    with pytest.raises(ShapeError, match=r"calibration_data of shape \(8, 5\) does not fit the model"):
        convert_torch_model(model, torch.randn(8, 5))
    with pytest.raises(DTypeError, match="calibration_data must be a tensor"):
        convert_torch_model(model, [[0.0] * 6])
    with pytest.raises(SpikingAttnError, match="unknown method"):
        convert_torch_model(model, x, "burst")
    with pytest.raises(SpikingAttnError, match="timesteps"):
        convert_torch_model(model, x, "rate", [])
    with pytest.raises(ShapeError, match=r"evaluation\['x'\]"):
        convert_torch_model(model, x, evaluation={"x": torch.randn(4, 5)})
    with pytest.raises(ShapeError, match=r"evaluation\['y'\]"):
        convert_torch_model(model, x, evaluation={"x": x, "y": torch.zeros(3, dtype=torch.long)})
    with pytest.raises(SpikingAttnError, match="percentile"):
        convert_torch_model(model, x, percentile=0)
    spiking = convert_torch_model(model, x, "rate", 4).model
    with pytest.raises(ShapeError, match=r"x must be \[B, 6\]"):
        spiking(torch.randn(4, 5))


# ------------------------------------------------------------------- deployment and energy of converted models
@pytest.fixture(scope="module")
def converted_cnn(digits):
    x, y, xt, yt = digits
    images, test_images = x.reshape(-1, 1, 8, 8), xt.reshape(-1, 1, 8, 8)
    dense = _trained_cnn(images, y)
    return dense, convert_torch_model(dense, images[:256], "rate", 8).model, test_images, yt


@pytest.mark.parametrize("precision", ["float", "fixed"])
def test_a_converted_cnn_runs_on_lava_spike_for_spike(converted_cnn, digits, precision):
    from spiking_attn.hardware.lava import deploy

    dense, spiking, test_images, yt = converted_cnn
    calibration = (digits[0].reshape(-1, 1, 8, 8)[:64], None) if precision == "fixed" else None
    run = deploy(spiking, test_images[:2], precision=precision, calibration=calibration, labels=yt[:2])
    assert run.spike_agreement() == 1.0
    assert run.report()["prediction_agreement"] == 1.0
    with pytest.raises(SpikingAttnError, match="no cue"):
        deploy(spiking, test_images[:2], cue=torch.zeros(2, dtype=torch.long))
    with pytest.raises(SpikingAttnError, match=r"inputs must be \[S, 1, 8, 8\]"):
        deploy(spiking, test_images[:2, :, :4])


def test_the_graph_of_a_converted_cnn_reproduces_its_spikes_and_logits(converted_cnn):
    import numpy as np

    from spiking_attn.graph import export_graph, simulate, torch_population_spikes

    _, spiking, test_images, _ = converted_cnn
    graph = export_graph(spiking, test_images[:5])
    simulated = simulate(graph)
    reference, logits = torch_population_spikes(spiking, test_images[:5])
    assert set(reference) == {"stages.1", "stages.3"}
    for name, spikes in reference.items():
        assert np.array_equal(simulated[name], spikes), name
    readout = graph.readout
    assert np.allclose(readout.logits(simulated[readout.source]), logits, atol=1e-9)


def test_convolution_operations_are_counted_exactly():
    from spiking_attn.opcount import count_ops

    conv = nn.Conv2d(2, 3, 3, padding=1, stride=2)
    x = torch.zeros(1, 2, 5, 5)
    x[0, 0, 0, 0] = x[0, 1, 2, 2] = x[0, 1, 4, 3] = 1.0  # three spikes
    model = nn.Sequential(conv)
    report = count_ops(model, x, event_driven=True)
    # outputs at rows/cols 0, 2, 4 with a 3x3 window (padding 1): count the windows holding each spike
    windows = 0
    for (i, j) in ((0, 0), (2, 2), (4, 3)):
        windows += sum(1 for oi in (0, 2, 4) for oj in (0, 2, 4) if abs(oi - i) <= 1 and abs(oj - j) <= 1)
    assert report.totals()["acs"] == windows * 3  # every output channel reads the spike
    dense_report = count_ops(model, torch.rand(1, 2, 5, 5), event_driven=False)
    assert dense_report.totals()["macs"] == 3 * 3 * 3 * (2 * 3 * 3)  # outputs x kernel entries


def test_a_converted_cnn_is_costed_beside_its_dense_twin(converted_cnn):
    from spiking_attn.hardware.energy import estimate

    dense, spiking, test_images, yt = converted_cnn
    report = estimate(spiking, test_images[:32], "45nm", labels=yt[:32], twin=dense)
    assert report.to_dict()["snn"]["synaptic_ops"] > 0 and report.to_dict()["ann"]["macs"] > 0
    assert report.accuracy["snn"] is not None and report.accuracy["ann"] is not None
