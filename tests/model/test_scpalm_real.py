"""scPaLM on real data (pbmc3k): both stages train, the codebook is used, every getter works."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def pbmc(shared_data_dir):
    import scanpy as sc

    adata = sc.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad")
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(adata.n_obs, 300, replace=False))
    return adata[cells, adata.var["highly_variable"].to_numpy()].copy()


def test_scpalm_pbmc3k_two_stages(pbmc):
    import scvi

    from cellformers.model import ScPaLM

    scvi.settings.seed = 0

    ScPaLM.setup_anndata(pbmc, labels_key="cell_type")
    model = ScPaLM(pbmc, preset="small", n_hidden=32, n_intermediate=64, n_pathway_tokens=16, n_codes=32)
    kw = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "train_size": 1.0}
    model.train(max_epochs=3, max_epochs_stage2=3, batch_size=32, precision="bf16-mixed", **kw)
    mse = model.history_["mse_train"].to_numpy(dtype=float).ravel()
    assert np.isfinite(mse).all()
    assert mse[-1] < mse[0], mse  # stage 1 learns
    masked = model.history_["masked_mse_train"].dropna().to_numpy(dtype=float).ravel()
    assert np.isfinite(masked).all()
    assert masked[-1] < masked[0], masked  # stage 2 (h_C as the bottleneck) learns
    usage = model.get_codebook_usage()
    assert usage["n_used"] >= 16, usage  # at least half of the K = 32 codes
    h_c = model.get_latent_representation(precision="bf16")
    assert h_c.shape == (300, 32)
    assert np.isfinite(h_c).all()
    imputed = model.get_imputed_expression()
    assert imputed.shape == pbmc.shape
    assert (imputed >= 0).all()
    genes = model.get_pathway_genes(n_genes=5, min_cells=5)
    assert len(genes) == usage["n_used"]
    assert set(genes["gene_1"]) <= set(pbmc.var_names)
