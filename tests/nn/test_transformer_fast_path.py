"""An all-``False`` padding mask takes the unmasked (faster, flash-capable) attention path with the same result."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cellformers.nn import TransformerEncoder


def test_unpadded_batch_attends_without_mask(monkeypatch):
    torch.manual_seed(0)
    enc = TransformerEncoder(d_model=16, n_layers=2, n_heads=2, d_ff=32).eval()
    x = torch.randn(3, 7, 16)
    all_false = torch.zeros(3, 7, dtype=torch.bool)
    h = x
    for layer in enc.layers:  # the blocks themselves, with the (all-False) mask
        h = layer(h, all_false)
    reference = enc.norm(h)

    masks = []
    sdpa = F.scaled_dot_product_attention

    def spy(*args, attn_mask=None, **kwargs):
        masks.append(attn_mask)
        return sdpa(*args, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    no_padding = enc(x, all_false)
    assert len(masks) == 2
    assert all(m is None for m in masks)
    torch.testing.assert_close(no_padding, reference, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(no_padding, enc(x))

    masks.clear()
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[1, 5:] = True
    enc(x, pad)
    assert all(m is not None for m in masks)  # real padding keeps the mask
