"""The analytic gradient of multihead linear self-attention's tokenwise MSE loss, against autograd."""
import pytest
import torch

from spiking_attn.errors import DTypeError, ShapeError
from spiking_attn.linear_attention import mhla_forward, mhla_mse_gradients


def _problem(b=3, n=5, d=6, heads=2, width=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    target = torch.randn(b, n, d, generator=g, dtype=torch.float64)
    weights = [torch.randn(heads, d, width, generator=g, dtype=torch.float64) * 0.5 for _ in range(3)]
    wo = torch.randn(heads, width, d, generator=g, dtype=torch.float64) * 0.5
    return x, target, (*weights, wo)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shape", [dict(), dict(b=1, n=1, d=3, heads=1, width=3), dict(b=2, n=7, d=8, heads=4, width=2)])
@pytest.mark.parametrize("scale", [None, 0.3])
def test_analytic_gradients_equal_autograd_in_float64(causal, shape, scale):
    x, target, weights = _problem(**shape)
    leaves = [t.clone().requires_grad_(True) for t in (x, *weights)]
    y = mhla_forward(*leaves, scale=scale, causal=causal)
    loss = (y - target).pow(2).sum() / (2 * x.shape[0] * x.shape[1])
    loss.backward()
    mine = mhla_mse_gradients(x, target, *weights, scale=scale, causal=causal)
    assert torch.allclose(mine["loss"], loss.detach(), atol=1e-12, rtol=0)
    for name, leaf in zip(("x", "wq", "wk", "wv", "wo"), leaves):
        assert mine[name].shape == leaf.shape
        assert torch.allclose(mine[name], leaf.grad, atol=1e-6, rtol=0), name
        assert float((mine[name] - leaf.grad).abs().max()) < 1e-10  # in practice to rounding


def test_the_causal_mask_keeps_the_future_out():
    x, _, weights = _problem(n=6)
    y = mhla_forward(x, *weights, causal=True)
    changed = x.clone()
    changed[:, 4:] += 1.0  # perturb the last two tokens
    assert torch.equal(mhla_forward(changed, *weights, causal=True)[:, :4], y[:, :4])
    assert not torch.equal(mhla_forward(changed, *weights)[:, :4], mhla_forward(x, *weights)[:, :4])


def test_bad_input_names_the_argument():
    x, target, (wq, wk, wv, wo) = _problem()
    with pytest.raises(ShapeError, match="wq"):
        mhla_forward(x, wq[:, :5], wk, wv, wo)
    with pytest.raises(ShapeError, match="wk"):
        mhla_forward(x, wq, wk[..., :3], wv, wo)
    with pytest.raises(ShapeError, match="wo"):
        mhla_forward(x, wq, wk, wv, wo[:, :3])
    with pytest.raises(ShapeError, match="target"):
        mhla_mse_gradients(x, target[:, :2], wq, wk, wv, wo)
    with pytest.raises(DTypeError, match="wv"):
        mhla_forward(x, wq, wk, wv.float(), wo)
    with pytest.raises(ShapeError, match="x"):
        mhla_forward(x[0], wq, wk, wv, wo)
