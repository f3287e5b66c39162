import pytest
import torch

from spiking_attn.attention import DenseSelfAttention, SpikingSelfAttention, linear_attention_product
from spiking_attn.block import DenseTransformerBlock, SpikingTransformerBlock
from spiking_attn.errors import ShapeError, SpikingAttnError
from spiking_attn.layers import LinearBN


def spikes(*shape, p=0.3):
    return (torch.rand(*shape) < p).float()


def excited(attn):
    """Eval mode with weights large enough that the populations fire on sparse spike input."""
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(attn, name).linear.weight.mul_(6.0)
    return attn.eval()


def masked_quadratic(q, k, v):
    """The causal product the definition states: scores ``Q K^T`` with future keys zeroed, times ``V``."""
    n = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)).masked_fill(~torch.ones(n, n, dtype=torch.bool).tril(), 0.0)
    return scores @ v


@pytest.mark.parametrize("n", [1, 7, 64, 65, 130, 300])  # one block, exactly one, a remainder, several
def test_causal_product_in_linear_time_equals_the_masked_quadratic_form_exactly(n):
    from spiking_attn import attention

    torch.manual_seed(n)
    q, k, v = spikes(2, 3, 2, n, 16), spikes(2, 3, 2, n, 16), spikes(2, 3, 2, n, 16)
    assert torch.equal(linear_attention_product(q, k, v, causal=True), masked_quadratic(q, k, v))
    for chunk in (1, 4, 5):  # other block sizes, the state carried across many blocks
        assert torch.equal(attention._causal_blocks(q, k, v, chunk), masked_quadratic(q, k, v))
    qr, kr, vr = (torch.randn(2, n, 8, dtype=torch.float64, requires_grad=True) for _ in range(3))
    ours, ref = linear_attention_product(qr, kr, vr, causal=True), masked_quadratic(qr, kr, vr)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-10)  # real values: the same up to rounding
    g1 = torch.autograd.grad(ours.sum(), (qr, kr, vr))
    g2 = torch.autograd.grad(ref.sum(), (qr, kr, vr))
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-10)


def test_ssa_product_order_is_exact():
    q, k, v = spikes(4, 2, 3, 20, 8), spikes(4, 2, 3, 20, 8), spikes(4, 2, 3, 20, 8)
    assert torch.equal(linear_attention_product(q, k, v, causal=False), (q @ k.transpose(-2, -1)) @ v)


@pytest.mark.parametrize("kind", ["ssa", "sdsa"])
def test_spiking_attention_shapes_and_binary_routing(kind):
    attn = SpikingSelfAttention(32, heads=4, kind=kind)
    x = spikes(4, 3, 10, 32)
    out = attn(x)
    assert out.shape == (4, 3, 10, 32)
    ctx = spikes(4, 3, 6, 32)  # cross-attention: 6 key/value tokens for 10 queries
    assert attn(x, ctx).shape == (4, 3, 10, 32)


@pytest.mark.parametrize("kind", ["ssa", "sdsa"])
def test_spiking_causal_mask_hides_future_tokens(kind):
    attn = excited(SpikingSelfAttention(16, heads=2, kind=kind, causal=True))
    x = spikes(3, 2, 8, 16)
    y = x.clone()
    y[:, :, 5:] = spikes(3, 2, 3, 16, p=0.7)  # change only tokens 5..7
    a, b = attn(x), attn(y)
    assert torch.equal(a[:, :, :5], b[:, :, :5])
    assert not torch.equal(a[:, :, 5:], b[:, :, 5:])


@pytest.mark.parametrize("kind", ["softmax", "ssa", "sdsa"])
def test_dense_causal_mask_hides_future_tokens(kind):
    attn = DenseSelfAttention(16, heads=2, kind=kind, causal=True).eval()
    x = torch.randn(2, 8, 16)
    y = x.clone()
    y[:, 6:] = torch.randn(2, 2, 16)
    torch.testing.assert_close(attn(x)[:, :6], attn(y)[:, :6])


def test_non_causal_attention_mixes_tokens():
    attn = excited(SpikingSelfAttention(16, heads=2, kind="sdsa"))
    x = spikes(3, 2, 8, 16)
    y = x.clone()
    y[:, :, 7] = 1 - y[:, :, 7]
    assert not torch.equal(attn(x)[:, :, 0], attn(y)[:, :, 0])


def test_sdsa_cost_is_linear_in_tokens():
    # SDSA never forms an N x N matrix: memory of intermediate results grows linearly.
    attn = SpikingSelfAttention(16, heads=2, kind="sdsa")
    assert attn(spikes(2, 1, 4096, 16)).shape == (2, 1, 4096, 16)


def test_dense_and_spiking_twins_share_parameter_names():
    for kind in ("ssa", "sdsa"):
        s = SpikingTransformerBlock(32, 4, kind)
        d = DenseTransformerBlock(32, 4, "softmax")
        s_params = {n: p.shape for n, p in s.named_parameters()}
        d_params = {n: p.shape for n, p in d.named_parameters()}
        assert s_params == d_params


def test_cross_attention_rejects_mismatched_context():
    attn = SpikingSelfAttention(16, heads=2)
    with pytest.raises(ShapeError, match="time steps"):
        attn(spikes(4, 2, 5, 16), spikes(3, 2, 5, 16))  # T mismatch
    with pytest.raises(ShapeError, match="rank"):
        attn(spikes(2, 5, 16))
    with pytest.raises(ShapeError, match="last dimension"):
        attn(spikes(4, 2, 5, 8))
    with pytest.raises(ShapeError, match="causal"):
        SpikingSelfAttention(16, heads=2, causal=True)(spikes(4, 2, 5, 16), spikes(4, 2, 3, 16))
    with pytest.raises(SpikingAttnError, match="divisible"):
        SpikingSelfAttention(10, heads=3)
    with pytest.raises(SpikingAttnError, match="attention kind"):
        SpikingSelfAttention(16, kind="softmax")


def test_nan_input_rejected():
    x = spikes(2, 1, 4, 16)
    x[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        SpikingSelfAttention(16, heads=2)(x)


def test_linear_bn_folds_exactly():
    layer = LinearBN(12, 7)
    layer.train()
    for _ in range(5):
        layer(torch.randn(64, 12) * 2 + 1)  # populate running statistics
    layer.eval()
    x = torch.randn(3, 5, 12)
    torch.testing.assert_close(layer.fold()(x), layer(x), atol=1e-5, rtol=1e-5)


def test_dense_attention_map_is_the_per_head_softmax():
    from spiking_attn.attention import attention_map

    attn = DenseSelfAttention(16, heads=2, kind="softmax", causal=True).eval()
    q, k = torch.randn(3, 5, 16), torch.randn(3, 5, 16)
    weights = attention_map(q, k, attn.heads, attn.causal, attn.scale)  # [B, N, M]
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, 5))
    assert torch.all(weights.triu(1) == 0)  # no weight on future keys
    qh, kh = q.reshape(3, 5, 2, 8).transpose(1, 2), k.reshape(3, 5, 2, 8).transpose(1, 2)
    mask = torch.ones(5, 5, dtype=torch.bool).tril()
    per_head = (qh @ kh.transpose(-2, -1) * attn.scale).masked_fill(~mask, float("-inf")).softmax(-1)
    torch.testing.assert_close(weights, per_head.mean(1))
