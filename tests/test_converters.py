"""The converter's building blocks: the QCFS activation, and its exact match with a reset-by-subtraction
integrate-and-fire population at T = L."""
import pytest
import torch

from torch import nn

from spiking_attn.converters.calibration import activation_scales, nearest_rank
from spiking_attn.converters.qcfs import QCFS, floor_ste
from spiking_attn.errors import SpikingAttnError
from spiking_attn.neuron import LIFPopulation


def test_qcfs_levels_clip_and_shift():
    act = QCFS(levels=4, clip=2.0)
    z = torch.tensor([-1.0, 0.0, 0.24, 0.26, 0.74, 1.0, 1.9, 2.0, 5.0])
    # lambda * clip(floor(z L / lambda + 1/2) / L, 0, 1) with L = 4, lambda = 2: steps of 0.5, rounded
    expected = torch.tensor([0.0, 0.0, 0.0, 0.5, 0.5, 1.0, 2.0, 2.0, 2.0])
    assert torch.equal(act(z), expected)
    assert "levels=4" in repr(act)


def test_qcfs_gradients_pass_the_floor_and_reach_the_clip():
    act = QCFS(levels=4, clip=2.0)
    z = torch.tensor([-1.0, 0.3, 1.1, 3.0], requires_grad=True)
    act(z).sum().backward()
    assert z.grad.tolist() == [0.0, 1.0, 1.0, 0.0]  # straight through inside [0, lambda], zero outside
    # d/d lambda: above the clip the output is lambda itself (1); inside, q - z / lambda; below, 0
    q = torch.floor(torch.tensor([0.3, 1.1]) * 4 / 2 + 0.5) / 4
    expected = float((q - torch.tensor([0.3, 1.1]) / 2).sum()) + 1.0
    assert float(act.clip.grad) == pytest.approx(expected)
    x = torch.tensor([0.2, 1.7], requires_grad=True)
    floor_ste(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0]


@pytest.mark.parametrize("levels, clip", [(4, 1.0), (8, 2.5), (16, 0.7)])
def test_a_subtractive_if_population_at_t_equal_l_reproduces_qcfs_exactly(levels, clip):
    # the conversion rule theta = lambda, dv = 0, reset by subtraction, v(0) = theta / 2: a constant input
    # held for T = L steps gives spike count * lambda / T equal to the QCFS output, value for value
    g = torch.Generator().manual_seed(levels)
    z = (torch.rand(4000, generator=g, dtype=torch.float64) * 1.6 - 0.3) * clip
    act = QCFS(levels=levels, clip=clip).double()
    lam = float(act.clip.detach())  # the stored lambda (the population stores vth in its own precision)
    pop = LIFPopulation(dv=0.0, vth=lam, reset="subtract", v_init=0.5).double()
    spikes = pop(z.expand(levels, -1).contiguous().unsqueeze(1))  # [T, 1, n]
    rate_out = spikes.sum(0).squeeze(0) * lam / levels
    with torch.no_grad():
        assert torch.allclose(rate_out, act(z), rtol=0, atol=1e-12)
    # the zero reset, the default of the model's populations, does not
    hard = LIFPopulation(dv=0.0, vth=lam).double()(z.expand(levels, -1).contiguous().unsqueeze(1)).sum(0).squeeze(0)
    assert not torch.allclose(hard * lam / levels, act(z).detach(), atol=1e-6)


def test_qcfs_bad_options():
    with pytest.raises(SpikingAttnError, match="levels"):
        QCFS(levels=0)
    with pytest.raises(SpikingAttnError, match="clip must be a positive finite number"):
        QCFS(clip=0.0)
    with pytest.raises(SpikingAttnError, match="clip must be a positive finite number"):
        QCFS(clip=float("nan"))


# ------------------------------------------------------------------- calibration
def test_activation_scales_max_and_nearest_rank_percentile_by_hand():
    net = nn.Sequential(nn.Linear(1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].weight.fill_(2.0)
    x = torch.arange(1, 101, dtype=torch.float32).reshape(100, 1) - 10  # -9 .. 90
    # ReLU(2x): 9 zeros (x <= 0 gives 0: ten values -9..0), then 2, 4, ..., 180
    assert activation_scales(net, x, batch_size=7) == {"1": 180.0}
    outputs = torch.relu(2 * x).reshape(-1)
    assert activation_scales(net, x, mode="percentile", percentile=90)["1"] == 160.0  # rank 90 of 100
    assert nearest_rank(outputs, 90) == 160.0 and nearest_rank(outputs, 100) == 180.0
    assert nearest_rank(outputs, 0.5) == 0.0


def test_activation_scales_cover_every_activation_of_a_dense_twin_with_a_cue():
    from spiking_attn.models import ModelConfig, build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(in_features=8, num_tokens=6, num_classes=3, dim=16, heads=2, depth=1,
                                    num_cues=2, mechanism="pulvinar", model="dense"))
    x, cue = torch.rand(10, 6, 8), torch.tensor([0, 1] * 5)
    scales = activation_scales(model, x, cue, batch_size=4)
    expected = {n for n, m in model.named_modules() if isinstance(m, (nn.ReLU, nn.GELU, QCFS))}
    assert set(scales) == expected and "blocks.0.attn.area_act" in scales  # the areas' shared activation
    assert all(v >= 0 for v in scales.values())
    seen = []
    hook = model.blocks[0].attn.area_act.register_forward_hook(lambda m, a, o: seen.append(o.detach()))
    with torch.no_grad():
        model.eval()(x, cue)
    hook.remove()
    assert scales["blocks.0.attn.area_act"] == max(float(o.max()) for o in seen)  # pooled over its calls


def test_activation_scales_bad_input():
    net = nn.Sequential(nn.Linear(3, 3), nn.ReLU())
    x = torch.rand(4, 3)
    with pytest.raises(SpikingAttnError, match="calibration set is empty"):
        activation_scales(net, x[:0])
    with pytest.raises(SpikingAttnError, match="no module named 'nope'"):
        activation_scales(net, x, modules=["nope"])
    with pytest.raises(SpikingAttnError, match="mode"):
        activation_scales(net, x, mode="mean")
    with pytest.raises(SpikingAttnError, match="percentile must be a number in \\(0, 100\\]"):
        activation_scales(net, x, mode="percentile", percentile=0)
    with pytest.raises(SpikingAttnError, match="no activation module"):
        activation_scales(nn.Sequential(nn.Linear(3, 3)), x)
    with pytest.raises(Exception, match="NaN"):
        activation_scales(net, torch.full((2, 3), float("nan")))
    with pytest.raises(Exception):  # wrong shape: the model itself refuses it
        activation_scales(net, torch.rand(4, 5))
