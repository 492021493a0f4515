from __future__ import annotations

import pytest
import torch

from cellformers.nn import MultiheadSelfAttention, TransformerEncoder


@pytest.mark.parametrize("norm_first", [True, False])
def test_encoder_shapes(norm_first):
    enc = TransformerEncoder(d_model=16, n_layers=2, n_heads=4, d_ff=32, norm_first=norm_first, activation="relu")
    x = torch.randn(3, 5, 16)
    assert enc(x).shape == (3, 5, 16)


def test_padding_positions_do_not_influence_real_tokens():
    torch.manual_seed(0)
    enc = TransformerEncoder(d_model=16, n_layers=2, n_heads=2, d_ff=32).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    y = enc(x, pad)
    x2 = x.clone()
    x2[0, 4:] = 1e3
    y2 = enc(x2, pad)
    torch.testing.assert_close(y[0, :4], y2[0, :4])
    # without the mask the padded values do change the output
    assert not torch.allclose(enc(x2)[0, :4], y[0, :4])


def test_padded_batch_matches_unpadded_single():
    torch.manual_seed(0)
    enc = TransformerEncoder(d_model=8, n_layers=1, n_heads=2, d_ff=16).eval()
    x = torch.randn(1, 3, 8)
    padded = torch.cat([x, torch.zeros(1, 2, 8)], dim=1)
    mask = torch.tensor([[False, False, False, True, True]])
    torch.testing.assert_close(enc(padded, mask)[:, :3], enc(x), atol=1e-5, rtol=1e-5)


def test_fully_padded_row_is_finite():
    enc = TransformerEncoder(d_model=8, n_layers=1, n_heads=2, d_ff=16)
    y = enc(torch.randn(2, 3, 8), torch.ones(2, 3, dtype=torch.bool))
    assert torch.isfinite(y).all()


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        MultiheadSelfAttention(10, 3)


def test_gradient_checkpointing_same_gradients():
    torch.manual_seed(0)
    a = TransformerEncoder(d_model=8, n_layers=2, n_heads=2, d_ff=16)
    b = TransformerEncoder(d_model=8, n_layers=2, n_heads=2, d_ff=16, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 4, 8)
    a(x).sum().backward()
    b(x).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
