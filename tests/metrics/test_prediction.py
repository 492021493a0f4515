from __future__ import annotations

import numpy as np
import pytest

import cellformers as cf


def test_pearson_is_nan_for_constant_or_short_vectors():
    assert np.isnan(cf.metrics.pearson([1.0, 1.0, 1.0], [1.0, 2.0, 3.0]))
    assert np.isnan(cf.metrics.pearson([1.0], [2.0]))
    assert cf.metrics.pearson([1.0, 2.0, 3.0], [3.0, 2.0, 1.0]) == pytest.approx(-1.0)


def test_regression_scores_match_their_definitions():
    rng = np.random.default_rng(0)
    y = rng.normal(size=50)
    pred = y + rng.normal(scale=0.5, size=50)
    scores = cf.metrics.regression_scores(y, pred)
    assert scores["mse"] == pytest.approx(np.mean((pred - y) ** 2))
    assert scores["pearson"] == pytest.approx(np.corrcoef(y, pred)[0, 1])
    assert 0.5 < scores["spearman"] <= 1.0
    assert np.isnan(cf.metrics.regression_scores(y, np.zeros(50))["pearson"])


def test_binary_scores_rank_logits_and_need_both_classes():
    scores = cf.metrics.binary_scores(np.array([0, 0, 1, 1]), np.array([-3.0, 0.5, -0.2, 2.0]))
    assert scores["auroc"] == pytest.approx(0.75)
    assert scores["accuracy"] == pytest.approx(0.5)
    one_class = cf.metrics.binary_scores(np.array([1, 1]), np.array([1.0, -1.0]))
    assert np.isnan(one_class["auroc"])
    assert one_class["accuracy"] == pytest.approx(0.5)
