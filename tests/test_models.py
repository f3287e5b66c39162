import pytest
import torch

from spiking_attn.errors import DTypeError, NonFiniteError, ShapeError, SpikingAttnError
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


def test_learnable_neuron_parameters_from_the_config():
    model = build_model(ModelConfig(**SMALL, learn_threshold=True, learn_decay=True))
    names = {n for n, _ in model.named_parameters()}
    assert {"blocks.0.attn.q_lif.vth", "blocks.0.attn.q_lif.dv", "head_lif.du"} <= names
    assert "head_lif.bias" not in names  # learn_threshold trains the threshold only
    assert "head_lif.bias" in {n for n, _ in build_model(ModelConfig(**SMALL, learn_bias=True)).named_parameters()}
    model(torch.rand(4, 6, 8)).sum().backward()
    assert model.blocks[0].attn.q_lif.vth.grad is not None
    sj = build_model(ModelConfig(**SMALL, learn_threshold=True, engine="spikingjelly"))
    sj(torch.rand(4, 6, 8)).sum().backward()  # the spikingjelly engine trains neuron parameters too
    assert sj.blocks[0].attn.q_lif.vth.grad is not None


def test_per_channel_neuron_parameters():
    model = build_model(ModelConfig(**SMALL, per_channel=True, learn_threshold=True))
    assert model.blocks[0].attn.q_lif.vth.shape == (16,)
    assert model.blocks[0].mlp.fc1_lif.vth.shape == (64,)  # hidden width, mlp_ratio 4
    assert model.head_lif.dv.shape == (16,)
    model(torch.rand(4, 6, 8)).sum().backward()
    assert model.head_lif.vth.grad.shape == (16,)


CUED = dict(SMALL, num_cues=5)


@pytest.mark.parametrize("kind", ["spiking", "dense"])
def test_cue_reaches_the_model(kind):
    model = build_model(ModelConfig(**CUED, model=kind)).eval()
    x = torch.rand(4, 6, 8)
    with torch.no_grad():
        model.cue_embed.linear.weight.mul_(8.0)  # at initialisation the cue token barely fires
        by_index = model(x, cue=torch.tensor([0, 1, 2, 4]))
        by_vector = model(x, cue=torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 4]), 5).float())
        other = model(x, cue=torch.tensor([3, 3, 3, 3]))
        none = model(x)
    assert by_index.shape == (4, 3)
    torch.testing.assert_close(by_index, by_vector)
    assert not torch.allclose(by_index, other)
    assert none.shape == (4, 3)


def test_cue_is_encoded_as_spikes_and_passed_to_every_block():
    model = build_model(ModelConfig(**{**CUED, "depth": 2}))
    seen = []
    for block in model.blocks:
        block.register_forward_hook(lambda _m, _a, kwargs, _o: seen.append(kwargs["cue"]), with_kwargs=True)
    model(torch.rand(3, 6, 8), cue=torch.tensor([0, 4, 2]))
    assert len(seen) == 2 and all(c.shape == (3, 3, 5) for c in seen)  # [T, B, C]
    assert torch.equal(seen[0][:, 1], torch.tensor([[0.0, 0, 0, 0, 1]] * 3))  # one-hot spike train
    report = spike_driven_report(model, torch.rand(3, 6, 8), cue=torch.tensor([0, 4, 2]))
    assert "cue_embed.linear" in report.checked and report.non_binary == ["embed.linear"]


def test_twins_with_cues_share_parameter_names():
    spiking, dense = build_model(ModelConfig(**CUED)), build_model(ModelConfig(**CUED, model="dense"))
    assert {n: p.shape for n, p in spiking.named_parameters()} == {n: p.shape for n, p in dense.named_parameters()}


def test_bad_cues():
    model = build_model(ModelConfig(**CUED))
    x = torch.rand(2, 6, 8)
    with pytest.raises(SpikingAttnError, match=r"cue indices must lie in \[0, 5\)"):
        model(x, cue=torch.tensor([0, 5]))
    with pytest.raises(ShapeError, match=r"index cue must have shape \[B\]"):
        model(x, cue=torch.tensor([0, 1, 2]))
    with pytest.raises(ShapeError, match="vector cue"):
        model(x, cue=torch.rand(2, 4))
    with pytest.raises(DTypeError, match="dtype torch.bool"):
        model(x, cue=torch.tensor([True, False]))
    with pytest.raises(DTypeError, match="cue must be a torch.Tensor"):
        model(x, cue=[0, 1])
    with pytest.raises(NonFiniteError, match="cue"):
        model(x, cue=torch.full((2, 5), float("nan")))
    with pytest.raises(SpikingAttnError, match="num_cues=0"):
        build_model(ModelConfig(**SMALL))(x, cue=torch.tensor([0, 1]))


def test_config_errors():
    with pytest.raises(SpikingAttnError, match="timesteps"):
        ModelConfig(**{**SMALL, "timesteps": 0})
    with pytest.raises(SpikingAttnError, match="attention"):
        ModelConfig(**SMALL, attention="softmax")
    with pytest.raises(SpikingAttnError, match="unknown config field"):
        ModelConfig.from_dict({**SMALL, "colour": "red"})
    with pytest.raises(SpikingAttnError, match="unknown mechanism 'thalamus'; choose one of: none, thalamic"):
        ModelConfig(**SMALL, mechanism="thalamus")
    with pytest.raises(SpikingAttnError, match="unknown option"):
        ModelConfig(**SMALL, mechanism_options={"areas": 3})
    with pytest.raises(SpikingAttnError, match="num_cues"):
        ModelConfig(**SMALL, num_cues=-1)
    with pytest.raises(DTypeError, match="learn_threshold"):
        ModelConfig(**SMALL, learn_threshold="no")
    with pytest.raises(SpikingAttnError, match="mlp_ratio"):
        ModelConfig(**SMALL, mlp_ratio=float("inf"))
    with pytest.raises(DTypeError, match="ModelConfig"):
        build_model(dict(SMALL))


def test_rate_encoded_cue_errors_name_the_cue_and_options_are_frozen():
    model = build_model(ModelConfig(**CUED, encoder="rate"))
    with pytest.raises(SpikingAttnError, match=r"cue must lie in \[0, 1\]"):
        model(torch.rand(2, 6, 8), cue=torch.full((2, 5), 2.0))
    config = ModelConfig(**CUED)
    with pytest.raises(TypeError, match="cannot be changed"):
        config.mechanism_options["x"] = 1
    assert type(config.to_dict()["mechanism_options"]) is dict  # plain data in checkpoints


def test_recorder_membranes_with_positional_arguments():
    from spiking_attn.neuron import LIFPopulation

    class Caller(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.pop = LIFPopulation(dv=0.3)

        def forward(self, x):
            return self.pop(x, None, None, False)  # every argument positional

    model = Caller()
    x = torch.rand(4, 2, 6) * 2
    with SpikeRecorder(model, membrane=True) as rec:
        out = model(x)
    assert isinstance(out, torch.Tensor)
    torch.testing.assert_close(rec.membranes["pop"], model.pop(x, return_membrane=True).membrane)
