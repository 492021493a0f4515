from __future__ import annotations

import math

import torch

from cellformers.nn import TrivialBaseline


def test_regression_baseline_is_the_per_gene_mean_over_scored_positions():
    base = TrivialBaseline(n_genes=2)
    y = torch.tensor([[1.0, 5.0], [3.0, 7.0], [100.0, 9.0]])
    scored = torch.tensor([[True, True], [True, False], [False, True]])
    base.update(y, scored)
    # gene 0: mean of 1 and 3 (100 not scored); gene 1: mean of 5 and 9
    expected = torch.stack([(y[:, 0] - 2.0) ** 2, (y[:, 1] - 7.0) ** 2], 1)
    torch.testing.assert_close(base.per_position(y), expected)
    assert base.fitted


def test_classification_baseline_is_the_smoothed_per_gene_marginal():
    base = TrivialBaseline(n_genes=2, n_classes=3)
    y = torch.tensor([[0, 2], [0, 2], [1, 2]])
    base.update(y, torch.ones_like(y, dtype=torch.bool))
    out = base.per_position(torch.tensor([[0, 1]]))
    # gene 0: classes (2, 1, 0) + 1 -> p(0) = 3/6; gene 1: (0, 0, 3) + 1 -> p(1) = 1/6
    torch.testing.assert_close(out, torch.tensor([[-math.log(3 / 6), -math.log(1 / 6)]]))


def test_gathered_positions_use_gene_index_and_ignore_padding():
    base = TrivialBaseline(n_genes=3)
    y = torch.tensor([[4.0, 2.0, 0.0]])
    gene_index = torch.tensor([[2, 0, -1]])
    base.update(y, torch.ones_like(y, dtype=torch.bool), gene_index)
    assert base.stats[:, 1].tolist() == [1.0, 0.0, 1.0]
    out = base.per_position(torch.tensor([[4.0, 3.0, 9.0]]), gene_index)
    torch.testing.assert_close(out, torch.tensor([[0.0, 1.0, 0.0]]))


def test_statistics_are_not_saved_with_the_weights():
    base = TrivialBaseline(n_genes=4)
    base.update(torch.ones(1, 4), torch.ones(1, 4, dtype=torch.bool))
    assert base.state_dict() == {}
    base.reset()
    assert not base.fitted
