"""xTrimoGene on real data (pbmc3k): validation masked MSE falls over a few epochs and the embedding has signal."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pbmc(shared_data_dir):
    import anndata as ad

    adata = ad.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad")
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, 480, replace=False))
    return adata[cells].copy()


def test_xtrimogene_pbmc3k_validation_mse_falls(pbmc):
    import torch

    from cellformers.data import GeneVocab
    from cellformers.model import XTrimoGene

    # all genes registered (library size = total counts), the model works on the tutorial's HVGs
    vocab = GeneVocab(list(pbmc.var_names[pbmc.var["highly_variable"].to_numpy()]))
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
        max_epochs=4,
        batch_size=48,
        precision="bf16-mixed",
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        plan_kwargs={"lr": 3e-3, "warmup_steps": 5},
    )
    val = model.history_["masked_mse_validation"].to_numpy(dtype=float).ravel()
    assert len(val) == 4
    assert val[-1] < 0.95 * val[0]

    held_out = model.validation_indices
    rec = model.evaluate_masked_recovery(indices=held_out, n_groups=2)
    assert rec.iloc[0]["pearson"] > 0.2
    assert (rec["group_type"] == "sparsity").sum() == 2

    z = model.get_latent_representation(precision="bf16")
    assert z.shape == (pbmc.n_obs, 32)
    assert np.isfinite(z).all()
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    labels = pbmc.obs["cell_type"].astype(str).to_numpy()
    majority = max(np.mean(labels == c) for c in np.unique(labels))
    acc = cross_val_score(KNeighborsClassifier(5), z, labels, cv=3).mean()
    assert acc > majority + 0.1
