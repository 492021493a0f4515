from __future__ import annotations

import numpy as np
import pytest
import torch

from cellformers._utils import counter_uniform
from cellformers.module import GeneTokenModule


@pytest.fixture
def module():
    return GeneTokenModule([0, 1, -1, 2], n_tokens=5)


def test_log_normalize_sums_all_columns(module):
    x = torch.tensor([[1.0, 3.0, 4.0, 2.0], [0.0, 0.0, 0.0, 0.0]])
    out = module.log_normalize(x, 10.0)
    torch.testing.assert_close(out[0], torch.log1p(torch.tensor([1.0, 3.0, 2.0]) / 10.0 * 10.0))
    assert out[1].tolist() == [0.0, 0.0, 0.0]  # an empty cell stays at zero


def test_log_normalize_matches_the_former_copies_on_counts(module):
    """scFormer and xTrimoGene clamped the library size at 1, scPaLM at 1e-8: the same numbers for counts."""
    torch.manual_seed(0)
    x = torch.poisson(torch.full((16, 4), 1.5))
    x[3] = 0
    lib = x.sum(-1, keepdim=True)
    eps = module.select_genes(torch.log1p(x / lib.clamp_min(1e-8) * 1e4))
    one = torch.log1p(module.select_genes(x) / lib.clamp_min(1.0) * 1e4)
    torch.testing.assert_close(module.log_normalize(x, 1e4), one, rtol=0, atol=0)
    torch.testing.assert_close(module.log_normalize(x, 1e4), eps, rtol=0, atol=0)


def test_uniform_random_in_training_seeded_in_evaluation(module):
    seeds = torch.tensor([[5.0], [6.0]])
    module.train()
    assert not torch.equal(module.uniform(seeds, 8, 1), module.uniform(seeds, 8, 1))
    torch.testing.assert_close(
        module.uniform(seeds, 8, 1, seeded=True), counter_uniform(torch.tensor([5, 6]), 8, salt=1)
    )
    module.eval()
    torch.testing.assert_close(module.uniform(seeds, 8, 1), counter_uniform(torch.tensor([5, 6]), 8, salt=1))
    assert module.uniform(None, 8, 1, n_cells=3).shape == (3, 8)


def test_to_input_columns(module):
    values = torch.tensor([[1.0, 2.0, 3.0]])
    out = module.to_input_columns(values)
    assert out[0, [0, 1, 3]].tolist() == [1.0, 2.0, 3.0]
    assert np.isnan(out[0, 2].item())
    assert module.to_input_columns(values, fill=0.0)[0, 2] == 0.0
    assert module.to_input_columns(values[..., None].expand(-1, -1, 2)).shape == (1, 4, 2)
    with pytest.raises(ValueError, match="expected 3 genes"):
        module.to_input_columns(torch.ones(1, 4))
