from __future__ import annotations

import anndata as ad
import numpy as np
import pytest

from cellformers import tl
from cellformers.data import synthetic_counts


@pytest.fixture(scope="module")
def trained(toy_model_cls):
    adata = synthetic_counts(n_cells=90, n_genes=25, random_state=1)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    return adata, model


def test_embed_writes_obsm_and_params(trained):
    adata, model = trained
    out = tl.embed(adata, model, copy=True)
    assert "X_toy" not in adata.obsm
    assert out.obsm["X_toy"].shape == (adata.n_obs, 8)
    assert out.obsm["X_toy"].dtype == np.float32
    params = out.uns["toy"]["params"]
    assert params["model"] == type(model).__name__
    assert params["epochs_trained"] == 2


def test_embed_independent_of_batch_and_chunk_size(trained):
    adata, model = trained
    ref = tl.embed(adata, model, batch_size=128, copy=True).obsm["X_toy"]
    for batch_size, chunk_size in [(7, None), (16, 20), (1, 33)]:
        got = tl.embed(adata, model, batch_size=batch_size, chunk_size=chunk_size, copy=True).obsm["X_toy"]
        np.testing.assert_allclose(got, ref, atol=1e-5)


def test_embed_backed(trained, tmp_path):
    adata, model = trained
    path = tmp_path / "b.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    tl.embed(backed, model, chunk_size=25, key_added="X_emb")
    np.testing.assert_allclose(backed.obsm["X_emb"], model.get_latent_representation(adata), atol=1e-5)
    backed.file.close()


def test_impute_layer_and_gene_embeddings(trained):
    adata, model = trained
    out = tl.impute(adata, model, copy=True)
    assert out.layers["toy_imputed"].shape == adata.shape
    tl.gene_embeddings(out, model)
    assert out.varm["toy_gene_embeddings"].shape == (adata.n_vars, 8)
    assert out.uns["toy_gene_embeddings"]["params"]["n_genes_found"] == adata.n_vars


def test_embed_mudata(trained):
    mudata = pytest.importorskip("mudata")
    adata, model = trained
    mdata = mudata.MuData({"rna": adata.copy()})
    tl.embed(mdata, model)
    assert mdata.mod["rna"].obsm["X_toy"].shape[0] == adata.n_obs
