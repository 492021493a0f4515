from __future__ import annotations

import pytest
import torch

from cellformers.nn import (
    AutoDiscretizationEmbedding,
    EqualBinEmbedding,
    RoundBinEmbedding,
    UpBinEmbedding,
    make_value_embedding,
)


@pytest.mark.parametrize("name", ["autobin", "round", "upbin", "equalbin"])
def test_factory_shapes_and_special_tokens(name):
    emb = make_value_embedding(name, n_out=12, n_bins=20)
    x = torch.rand(3, 5) * 4
    mask = torch.zeros(3, 5, dtype=torch.bool)
    mask[0, 0] = True
    pad = torch.zeros(3, 5, dtype=torch.bool)
    pad[2, 4] = True
    e = emb(x, mask=mask, padding_mask=pad)
    assert e.shape == (3, 5, 12)
    torch.testing.assert_close(e[0, 0], emb.emb_mask.detach())
    torch.testing.assert_close(e[2, 4], emb.emb_pad.detach())


def test_factory_classes_and_bad_name():
    assert isinstance(make_value_embedding("autobin", 4), AutoDiscretizationEmbedding)
    assert isinstance(make_value_embedding("round", 4), RoundBinEmbedding)
    with pytest.raises(ValueError, match="value_embedding"):
        make_value_embedding("quantile", 4)


def test_round_and_upbin_indices():
    x = torch.tensor([0.0, 0.4, 0.6, 1.01, 1.99, 50.0])
    assert RoundBinEmbedding(4, n_bins=10).bin_index(x).tolist() == [0, 0, 1, 1, 2, 9]
    assert UpBinEmbedding(4, n_bins=10).bin_index(x).tolist() == [0, 1, 1, 2, 2, 9]
    # the paper's example: rounding separates 1.99 from 2.01 and merges 1.01 with 1.99 (up-bin)
    r = RoundBinEmbedding(4, n_bins=10).bin_index(torch.tensor([1.99, 2.01]))
    assert r[0] == r[1]


def test_equalbin_fit_gives_equal_frequencies():
    torch.manual_seed(0)
    emb = EqualBinEmbedding(4, n_bins=5)
    values = torch.cat([torch.zeros(1000), torch.rand(4000) ** 3 * 8])
    emb.fit(values)
    idx = emb.bin_index(values)
    assert (idx[:1000] == 0).all()
    counts = torch.bincount(idx[1000:], minlength=5)[1:]
    assert counts.min() > 900
    assert counts.max() < 1100
    # edges are saved with the weights
    assert "bin_edges" in emb.state_dict()
