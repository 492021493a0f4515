from __future__ import annotations

import torch

from cellformers.nn import CategoricalValueEncoder, ContinuousValueEncoder


def test_continuous_shape_and_mask():
    enc = ContinuousValueEncoder(16).eval()
    v = torch.tensor([[0.0, 3.0, 50.0], [1.0, 2.0, 0.0]])
    mask = torch.tensor([[False, True, False], [False, False, True]])
    h = enc(v, mask)
    assert h.shape == (2, 3, 16)
    # masked positions all get the same <mask> vector, whatever their value
    torch.testing.assert_close(h[0, 1], h[1, 2])
    torch.testing.assert_close(h[0, 1], enc.mask_embedding)


def test_continuous_is_ordered_input():
    # the FC encoder sees the value as a number: equal values give equal embeddings, different ones differ
    enc = ContinuousValueEncoder(8).eval()
    h = enc(torch.tensor([[2.0, 2.0, 7.0]]))
    torch.testing.assert_close(h[0, 0], h[0, 1])
    assert not torch.allclose(h[0, 0], h[0, 2])


def test_categorical_shape_mask_index():
    enc = CategoricalValueEncoder(n_bins=5, d_model=8).eval()
    v = torch.tensor([[0, 4, 2]])
    h = enc(v, torch.tensor([[False, False, True]]))
    assert h.shape == (1, 3, 8)
    mask_vec = enc.norm(enc.embedding.weight[5])
    torch.testing.assert_close(h[0, 2], mask_vec)
