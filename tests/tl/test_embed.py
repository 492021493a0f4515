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


# ---------------------------------------------------------------- a pretrained model on the user's own AnnData
def test_embed_and_impute_on_the_anndata_given_to_from_pretrained(tmp_path):
    import pandas as pd

    import cellformers as cf

    train = synthetic_counts(n_cells=80, n_genes=30, random_state=0)
    cf.model.XTrimoGene.setup_anndata(train)
    tiny = {"encoder_layers": 1, "encoder_dim": 16, "encoder_heads": 2, "decoder_layers": 1, "decoder_dim": 8}
    model = cf.model.XTrimoGene(train, preset="3M", **tiny)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save_pretrained(tmp_path / "ckpt")

    # the user's data: other genes (20 of the checkpoint's 30, in another order, and 10 it does not have)
    full = synthetic_counts(n_cells=50, n_genes=40, random_state=3)
    genes = list(full.var_names[25:5:-1]) + list(full.var_names[30:40])
    user = full[:, genes].copy()
    user_before = user.copy()
    loaded = cf.model.XTrimoGene.from_pretrained(tmp_path / "ckpt", user)
    assert loaded.pretrained_info_["aligned_copy"] is True
    assert loaded.adata is not user
    assert list(user.var_names) == list(user_before.var_names)

    tl.embed(user, loaded)  # the common path: the user's own object
    np.testing.assert_allclose(user.obsm["X_xtrimogene"], loaded.get_latent_representation(), atol=1e-5)
    tl.impute(user, loaded)
    imputed = user.layers["xtrimogene_imputed"]
    assert imputed.shape == user.shape
    reference = pd.DataFrame(loaded.get_imputed_expression(), columns=loaded.adata.var_names)
    common = [g for g in user.var_names if g in set(loaded.adata.var_names)]
    pos = [user.var_names.get_loc(g) for g in common]
    np.testing.assert_allclose(imputed[:, pos], reference[common].to_numpy(), atol=1e-5)
    assert np.isnan(imputed[:, [g not in set(common) for g in user.var_names]]).all()
    # the user's AnnData got the outputs, nothing else changed
    assert list(user.var_names) == list(user_before.var_names)
    np.testing.assert_array_equal(user.X.toarray(), user_before.X.toarray())


def test_embed_of_a_model_trained_here_still_asks_for_aligned_genes(trained):
    from cellformers import GeneMappingError

    adata, model = trained
    reordered = adata[:, ::-1]
    other = ad.AnnData(X=reordered.X.copy(), obs=reordered.obs[[]].copy(), var=reordered.var[[]].copy())
    with pytest.raises(GeneMappingError, match="align_to_reference"):
        tl.embed(other, model)


def test_embed_reads_the_models_own_anndata_in_place(trained, monkeypatch):
    adata, model = trained
    seen = []
    real = model.get_latent_representation
    monkeypatch.setattr(model, "get_latent_representation", lambda a, **kw: seen.append(a) or real(a, **kw))
    tl.embed(adata, model, key_added="X_in_place")
    assert seen == [adata]  # not a copy: the registered AnnData itself, once
    assert "X_in_place" in adata.obsm
    del adata.obsm["X_in_place"], adata.uns["X_in_place"]


def test_embed_of_new_data_writes_only_its_result_and_copies_only_what_the_model_reads(trained, monkeypatch):
    adata, model = trained
    query = adata.copy()
    for key in [k for k in query.obs.columns if k.startswith("_")]:
        del query.obs[key]
    query.uns.clear()
    query.layers["unrelated"] = np.zeros(query.shape, dtype=np.float32)
    query.obsm["X_other"] = np.zeros((query.n_obs, 3), dtype=np.float32)
    obs_before, uns_before = list(query.obs.columns), set(query.uns)
    chunks = []
    real = model.get_latent_representation
    monkeypatch.setattr(model, "get_latent_representation", lambda a, **kw: chunks.append(a) or real(a, **kw))
    tl.embed(query, model, chunk_size=40)
    assert list(query.obs.columns) == obs_before  # no seed column, no scvi-tools field column
    assert set(query.uns) == uns_before | {"toy"}
    assert [c.n_obs for c in chunks] == [40, 40, 10]
    assert all("unrelated" not in c.layers and "X_other" not in c.obsm for c in chunks)
    np.testing.assert_allclose(query.obsm["X_toy"], real(adata), atol=1e-5)
