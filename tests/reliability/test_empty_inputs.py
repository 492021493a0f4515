"""Inputs without cells: getters and ``tl`` functions raise a package error (or return an empty result), and the
caller's AnnData is left as it was."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import cellformers as cf
from cellformers import InvalidExpressionError, InvalidLabelsError

NAMES = ["toy", "XTrimoGene", "ScFormer", "ScPaLM"]


def _empty(rel):
    return rel.base_adata()[:0].copy()


@pytest.mark.parametrize("getter", ["get_latent_representation", "get_imputed_expression"])
@pytest.mark.parametrize("name", NAMES)
def test_getters_on_zero_cells_raise_a_package_error_and_write_nothing(rel, tiny_models, name, getter):
    model, _ = tiny_models[name]
    adata = _empty(rel)
    with rel.unchanged(adata), pytest.raises(InvalidExpressionError, match="no cells"):
        getattr(model, getter)(adata)


@pytest.mark.parametrize("fn", ["embed", "impute"])
@pytest.mark.parametrize("name", NAMES)
def test_tl_functions_on_zero_cells_raise_a_package_error_and_write_nothing(rel, tiny_models, name, fn):
    model, _ = tiny_models[name]
    adata = _empty(rel)
    with rel.unchanged(adata), pytest.raises(InvalidExpressionError, match="no cells"):
        getattr(cf.tl, fn)(adata, model)


def test_transfer_labels_to_zero_query_cells_writes_empty_columns(rel):
    reference = rel.base_adata()
    reference.obsm["X_emb"] = np.random.default_rng(0).normal(size=(reference.n_obs, 4))
    query = _empty(rel)
    query.obsm["X_emb"] = np.zeros((0, 4))
    cf.tl.transfer_labels(query, reference, labels_key="labels", use_rep="X_emb")
    assert query.obs["labels_transferred"].shape == (0,)
    assert isinstance(query.obs["labels_transferred"].dtype, pd.CategoricalDtype)
    assert query.obs["labels_transferred_confidence"].shape == (0,)


def test_transfer_labels_from_a_reference_without_labels_raises_a_package_error(rel):
    reference = rel.base_adata()
    reference.obsm["X_emb"] = np.zeros((reference.n_obs, 4))
    reference.obs["labels"] = pd.Categorical([None] * reference.n_obs, categories=["a"])
    query = rel.base_adata()
    query.obsm["X_emb"] = np.zeros((query.n_obs, 4))
    with rel.unchanged(query), pytest.raises(InvalidLabelsError):
        cf.tl.transfer_labels(query, reference, labels_key="labels", use_rep="X_emb")


def test_train_annotator_with_a_single_label_raises_a_package_error(rel, tiny_models):
    model, _ = tiny_models["ScFormer"]
    adata = rel.base_adata()
    adata.obs["one"] = "T cell"
    with rel.unchanged(adata), pytest.raises(InvalidLabelsError, match="at least two"):
        model.train_annotator("one", adata=adata, max_epochs=1)


def test_benchmark_with_a_single_cell_type_raises_a_package_error(rel):
    adata = rel.base_adata()
    adata.obsm["X_emb"] = np.random.default_rng(0).normal(size=(adata.n_obs, 4))
    adata.obs["one"] = "T cell"
    with rel.unchanged(adata), pytest.raises(InvalidLabelsError, match="single cell type"):
        cf.tl.benchmark(adata, embeddings="X_emb", label_key="one")
