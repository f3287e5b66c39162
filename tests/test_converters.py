"""The converter's building blocks: the QCFS activation, and its exact match with a reset-by-subtraction
integrate-and-fire population at T = L."""
import pytest
import torch

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
