from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cellformers import NotCountsError
from cellformers.data import GeneVocab, synthetic_counts
from cellformers.model import XTrimoGene

TINY = {
    "preset": "3M",
    "encoder_layers": 1,
    "encoder_heads": 2,
    "encoder_dim": 16,
    "encoder_ff": 32,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "decoder_dim": 8,
    "decoder_ff": 16,
}
TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "batch_size": 64}


@pytest.fixture(scope="module")
def trained():
    adata = synthetic_counts(n_cells=240, n_genes=60, random_state=0)
    XTrimoGene.setup_anndata(adata, batch_key="batch", labels_key="labels")
    torch.manual_seed(0)
    model = XTrimoGene(adata, **TINY)
    model.train(max_epochs=1, precision="bf16-mixed", **TRAIN)
    return adata, model


def test_train_history(trained):
    _, model = trained
    assert model.is_trained_
    for key in ("masked_mse_train", "masked_mse_validation", "masked_mse_zero_validation", "train_loss"):
        assert key in model.history_
    assert np.isfinite(model.history_["masked_mse_validation"].to_numpy(dtype=float)).all()
    assert "XTrimoGene" in model._model_summary_string


@pytest.mark.parametrize(("pooling", "width"), [("max", 16), ("mean", 16), ("all", 32)])
def test_latent_representation(trained, pooling, width):
    adata, model = trained
    z = model.get_latent_representation(pooling=pooling)
    assert z.shape == (adata.n_obs, width)
    assert np.isfinite(z).all()
    # batch size does not change the embedding; indices select cells
    z2 = model.get_latent_representation(pooling=pooling, batch_size=50)
    np.testing.assert_allclose(z, z2, atol=1e-5)
    z3 = model.get_latent_representation(indices=[3, 5], pooling=pooling)
    np.testing.assert_allclose(z3, z[[3, 5]], atol=1e-5)
    zb = model.get_latent_representation(pooling=pooling, precision="bf16")
    assert np.corrcoef(zb.ravel(), z.ravel())[0, 1] > 0.98


def test_imputed_expression_and_gene_embeddings(trained):
    adata, model = trained
    imp = model.get_imputed_expression()
    assert imp.shape == adata.shape
    assert np.isfinite(imp).all()
    ge = model.get_gene_embeddings()
    assert isinstance(ge, pd.DataFrame)
    assert ge.shape == (adata.n_vars, 16)
    assert list(ge.index) == list(adata.var_names)


def test_masked_recovery_table(trained):
    adata, model = trained
    df = model.evaluate_masked_recovery(n_groups=3)
    assert set(df["group_type"]) == {"all", "sparsity", "cell_type"}
    assert (df["group_type"] == "sparsity").sum() == 3
    assert (df["group_type"] == "cell_type").sum() == adata.obs["labels"].nunique()
    overall = df[df["group_type"] == "all"].iloc[0]
    assert overall["n_cells"] == adata.n_obs
    assert -1 <= overall["pearson"] <= 1
    sparsity_rows = df[df["group_type"] == "sparsity"]
    assert sparsity_rows["n_masked"].sum() == overall["n_masked"]
    # seeded masks: the same numbers again, whatever the batch size
    df2 = model.evaluate_masked_recovery(n_groups=3, batch_size=50)
    np.testing.assert_allclose(df["pearson"], df2["pearson"], atol=1e-5)
    sub = model.evaluate_masked_recovery(indices=np.arange(100), n_groups=2)
    assert sub.iloc[0]["n_cells"] == 100


def test_save_load_round_trip(trained, tmp_path):
    adata, model = trained
    z = model.get_latent_representation()
    imp = model.get_imputed_expression()
    model.save(tmp_path / "xtg", overwrite=True)
    loaded = XTrimoGene.load(tmp_path / "xtg", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)
    np.testing.assert_allclose(loaded.get_imputed_expression(), imp, atol=1e-5)
    assert loaded.module.encoder_dim == 16


def test_vocabulary_subset_and_nan_columns():
    adata = synthetic_counts(n_cells=60, n_genes=30, random_state=1)
    vocab = GeneVocab(list(adata.var_names[:20]))
    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(adata, vocab=vocab, **TINY)
    assert model.module.n_genes == 20
    model.train(max_epochs=1, **TRAIN)
    imp = model.get_imputed_expression()
    assert imp.shape == (60, 30)
    assert np.isnan(imp[:, 20:]).all()
    assert np.isfinite(imp[:, :20]).all()
    assert model.get_gene_embeddings().shape[0] == 20


def test_options_through_model():
    adata = synthetic_counts(n_cells=60, n_genes=30, random_state=2)
    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(adata, value_embedding="equalbin", mask_strategy="rate", read_depth_tokens=True, **TINY)
    edges = model.module.value_embedding.bin_edges
    assert torch.all(edges[1:] >= edges[:-1])
    assert edges.max() < 10
    model.train(max_epochs=1, **TRAIN)
    assert model.get_latent_representation(pooling="all").shape == (60, 64)


def test_bad_inputs():
    adata = synthetic_counts(n_cells=40, n_genes=20)
    lognorm = adata.copy()
    lognorm.X = np.log1p(lognorm.X.toarray() / 3.3)
    with pytest.raises(NotCountsError):
        XTrimoGene.setup_anndata(lognorm)
    XTrimoGene.setup_anndata(adata)
    with pytest.raises(ValueError, match="preset"):
        XTrimoGene(adata, preset="1B")
    model = XTrimoGene(adata, **TINY)
    model.is_trained_ = True
    with pytest.raises(ValueError, match="pooling"):
        model.get_latent_representation(pooling="cls")
