"""``tl.embed`` / ``tl.impute`` / ``tl.gene_embeddings`` with the three real models (the toy model is in test_embed)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from cellformers import tl
from cellformers.data import synthetic_counts
from cellformers.model import ScFormer, ScPaLM, XTrimoGene

TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "batch_size": 32}
MODELS = {
    "xtrimogene": (
        XTrimoGene,
        {
            "preset": "3M",
            "encoder_layers": 1,
            "encoder_heads": 2,
            "encoder_dim": 16,
            "encoder_ff": 32,
            "decoder_layers": 1,
            "decoder_heads": 2,
            "decoder_dim": 8,
            "decoder_ff": 16,
        },
        {"max_epochs": 1},
    ),
    "scformer": (
        ScFormer,
        {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16, "max_length": 24},
        {"max_epochs": 1},
    ),
    "scpalm": (
        ScPaLM,
        {
            "preset": "small",
            "n_hidden": 16,
            "n_layers": 1,
            "n_heads": 2,
            "n_intermediate": 32,
            "n_pathway_tokens": 8,
            "n_codes": 16,
            "n_value_hidden": 8,
            "n_gene_embedding": 8,
        },
        {"max_epochs": 1, "max_epochs_stage2": 1},
    ),
}


@pytest.fixture(scope="module", params=list(MODELS))
def trained(request):
    cls, kwargs, train = MODELS[request.param]
    adata = synthetic_counts(n_cells=70, n_genes=40, random_state=3)
    cls.setup_anndata(adata)
    torch.manual_seed(0)
    model = cls(adata, **kwargs)
    model.train(**train, **TRAIN)
    return request.param, adata, model


def test_embed_params_and_batch_chunk_independence(trained):
    name, adata, model = trained
    ref = tl.embed(adata, model, copy=True)
    assert f"X_{name}" not in adata.obsm
    params = ref.uns[name]["params"]
    assert params["model"] == type(model).__name__
    assert params["epochs_trained"] >= 1
    # the pooling (scPaLM: representation) is recorded even when the caller keeps the default
    default = {"xtrimogene": ("pooling", "max"), "scformer": ("pooling", "cls"), "scpalm": ("representation", "cell")}
    assert params[default[name][0]] == default[name][1]
    chosen = "mean"
    option = default[name][0]
    assert tl.embed(adata, model, copy=True, **{option: chosen}).uns[name]["params"][option] == chosen
    z = ref.obsm[f"X_{name}"]
    assert z.dtype == np.float32
    assert np.isfinite(z).all()
    for batch_size, chunk_size in [(5, 17), (64, 9), (3, None)]:
        got = tl.embed(adata, model, batch_size=batch_size, chunk_size=chunk_size, copy=True).obsm[f"X_{name}"]
        np.testing.assert_allclose(got, z, atol=2e-5)


def test_embed_and_impute_backed(trained, tmp_path):
    name, adata, model = trained
    path = tmp_path / "b.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        tl.embed(backed, model, chunk_size=25, key_added="X_emb")
        tl.impute(backed, model, chunk_size=30, batch_size=7)
        np.testing.assert_allclose(backed.obsm["X_emb"], model.get_latent_representation(adata), atol=2e-5)
        full = model.get_imputed_expression(adata)
        got = backed.layers[f"{name}_imputed"]
        assert got.shape == adata.shape
        np.testing.assert_allclose(got, full, atol=2e-5, equal_nan=True)
        assert backed.uns[f"{name}_imputed"]["params"]["batch_size"] == 7
    finally:
        backed.file.close()


def test_gene_embeddings_rows(trained):
    name, adata, model = trained
    out = tl.gene_embeddings(adata, model, copy=True)
    varm = out.varm[f"{name}_gene_embeddings"]
    assert varm.shape[0] == adata.n_vars
    assert out.uns[f"{name}_gene_embeddings"]["params"]["n_genes_found"] == adata.n_vars
    assert np.isfinite(varm).all()
