import pytest
import torch

from spiking_attn.data import digit_tokens, load_digits_tokens, load_task, make_cue_task, shift_digits
from spiking_attn.encoders import LatencyEncoder, RateEncoder, make_encoder
from spiking_attn.errors import SpikingAttnError


def test_digits_split_is_fixed_and_tokenised():
    a, b = load_digits_tokens(), load_digits_tokens()
    assert a.x_train.shape == (1437, 8, 8) and a.x_test.shape == (360, 8, 8)
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    assert float(a.x_train.min()) >= 0 and float(a.x_train.max()) <= 1
    patches = load_digits_tokens("patches")
    assert patches.x_train.shape == (1437, 16, 4)
    img = a.x_train[0]  # [8, 8]; the patch at block row 1, block col 2 covers rows 2-3, cols 4-5
    assert torch.equal(patches.x_train[0, 1 * 4 + 2], img[2:4, 4:6].reshape(4))


def test_cue_task_label_is_the_cued_token_class():
    data = make_cue_task(num_train=50, num_test=10, seed=3)
    again = make_cue_task(num_train=50, num_test=10, seed=3)
    assert torch.equal(data.x_train, again.x_train) and torch.equal(data.cue_train, again.cue_train)
    assert data.num_cues == data.num_tokens == 12
    assert data.cue_train.shape == (50,) and data.cue_train.dtype == torch.int64
    assert int(data.cue_train.min()) >= 0 and int(data.cue_train.max()) < 12
    # the label is the class of the cued token: cued tokens of two samples are nearest neighbours
    # when their labels agree, and a token at another position does not tell the label
    cued = data.x_train[torch.arange(50), data.cue_train]  # [S, F]
    dist = torch.cdist(cued, cued) + torch.eye(50) * 1e9
    assert float((data.y_train[dist.argmin(1)] == data.y_train).float().mean()) > 0.95
    other = data.x_train[torch.arange(50), (data.cue_train + 1) % 12]
    dist = torch.cdist(other, other) + torch.eye(50) * 1e9
    assert float((data.y_train[dist.argmin(1)] == data.y_train).float().mean()) < 0.6
    assert data.context("train", torch.tensor([0, 1]))["cue"].tolist() == data.cue_train[:2].tolist()
    assert load_digits_tokens().context("test") == {}  # no cue on digits
    assert load_task("cue").num_classes == 4
    with pytest.raises(SpikingAttnError, match="task"):
        load_task("mnist")


def test_shift_augmentation_moves_pixels():
    data = load_digits_tokens()
    gen = torch.Generator().manual_seed(0)
    shifted = shift_digits(data.x_train[:64], gen)
    assert shifted.shape == (64, 8, 8)
    assert not torch.equal(shifted, data.x_train[:64])


def test_rate_encoder_rate_matches_input():
    enc = RateEncoder(400)
    x = torch.tensor([[0.1, 0.5, 0.9]])
    s = enc(x, generator=torch.Generator().manual_seed(0))
    assert s.shape == (400, 1, 3)
    torch.testing.assert_close(s.mean(0), x, atol=0.06, rtol=0)


def test_latency_encoder_fires_once_earlier_for_larger_inputs():
    s = LatencyEncoder(5)(torch.tensor([[1.0, 0.5, 0.0]]))
    assert s[:, 0, 0].tolist() == [1, 0, 0, 0, 0]
    assert s[:, 0, 1].tolist() == [0, 0, 1, 0, 0]
    assert s[:, 0, 2].sum() == 0


def test_encoder_errors():
    with pytest.raises(SpikingAttnError, match="encoder"):
        make_encoder("delta", 4)
    with pytest.raises(SpikingAttnError, match="timesteps"):
        make_encoder("direct", 0)
    with pytest.raises(SpikingAttnError, match=r"\[0, 1\]"):
        RateEncoder(4)(torch.tensor([1.5]))
    with pytest.raises(SpikingAttnError, match="NaN"):
        make_encoder("direct", 2)(torch.tensor([float("nan")]))


def test_shift_augmentation_keeps_patch_layout():
    rows, patches = load_digits_tokens("rows"), load_digits_tokens("patches")
    a = shift_digits(rows.x_train[:32], torch.Generator().manual_seed(5))
    b = shift_digits(patches.x_train[:32], torch.Generator().manual_seed(5))
    # same shifts applied to the same images, seen through the two token layouts
    assert torch.equal(b[:, 1 * 4 + 2], a[:, 2:4, 4:6].reshape(-1, 4))


def test_digits_as_rows_and_columns():
    from spiking_attn.data import digit_tokens, load_task, shift_digits

    rows, both = load_task("digits_rows"), load_task("digits_rowcol")
    assert both.x_train.shape == (len(rows.x_train), 16, 8) and both.num_tokens == 16 and both.in_features == 8
    assert torch.equal(both.x_train[:, :8], rows.x_train) and torch.equal(both.y_test, rows.y_test)  # the same split
    assert torch.equal(both.x_test[:, 8:], rows.x_test.transpose(1, 2))  # token 8 + j is column j
    shifted = shift_digits(both.x_train[:32], torch.Generator().manual_seed(0))
    assert torch.equal(shifted, digit_tokens(shifted[:, :8], "rows+columns"))  # rows and columns of one image
    assert not torch.equal(shifted, both.x_train[:32])
    assert torch.equal(shifted[:, :8], shift_digits(rows.x_train[:32], torch.Generator().manual_seed(0)))


def test_digits_default_tokens_are_row_windows():
    windows, rows = load_task("digits"), load_task("digits_rows")
    assert windows.x_train.shape == (1437, 8, 40) and windows.in_features == 40 and windows.num_tokens == 8
    assert torch.equal(windows.y_train, rows.y_train) and torch.equal(windows.y_test, rows.y_test)  # the same split
    img, tokens = rows.x_test[7], windows.x_test[7]  # [8, 8], [8, 40]
    for i in range(8):  # token i holds rows i-2 .. i+2, zero rows past the edges
        for j, r in enumerate(range(i - 2, i + 3)):
            expected = img[r] if 0 <= r < 8 else torch.zeros(8)
            assert torch.equal(tokens[i, 8 * j:8 * (j + 1)], expected), (i, r)
    a = shift_digits(windows.x_train[:32], torch.Generator().manual_seed(2))
    b = shift_digits(rows.x_train[:32], torch.Generator().manual_seed(2))
    assert a.shape == (32, 8, 40) and not torch.equal(a, windows.x_train[:32])
    assert torch.equal(a, digit_tokens(b, "row_windows"))  # the same shifts, then windowed again
    with pytest.raises(SpikingAttnError, match="tokens"):
        digit_tokens(rows.x_test[:2], "columns")
