"""``cellformers.settings``: one seed for everything (issue 20)."""

from __future__ import annotations

import os

import numpy as np
import pytest
import scvi
import torch

import cellformers as cf


def test_seed_sets_scvi_torch_numpy():
    cf.settings.seed = 7
    assert scvi.settings.seed == 7
    a = torch.rand(3), np.random.rand(3)  # noqa: NPY002 (the global generator is what is seeded)
    cf.settings.seed = 7
    b = torch.rand(3), np.random.rand(3)  # noqa: NPY002
    assert torch.equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert cf.settings.seed == 7


def test_seed_alone_repeats_training(toy_model_cls):
    def fit():
        cf.settings.seed = 11
        adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
        toy_model_cls.setup_anndata(adata)
        model = toy_model_cls(adata)
        model.train(max_epochs=2, batch_size=16, enable_progress_bar=False)
        return model.get_latent_representation()

    first = fit()
    torch.rand(100)  # move the global generators on: only the seed may restore them
    np.random.rand(100)  # noqa: NPY002
    np.testing.assert_array_equal(fit(), first)


def test_seed_keeps_xla_flags_short():
    cf.settings.seed = 1
    flags = os.environ.get("XLA_FLAGS", "")
    for _ in range(5):
        cf.settings.seed = 2
    assert os.environ.get("XLA_FLAGS", "") == flags


@pytest.mark.parametrize("bad", [1.5, "0", True])
def test_seed_must_be_an_integer(bad):
    with pytest.raises(TypeError, match="`seed` must be an integer"):
        cf.settings.seed = bad
    assert cf.settings.seed == 0


@pytest.mark.parametrize("bad", [0, -5, 1.5, "8192", True])
def test_inference_token_budget_must_be_a_positive_integer_or_none(bad, monkeypatch):
    monkeypatch.setattr(cf.settings, "_inference_token_budget", cf.settings.inference_token_budget)
    with pytest.raises(ValueError, match="inference_token_budget"):
        cf.settings.inference_token_budget = bad
    cf.settings.inference_token_budget = None
    assert cf.settings.inference_token_budget is None
    cf.settings.inference_token_budget = 4096
    assert cf.settings.inference_token_budget == 4096
