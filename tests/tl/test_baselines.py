from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cellformers as cf
from cellformers import MissingKeyError, NotCountsError
from cellformers.tl._baselines import OBSM_KEYS, default_scvi_epochs


def _counts(n_cells: int = 200, n_genes: int = 120, n_types: int = 4, seed: int = 42) -> ad.AnnData:
    """Poisson counts with cell-type marker genes and a mild batch effect; sparse CSR X."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(n_types), n_cells // n_types)
    batch = rng.integers(0, 2, size=types.size)
    base = rng.gamma(2.0, 1.0, size=n_genes)
    lfc = np.ones((n_types, n_genes))
    for t in range(n_types):
        lfc[t, t * 15 : (t + 1) * 15] = 8.0
    size = rng.lognormal(0.0, 0.3, size=types.size)
    mu = base[None, :] * lfc[types] * size[:, None] * (1 + 0.3 * batch[:, None])
    X = rng.poisson(mu).astype(np.float32)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"t{t}" for t in types]), "batch": pd.Categorical([f"b{b}" for b in batch])},
        index=[f"c{i}" for i in range(types.size)],
    )
    adata = ad.AnnData(X=sparse.csr_matrix(X), obs=obs, var=pd.DataFrame(index=[f"g{i}" for i in range(n_genes)]))
    adata.layers["counts"] = adata.X.copy()
    return adata


@pytest.fixture
def counts() -> ad.AnnData:
    return _counts()


def test_pca_writes_key_and_leaves_x_untouched(counts):
    X_before = counts.X.copy()
    counts.obsm["X_pca"] = np.ones((counts.n_obs, 2))
    cf.tl.baselines(counts, methods=["pca"], n_comps=10)
    emb = counts.obsm["X_pca_hvg"]
    assert emb.shape == (counts.n_obs, 10)
    assert emb.dtype == np.float32
    assert (counts.X != X_before).nnz == 0
    np.testing.assert_array_equal(counts.obsm["X_pca"], np.ones((counts.n_obs, 2)))
    entry = counts.uns["cellformers_baselines"]
    assert entry["obsm_keys"] == {"pca": "X_pca_hvg"}
    assert entry["params"]["input"] == "counts"
    assert entry["params"]["hvg_flavor"] in ("seurat_v3", "seurat")
    assert entry["params"]["n_hvg"] == counts.n_vars
    assert "runtime_s" in entry
    # PCA separates the cell types.
    from cellformers.metrics import asw_cell

    assert asw_cell(emb, counts.obs["cell_type"].to_numpy()) > 0.6


def test_pca_on_log_normalized_input(counts):
    import scanpy as sc

    logn = counts.copy()
    sc.pp.normalize_total(logn, target_sum=1e4)
    sc.pp.log1p(logn)
    cf.tl.baselines(logn, methods=("pca",), n_top_genes=50, n_comps=5)
    assert logn.obsm["X_pca_hvg"].shape == (logn.n_obs, 5)
    assert logn.uns["cellformers_baselines"]["params"]["input"] == "log-normalized"
    assert logn.uns["cellformers_baselines"]["params"]["hvg_flavor"] == "seurat"
    assert logn.uns["cellformers_baselines"]["params"]["n_hvg"] == 50


def test_harmony_with_batch(counts):
    pytest.importorskip("harmonypy")
    cf.tl.baselines(counts, methods=("pca", "harmony"), batch_key="batch", n_comps=10)
    assert counts.obsm["X_harmony"].shape == counts.obsm["X_pca_hvg"].shape
    assert not np.allclose(counts.obsm["X_harmony"], counts.obsm["X_pca_hvg"])
    assert counts.uns["cellformers_baselines"]["obsm_keys"] == {"pca": "X_pca_hvg", "harmony": "X_harmony"}


def test_harmony_alone_does_not_write_pca(counts):
    pytest.importorskip("harmonypy")
    cf.tl.baselines(counts, methods=["harmony"], batch_key="batch", n_comps=5)
    assert "X_harmony" in counts.obsm
    assert "X_pca_hvg" not in counts.obsm


def test_harmony_without_batch_is_skipped(counts):
    with pytest.warns(UserWarning, match="Harmony skipped: no batch_key"):
        cf.tl.baselines(counts, methods=("pca", "harmony"), n_comps=5)
    assert "X_harmony" not in counts.obsm
    assert counts.uns["cellformers_baselines"]["skipped"] == {"harmony": "no batch_key"}


def test_harmony_not_installed_is_skipped(counts, monkeypatch):
    monkeypatch.setitem(sys.modules, "harmonypy", None)
    with pytest.warns(UserWarning, match="harmonypy is not installed"):
        cf.tl.baselines(counts, methods=("pca", "harmony"), batch_key="batch", n_comps=5)
    assert "X_harmony" not in counts.obsm
    assert "X_pca_hvg" in counts.obsm


def test_scvi_tiny(counts):
    cf.tl.baselines(
        counts, methods=["scvi"], layer="counts", batch_key="batch", n_latent=4, max_epochs=1, accelerator="cpu"
    )
    assert counts.obsm["X_scvi"].shape == (counts.n_obs, 4)
    params = counts.uns["cellformers_baselines"]["params"]
    assert params["scvi_max_epochs"] == 1
    assert params["layer"] == "counts"
    assert "X_pca_hvg" not in counts.obsm


def test_copy(counts):
    out = cf.tl.baselines(counts, methods=["pca"], n_comps=5, copy=True)
    assert "X_pca_hvg" in out.obsm
    assert "X_pca_hvg" not in counts.obsm
    assert "cellformers_baselines" not in counts.uns


def test_default_epochs_heuristic():
    assert default_scvi_epochs(2638) == 200
    assert default_scvi_epochs(100_000) == 80
    assert default_scvi_epochs(10_000_000) == 1
    assert set(OBSM_KEYS.values()) == {"X_pca_hvg", "X_scvi", "X_harmony"}


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"methods": ["umap"]}, ValueError, "unknown entries"),
        ({"methods": []}, ValueError, "empty"),
        ({"layer": "nope"}, MissingKeyError, "layer='nope'"),
        ({"batch_key": "nope"}, MissingKeyError, "batch_key='nope'"),
        ({"methods": ["pca"], "n_comps": 0}, ValueError, "n_comps"),
        ({"methods": ["scvi"], "layer": "lognorm"}, NotCountsError, "raw counts"),
        ({"methods": ["pca"], "layer": "negative"}, ValueError, "negative"),
        ({"methods": ["pca"], "batch_key": "batch_nan"}, ValueError, "missing values"),
    ],
)
def test_bad_inputs(counts, kwargs, exc, match):
    counts.layers["lognorm"] = np.log1p(counts.X.toarray()) / 3.3
    counts.layers["negative"] = -counts.X.toarray()
    counts.obs["batch_nan"] = counts.obs["batch"].astype(object).where(np.arange(counts.n_obs) > 0)
    with pytest.raises(exc, match=match):
        cf.tl.baselines(counts, **kwargs)
    assert "cellformers_baselines" not in counts.uns
    assert not set(OBSM_KEYS.values()) & set(counts.obsm.keys())


# --- real data: baselines + benchmark on a subsample ----------------------------------------------------------


def _subsample(path, n: int) -> ad.AnnData:
    adata = ad.read_h5ad(path)
    idx = np.sort(np.random.default_rng(0).choice(adata.n_obs, size=min(n, adata.n_obs), replace=False))
    return adata[idx].copy()


def test_pancreas_subsample_pca_harmony_benchmark(shared_data_dir):
    pytest.importorskip("harmonypy")
    adata = _subsample(shared_data_dir / "pancreas_baron_human.h5ad", 600)
    cf.tl.baselines(adata, methods=("pca", "harmony"), batch_key="batch", n_top_genes=1000, n_comps=20)
    df = cf.tl.benchmark(adata, embeddings=["X_pca_hvg", "X_harmony"], label_key="cell_type", batch_key="batch")
    assert list(df.index) == ["X_pca_hvg", "X_harmony"]
    assert np.isfinite(df.to_numpy()).all()
    assert (df["AvgBIO"] > 0.5).all()


@pytest.mark.slow
def test_pbmc3k_subsample_all_baselines(shared_data_dir):
    adata = _subsample(shared_data_dir / "pbmc3k_processed.h5ad", 800)
    cf.tl.baselines(
        adata, methods=("pca", "scvi"), n_top_genes=1000, n_comps=20, n_latent=10, max_epochs=20, accelerator="cpu"
    )
    df = cf.tl.benchmark(adata, embeddings=["X_pca_hvg", "X_scvi"], label_key="cell_type")
    assert (df["AvgBIO"] > 0.5).all()
    assert df["Overall"].isna().all()


def test_uns_h5ad_roundtrip(counts, tmp_path):
    with pytest.warns(UserWarning, match="Harmony skipped"):
        cf.tl.baselines(counts, methods=("pca", "harmony"), n_comps=5)
    path = tmp_path / "bl.h5ad"
    counts.write_h5ad(path)
    back = ad.read_h5ad(path)
    entry = back.uns["cellformers_baselines"]
    assert list(entry["params"]["methods"]) == ["pca"]
    assert entry["skipped"] == {"harmony": "no batch_key"}
    np.testing.assert_array_equal(back.obsm["X_pca_hvg"], counts.obsm["X_pca_hvg"])
