"""xTrimoGene on real data (pbmc3k): validation masked MSE falls over a few epochs and the embedding has signal."""

from __future__ import annotations

import numpy as np
import pytest


def _pbmc(shared_data_dir, n_cells):
    import anndata as ad

    adata = ad.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad")
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, n_cells, replace=False))
    return adata[cells].copy()


def _train_and_check(pbmc, n_genes, epochs, min_pearson, min_knn_gain):
    import torch

    from cellformers.data import GeneVocab
    from cellformers.model import XTrimoGene

    # all genes registered (library size = total counts); the model works on the most frequently detected HVGs
    hvg = pbmc.var.loc[pbmc.var["highly_variable"]].sort_values("n_cells", ascending=False)
    vocab = GeneVocab(list(hvg.index[:n_genes]))
    XTrimoGene.setup_anndata(pbmc, labels_key="cell_type")
    torch.manual_seed(0)
    model = XTrimoGene(
        pbmc,
        vocab=vocab,
        preset="3M",
        encoder_layers=2,
        encoder_heads=2,
        encoder_dim=32,
        encoder_ff=64,
        decoder_layers=1,
        decoder_heads=2,
        decoder_dim=16,
        decoder_ff=32,
    )
    model.train(
        max_epochs=epochs,
        batch_size=48,
        precision="bf16-mixed",
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        plan_kwargs={"lr": 3e-3, "warmup_steps": 5},
    )
    val = model.history_["masked_mse_validation"].to_numpy(dtype=float).ravel()
    assert len(val) == epochs
    assert val[-1] < 0.95 * val[0]

    held_out = model.validation_indices
    rec = model.evaluate_masked_recovery(indices=held_out, n_groups=2)
    assert rec.iloc[0]["pearson"] > min_pearson
    assert (rec["group_type"] == "sparsity").sum() == 2

    z = model.get_latent_representation(precision="bf16")
    assert z.shape == (pbmc.n_obs, 32)
    assert np.isfinite(z).all()
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = pbmc.obs["cell_type"].astype(str).to_numpy()
    majority = max(np.mean(labels == c) for c in np.unique(labels))
    acc = cross_val_score(KNeighborsClassifier(5), z, labels, cv=3).mean()
    assert acc > majority + min_knn_gain


def test_xtrimogene_pbmc3k_fast(shared_data_dir):
    # default suite: 300 cells, 300 genes, 3 epochs
    _train_and_check(_pbmc(shared_data_dir, 300), n_genes=300, epochs=3, min_pearson=0.05, min_knn_gain=0.05)


@pytest.mark.slow
def test_xtrimogene_pbmc3k_hvg(shared_data_dir):
    # all 1,838 HVGs, 800 cells, 5 epochs
    _train_and_check(_pbmc(shared_data_dir, 800), n_genes=1838, epochs=5, min_pearson=0.3, min_knn_gain=0.15)
