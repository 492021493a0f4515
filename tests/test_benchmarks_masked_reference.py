"""The helpers of ``benchmarks/xtrimogene_masked_reference.py``: xTrimoGene's balanced masking and the Bayes predictor."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellformers as cf


@pytest.fixture(scope="module")
def bench(import_script):
    return import_script("benchmarks", "xtrimogene_masked_reference")


def test_balanced_mask_hides_as_many_positions_as_the_module(bench):
    rng = np.random.default_rng(0)
    values = np.where(rng.random((30, 80)) < 0.3, rng.gamma(2.0, 1.0, (30, 80)), 0.0).astype(np.float32)
    mask, zero_rate = bench.balanced_mask(values, np.random.default_rng(1))
    module = cf.module.XTrimoGeneModule(np.arange(80), n_tokens=80, encoder_dim=8, encoder_heads=2, decoder_dim=8)
    module_mask, _, _ = module.make_mask(torch.from_numpy(values))
    nonzero = values > 0
    np.testing.assert_array_equal((mask & nonzero).sum(1), (module_mask.numpy() & nonzero).sum(1))
    np.testing.assert_array_equal((mask & ~nonzero).sum(1), (module_mask.numpy() & ~nonzero).sum(1))
    np.testing.assert_allclose(zero_rate, (mask & ~nonzero).sum(1) / (~nonzero).sum(1))


def test_bayes_prediction_is_the_expected_masked_value(bench):
    # a gene that is non-zero in half the cells with mean 2; masking 30% of non-zeros and 10% of zeros
    p, mu, zero_rate = np.array([[0.5]]), np.array([[2.0]]), np.array([0.1])
    posterior = 0.5 * 0.3 / (0.5 * 0.3 + 0.5 * 0.1)  # P(non-zero | masked) = 0.75
    np.testing.assert_allclose(bench.bayes(p, mu, zero_rate), [[posterior * 2.0]])
    assert bench.bayes(np.array([[0.0]]), mu, zero_rate)[0, 0] == 0.0  # never expressed: predict zero
