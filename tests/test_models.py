import pytest
import torch

from spiking_attn.errors import NonFiniteError, ShapeError, SpikingAttnError
from spiking_attn.models import ModelConfig, build_model
from spiking_attn.neuron import LIFPopulation
from spiking_attn.recorder import SpikeRecorder
from spiking_attn.spike_driven import spike_driven_report

SMALL = dict(in_features=8, num_tokens=6, num_classes=3, dim=16, depth=1, heads=2, timesteps=3)


@pytest.mark.parametrize("attention", ["ssa", "sdsa"])
@pytest.mark.parametrize("encoder", ["direct", "rate", "latency"])
def test_only_the_encoding_layer_sees_analog_input(attention, encoder):
    model = build_model(ModelConfig(**SMALL, attention=attention, encoder=encoder))
    report = spike_driven_report(model, torch.rand(4, 6, 8))
    assert len(report.checked) == 1 + 6 + 1  # embed, q k v out fc1 fc2, head
    expected = ["embed.linear"] if encoder == "direct" else []
    assert report.non_binary == expected


def test_spike_driven_report_catches_a_violation():
    class Leaky(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first = torch.nn.Linear(4, 4)
            self.second = torch.nn.Linear(4, 4)

        def forward(self, x):
            return self.second(self.first(x))  # no population in between: analog into `second`

    assert spike_driven_report(Leaky(), torch.rand(2, 4)).non_binary == ["first", "second"]


def test_recorder_finds_every_population_and_removes_hooks():
    model = build_model(ModelConfig(**SMALL))
    pops = [n for n, m in model.named_modules() if isinstance(m, LIFPopulation)]
    with SpikeRecorder(model) as rec:
        model(torch.rand(5, 6, 8))
        model(torch.rand(2, 6, 8))
    assert set(rec.spikes) == set(pops)
    s = rec.spikes["blocks.0.attn.q_lif"]
    assert s.shape == (3, 7, 6, 16)  # [T, 5 + 2, N, D]
    assert set(s.unique().tolist()) <= {0.0, 1.0}
    rates = rec.firing_rates()
    assert rates["blocks.0.attn.q_lif"] == pytest.approx(float(s.mean()))
    assert all(not m._forward_hooks for m in model.modules())


def test_dense_twin_parameter_names_match():
    spiking = build_model(ModelConfig(**SMALL))
    dense = build_model(ModelConfig(**SMALL, model="dense"))
    dense_params = {n: p.shape for n, p in dense.named_parameters()}
    spiking_params = {n: p.shape for n, p in spiking.named_parameters()}
    assert dense_params == spiking_params
    spiking.load_state_dict(dense.state_dict(), strict=False)  # weights copy by name
    assert torch.equal(spiking.blocks[0].attn.q.linear.weight, dense.blocks[0].attn.q.linear.weight)


def test_engines_give_identical_models():
    torch.manual_seed(3)
    native = build_model(ModelConfig(**SMALL)).eval()
    sj = build_model(ModelConfig(**{**SMALL, "engine": "spikingjelly"})).eval()
    sj.load_state_dict(native.state_dict())
    x = torch.rand(4, 6, 8)
    torch.testing.assert_close(native(x), sj(x))


def test_model_input_errors():
    model = build_model(ModelConfig(**SMALL))
    with pytest.raises(ShapeError, match="tokens"):
        model(torch.rand(2, 5, 8))
    with pytest.raises(ShapeError, match="last dimension"):
        model(torch.rand(2, 6, 7))
    with pytest.raises(ShapeError, match="time steps"):
        model(torch.rand(5, 2, 6, 8))  # pre-encoded with T=5, model has T=3
    with pytest.raises(ShapeError, match="rank"):
        model(torch.rand(6, 8))
    bad = torch.rand(2, 6, 8)
    bad[1, 2, 3] = float("inf")
    with pytest.raises(NonFiniteError):
        model(bad)
    with pytest.raises(SpikingAttnError, match="floating-point"):
        model(torch.ones(2, 6, 8, dtype=torch.int32))


def test_config_errors():
    with pytest.raises(SpikingAttnError, match="timesteps"):
        ModelConfig(**{**SMALL, "timesteps": 0})
    with pytest.raises(SpikingAttnError, match="attention"):
        ModelConfig(**SMALL, attention="softmax")
    with pytest.raises(SpikingAttnError, match="unknown config field"):
        ModelConfig.from_dict({**SMALL, "colour": "red"})


def test_learnable_neuron_parameters_from_the_config():
    model = build_model(ModelConfig(**SMALL, learn_threshold=True, learn_decay=True))
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.attn.q_lif.vth", "blocks.0.attn.q_lif.dv", "head_lif.bias", "head_lif.du"} <= names
    model(torch.rand(4, 6, 8)).sum().backward()
    assert model.blocks[0].attn.q_lif.vth.grad is not None
    with pytest.raises(SpikingAttnError, match="spikingjelly"):
        ModelConfig(**SMALL, learn_threshold=True, engine="spikingjelly")
