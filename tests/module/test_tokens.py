from __future__ import annotations

import pytest
import torch

from cellformers._utils import counter_uniform
from cellformers.module._tokens import equal_groups, pack_left, ranks, scatter_to_genes, uniform_draws


def test_uniform_draws_seeded_or_torch():
    seeds = torch.tensor([[3.0], [8.0]])
    seeded = uniform_draws(seeds, 5, 2, n_cells=2, device="cpu", seeded=True)
    torch.testing.assert_close(seeded, counter_uniform(torch.tensor([3, 8]), 5, salt=2))
    torch.manual_seed(0)
    fresh = uniform_draws(seeds, 5, 2, n_cells=2, device="cpu", seeded=False)
    torch.manual_seed(0)
    torch.testing.assert_close(fresh, torch.rand(2, 5))
    # no seeds: torch's generator even when seeded draws are asked for
    assert uniform_draws(None, 5, 2, n_cells=3, device="cpu", seeded=True).shape == (3, 5)


def test_ranks_is_the_double_argsort():
    u = torch.rand(4, 30)
    torch.testing.assert_close(ranks(u), torch.argsort(torch.argsort(u, dim=1), dim=1))


@pytest.mark.parametrize("n_groups", [1, 3, 7])
def test_equal_groups_sizes_differ_by_at_most_one(n_groups):
    groups = equal_groups(torch.rand(5, 20), n_groups)
    for row in groups:
        sizes = torch.bincount(row, minlength=n_groups)
        assert int(sizes.max() - sizes.min()) <= 1
        assert int(sizes.sum()) == 20


def test_pack_left_keeps_order_and_pads():
    keep = torch.tensor([[False, True, False, True, True], [True, False, False, False, False], [False] * 5])
    index, padding = pack_left(keep)
    assert index.shape == padding.shape == (3, 3)
    assert index[0].tolist() == [1, 3, 4]
    assert index[1, 0] == 0
    assert padding.tolist() == [[False] * 3, [False, True, True], [True] * 3]


def test_scatter_to_genes_drops_padding():
    genes = torch.zeros(2, 4)
    index = torch.tensor([[2, 0, -1], [3, 4, 1]])  # -1 and 4 (= n_genes) are padding
    src = torch.tensor([[1.0, 2.0, 9.0], [3.0, 9.0, 4.0]])
    out = scatter_to_genes(genes, index, src)
    assert out.tolist() == [[2.0, 0.0, 1.0, 0.0], [0.0, 4.0, 0.0, 3.0]]
    assert genes.abs().sum() == 0  # the input is left alone
    # trailing dimensions (per-gene vectors or bin probabilities) follow the index
    out3 = scatter_to_genes(torch.zeros(2, 4, 3), index, src[..., None].expand(-1, -1, 3))
    torch.testing.assert_close(out3, out[..., None].expand(-1, -1, 3))
