"""Bad arguments are refused before anything is written to the caller's AnnData (no seed column, no ``_scvi_*``
columns, no ``uns`` ids left behind)."""

from __future__ import annotations

import numpy as np
import pytest

import cellformers as cf

NAMES = ["toy", "XTrimoGene", "ScFormer", "ScPaLM"]
BAD_BATCH_SIZES = [0, -1, 2.5, True, "8"]


@pytest.mark.parametrize("batch_size", BAD_BATCH_SIZES, ids=repr)
@pytest.mark.parametrize("getter", ["get_latent_representation", "get_imputed_expression"])
@pytest.mark.parametrize("name", NAMES)
def test_a_bad_batch_size_is_refused_before_the_anndata_is_set_up(rel, tiny_models, name, getter, batch_size):
    model, _ = tiny_models[name]
    adata = rel.base_adata()  # a new AnnData: a getter would register it
    with rel.unchanged(adata), pytest.raises(ValueError, match="batch_size"):
        getattr(model, getter)(adata, batch_size=batch_size)


@pytest.mark.parametrize("indices", [[0, 10_000], [-1], [0.5], np.ones(3, dtype=bool)], ids=repr)
@pytest.mark.parametrize("name", ["toy", "ScFormer"])
def test_bad_indices_are_refused_before_the_anndata_is_set_up(rel, tiny_models, name, indices):
    model, _ = tiny_models[name]
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(ValueError, match="indices"):
        model.get_latent_representation(adata, indices=indices)


@pytest.mark.parametrize("chunk_size", [0, -5, 1.5], ids=repr)
@pytest.mark.parametrize("fn", ["embed", "impute"])
def test_tl_chunk_size_must_be_positive(rel, tiny_models, fn, chunk_size):
    model, _ = tiny_models["ScFormer"]
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(ValueError, match="chunk_size"):
        getattr(cf.tl, fn)(adata, model, chunk_size=chunk_size)


@pytest.mark.parametrize("batch_size", [0, -1], ids=repr)
def test_tl_embed_bad_batch_size_writes_nothing(rel, tiny_models, batch_size):
    model, _ = tiny_models["ScFormer"]
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(ValueError, match="batch_size"):
        cf.tl.embed(adata, model, batch_size=batch_size)


def test_predict_cell_types_bad_batch_size_writes_nothing(rel):
    model = rel.mark_trained(rel.build_model("ScFormer", adata=rel.base_adata()))
    model.train_annotator("labels", max_epochs=1)
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(ValueError, match="batch_size"):
        model.predict_cell_types(adata, batch_size=0)


def test_train_annotator_bad_batch_size_is_refused(rel, tiny_models):
    model, _ = tiny_models["ScFormer"]
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(ValueError, match="batch_size"):
        model.train_annotator("labels", adata=adata, batch_size=0, max_epochs=1)
