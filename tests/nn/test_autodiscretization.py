from __future__ import annotations

import pytest
import torch

from cellformers.nn import AutoDiscretizationEmbedding


@pytest.mark.parametrize("shape", [(7,), (3, 5), (2, 4, 6)])
def test_shapes(shape):
    emb = AutoDiscretizationEmbedding(n_out=16, n_bins=10)
    x = torch.rand(shape) * 5
    assert emb(x).shape == (*shape, 16)
    w = emb.bin_weights(x)
    assert w.shape == (*shape, 10)
    torch.testing.assert_close(w.sum(-1), torch.ones(shape))


def test_equation_of_section_3_3():
    torch.manual_seed(0)
    emb = AutoDiscretizationEmbedding(n_out=8, n_bins=6, alpha=0.5, negative_slope=0.1)
    x = torch.tensor([0.0, 0.7, 3.2])
    v1 = x[:, None] * emb.w1.weight[:, 0] + emb.w1.bias
    v2 = torch.where(v1 > 0, v1, 0.1 * v1)
    v3 = v2 @ emb.w2.weight.T + emb.w2.bias + 0.5 * v2
    v4 = torch.softmax(v3, -1)
    torch.testing.assert_close(emb(x), v4 @ emb.table.weight)


def test_mask_and_padding_get_learned_vectors():
    emb = AutoDiscretizationEmbedding(n_out=4, n_bins=5)
    x = torch.tensor([[1.0, 2.0, 3.0]])
    mask = torch.tensor([[False, True, False]])
    pad = torch.tensor([[False, False, True]])
    e = emb(x, mask=mask, padding_mask=pad)
    torch.testing.assert_close(e[0, 1], emb.emb_mask.detach())
    torch.testing.assert_close(e[0, 2], emb.emb_pad.detach())
    torch.testing.assert_close(e[0, 0], emb(x)[0, 0])
    # the embedding of a value does not depend on sentinel numbers: 102 is an ordinary value
    assert not torch.allclose(emb(torch.tensor([102.0]))[0], emb.emb_mask)
    e.sum().backward()
    assert emb.emb_mask.grad is not None
    assert emb.emb_pad.grad is not None


def test_close_values_have_close_bin_weights():
    # App. 3, Fig. 1: weights change smoothly with the value
    torch.manual_seed(0)
    emb = AutoDiscretizationEmbedding(n_out=8, n_bins=100)
    w = emb.bin_weights(torch.tensor([2.00, 2.01, 6.0]))
    near = (w[0] - w[1]).abs().sum()
    far = (w[0] - w[2]).abs().sum()
    assert near < 0.1 * far


def test_too_few_bins():
    with pytest.raises(ValueError, match="n_bins"):
        AutoDiscretizationEmbedding(4, n_bins=1)
