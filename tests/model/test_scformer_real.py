"""scFormer end to end on real data from ../shared/data (skipped when it is absent)."""

from __future__ import annotations

import numpy as np
import scanpy as sc

import cellformers as cf
from cellformers.model import ScFormer, ScFormerPerturbation

TINY = {"n_layers": 1, "d_model": 32, "n_heads": 2, "d_ff": 32}


def _hvg_subset(adata, n_cells: int, n_genes: int, batch_key: str, extra=()):
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, n_cells, replace=False))].copy()
    sc.pp.filter_genes(adata, min_cells=3)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=n_genes, batch_key=batch_key)
    return adata[:, norm.var["highly_variable"].to_numpy() | adata.var_names.isin(list(extra))].copy()


def test_pancreas_integration_embeddings_imputation(shared_data_dir):
    adata = _hvg_subset(sc.read_h5ad(shared_data_dir / "pancreas_baron_human.h5ad"), 300, 200, "batch")
    ScFormer.setup_anndata(adata, batch_key="batch", labels_key="cell_type")
    model = ScFormer(adata, include_zero_genes=False, **TINY)
    model.train(max_epochs=2, batch_size=32, enable_progress_bar=False)
    val = model.history_["mgm_loss_validation"].to_numpy().ravel().astype(float)
    assert np.isfinite(val).all()
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 32)
    assert np.isfinite(z).all()
    imp = model.get_imputed_expression(indices=np.arange(20))
    assert imp.shape == (20, adata.n_vars)
    assert np.isfinite(imp).all()
    # on the expressed genes, the imputed values follow the observed log1p values (bins map back per cell)
    obs = adata.X[:20].toarray()
    obs = np.log1p(obs / obs.sum(1, keepdims=True) * 1e4)
    nz = obs > 0
    assert np.corrcoef(imp[nz], obs[nz])[0, 1] > 0.3
    cf.tl.gene_embeddings(adata, model)
    assert adata.varm["scformer_gene_embeddings"].shape == (adata.n_vars, 32)


def test_kang_perturbation_metrics(shared_data_dir):
    adata = sc.read_h5ad(shared_data_dir / "pbmc_kang2018_ctrl_stim_2000.h5ad")
    adata = _hvg_subset(adata, 400, 150, "stim", extra=("IFNAR1", "IFNAR2"))
    adata.obs["condition"] = np.where(adata.obs["stim"].astype(str) == "ctrl", "ctrl", "IFNAR1+IFNAR2")
    ScFormerPerturbation.setup_anndata(adata, perturbation_key="condition")
    model = ScFormerPerturbation(adata, max_length=64, **TINY)
    stim = np.flatnonzero(adata.obs["condition"].to_numpy() != "ctrl")
    model.train(max_epochs=1, batch_size=32, train_indices=stim[::2], enable_progress_bar=False)
    res = model.evaluate(["IFNAR1+IFNAR2"], n_control_cells=50)
    assert list(res["method"]) == ["scformer", "mean", "additive"]
    assert np.isfinite(res[["pearson", "pearson_de"]].to_numpy()).all()
