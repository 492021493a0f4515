"""Per-gene context embeddings (issue 19): the models' getters and ``tl.context_embedding``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import cellformers as cf
from cellformers import GeneMappingError, tl
from cellformers.data import synthetic_counts

XTG_KW = {"encoder_layers": 1, "encoder_dim": 16, "encoder_heads": 2, "decoder_layers": 1, "decoder_dim": 8}


@pytest.fixture(scope="module")
def xtg():
    adata = synthetic_counts(n_cells=50, n_genes=24, random_state=3)
    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(adata, **XTG_KW)
    model.train(max_epochs=1, batch_size=25, enable_progress_bar=False)
    return adata, model


@pytest.fixture(scope="module")
def scf():
    adata = synthetic_counts(n_cells=40, n_genes=20, random_state=4)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, n_layers=1, d_model=8, n_heads=2, d_ff=8, pooling="mean")
    model.train(max_epochs=1, batch_size=20, enable_progress_bar=False)
    return adata, model


def test_xtrimogene_decoder_context_is_what_the_head_reads(xtg):
    adata, model = xtg
    ctx = model.get_context_embedding()
    assert ctx.shape == (adata.n_obs, adata.n_vars, 8)
    assert ctx.dtype == np.float32
    # the decoder's per-gene output: the expression head applied to it gives the unmasked ("visible") prediction
    with torch.no_grad():
        pred = model.module.head(torch.from_numpy(ctx)).squeeze(-1).numpy()
    np.testing.assert_allclose(pred, model.get_imputed_expression(mode="visible"), atol=1e-4)


def test_xtrimogene_context_genes_subset_and_batch_size(xtg):
    adata, model = xtg
    full = model.get_context_embedding(batch_size=64)
    genes = list(adata.var_names[[5, 0, 17]])
    sub = model.get_context_embedding(genes=genes, batch_size=7)
    np.testing.assert_allclose(sub, full[:, [5, 0, 17]], atol=1e-5)
    part = model.get_context_embedding(indices=[3, 1], genes=genes)
    np.testing.assert_allclose(part, full[[3, 1]][:, [5, 0, 17]], atol=1e-5)


def test_xtrimogene_encoder_context(xtg):
    adata, model = xtg
    enc = model.get_context_embedding(layer="encoder")
    assert enc.shape == (adata.n_obs, adata.n_vars, 16)
    expressed = np.asarray(adata.X.todense() if hasattr(adata.X, "todense") else adata.X) > 0
    assert np.all(enc[~expressed] == 0)  # genes the encoder does not see
    assert np.all(np.abs(enc[expressed]).sum(-1) > 0)
    # max over the expressed genes' encoder tokens is the (max-pooled) cell embedding
    pooled = np.stack([enc[i][expressed[i]].max(0) for i in range(adata.n_obs)])
    np.testing.assert_allclose(pooled, model.get_latent_representation(pooling="max"), atol=1e-4)


def test_context_unknown_genes_and_layer(xtg):
    _, model = xtg
    with pytest.raises(GeneMappingError, match="not input genes"):
        model.get_context_embedding(genes=["NOT_A_GENE"])
    with pytest.raises(TypeError, match="list of gene names"):
        model.get_context_embedding(genes="GENE0")
    with pytest.raises(ValueError, match="layer"):
        model.get_context_embedding(layer="middle")


def test_scformer_context_mean_is_the_mean_pooled_embedding(scf):
    adata, model = scf
    ctx = model.get_context_embedding()
    assert ctx.shape == (adata.n_obs, adata.n_vars, 8)
    # every gene is a token (include_zero_genes=True), so the mean of the gene rows is the "mean" pooling
    np.testing.assert_allclose(ctx.mean(1), model.get_latent_representation(pooling="mean"), atol=1e-4)
    sub = model.get_context_embedding(genes=list(adata.var_names[[2, 9]]), batch_size=3)
    np.testing.assert_allclose(sub, ctx[:, [2, 9]], atol=1e-5)


def test_scformer_context_in_chunks_of_max_length():
    adata = synthetic_counts(n_cells=20, n_genes=20, random_state=5)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, n_layers=1, d_model=8, n_heads=2, d_ff=8, max_length=6)
    model.train(max_epochs=1, batch_size=10, enable_progress_bar=False)
    ctx = model.get_context_embedding()
    assert ctx.shape == (20, 20, 8)
    assert np.all(np.abs(ctx).sum(-1) > 0)  # every gene read from its chunk
    np.testing.assert_allclose(model.get_context_embedding(batch_size=4), ctx, atol=1e-5)


def test_tl_context_embedding_file_and_pooled(xtg, tmp_path):
    adata, model = xtg
    path = tmp_path / "ctx.npy"
    genes = list(adata.var_names[:6])
    out = tl.context_embedding(adata, model, genes=genes, path=path, pooled="max", chunk_size=13, copy=True)
    assert "X_xtrimogene_context" not in adata.obsm
    full = np.load(path, mmap_mode="r")
    assert full.shape == (adata.n_obs, 6, 8)
    np.testing.assert_allclose(full, model.get_context_embedding(genes=genes), atol=1e-5)
    np.testing.assert_allclose(out.obsm["X_xtrimogene_context"], np.asarray(full).max(1), atol=1e-6)
    params = out.uns["X_xtrimogene_context"]["params"]
    assert params["genes"] == genes
    assert params["shape"] == [adata.n_obs, 6, 8]
    assert params["path"] == str(path)


def test_tl_context_embedding_file_only_and_kwargs(xtg, tmp_path):
    adata, model = xtg
    path = tmp_path / "enc.npy"
    out = tl.context_embedding(adata, model, path=path, pooled=None, layer="encoder", key_added="ctx", copy=True)
    assert "ctx" not in out.obsm
    assert np.load(path).shape == (adata.n_obs, adata.n_vars, 16)
    assert out.uns["ctx"]["params"]["layer"] == "encoder"
    with pytest.raises(ValueError, match="Nothing to write"):
        tl.context_embedding(adata, model, pooled=None)


def test_tl_context_embedding_scformer_and_mudata(scf):
    mudata = pytest.importorskip("mudata")
    adata, model = scf
    mdata = mudata.MuData({"rna": adata.copy()})
    tl.context_embedding(mdata, model, key_added="X_ctx")
    np.testing.assert_allclose(mdata.mod["rna"].obsm["X_ctx"], model.get_context_embedding().mean(1), atol=1e-5)
