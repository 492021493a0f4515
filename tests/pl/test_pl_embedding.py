from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
from matplotlib.axes import Axes
from matplotlib.figure import Figure

import cellformers as cf
from cellformers import MissingKeyError


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


@pytest.fixture
def adata() -> ad.AnnData:
    rng = np.random.default_rng(42)
    n = 90
    types = np.repeat(np.arange(3), n // 3)
    obs = pd.DataFrame(
        {"cell_type": pd.Categorical([f"t{t}" for t in types]), "batch": pd.Categorical(rng.choice(["a", "b"], n))},
        index=[f"c{i}" for i in range(n)],
    )
    a = ad.AnnData(X=rng.poisson(1.0, size=(n, 5)).astype(np.float32), obs=obs)
    a.var_names = [f"g{i}" for i in range(5)]
    a.obsm["X_emb"] = (rng.normal(scale=6, size=(3, 8))[types] + rng.normal(size=(n, 8))).astype(np.float32)
    a.obsm["X_2d"] = rng.normal(size=(n, 2)).astype(np.float32)
    a.obsm["X_umap"] = np.zeros((n, 2), dtype=np.float32)
    return a


def test_high_dim_basis_gets_umap_cached(adata):
    ax = cf.pl.embedding(adata, basis="X_emb", color="cell_type", show=False)
    assert isinstance(ax, Axes)
    assert adata.obsm["X_umap_emb"].shape == (adata.n_obs, 2)
    assert adata.uns["X_umap_emb"]["params"] == {"basis": "X_emb", "n_neighbors": 15, "random_state": 0}
    # The caller's own UMAP and neighbours are untouched.
    np.testing.assert_array_equal(adata.obsm["X_umap"], 0)
    assert "neighbors" not in adata.uns
    cached = adata.obsm["X_umap_emb"].copy()
    cf.pl.embedding(adata, basis="emb", color="batch", show=False)
    np.testing.assert_array_equal(adata.obsm["X_umap_emb"], cached)


def test_two_dim_basis_plotted_directly(adata):
    ax = cf.pl.embedding(adata, basis="X_2d", color=["g0"], show=False)
    assert "X_umap_2d" not in adata.obsm
    assert isinstance(ax, Axes)


def test_several_colors_and_return_fig(adata):
    axes = cf.pl.embedding(adata, basis="X_2d", color=["cell_type", "batch"], show=False)
    assert isinstance(axes, list)
    assert len(axes) == 2
    fig = cf.pl.embedding(adata, basis="X_2d", color=["cell_type", "batch"], return_fig=True)
    assert isinstance(fig, Figure)


def test_ax_and_show_and_save(adata, tmp_path):
    fig, ax = plt.subplots()
    out = cf.pl.embedding(adata, basis="X_2d", color="cell_type", ax=ax, show=False)
    assert out is ax
    assert cf.pl.embedding(adata, basis="X_2d", color="cell_type", show=True) is None
    path = tmp_path / "emb.pdf"
    cf.pl.embedding(adata, basis="X_2d", color="cell_type", show=False, save=path)
    assert path.stat().st_size > 0


def test_bad_inputs(adata):
    with pytest.raises(MissingKeyError, match="basis='X_nope'"):
        cf.pl.embedding(adata, basis="X_nope", show=False)
    with pytest.raises(MissingKeyError, match="color"):
        cf.pl.embedding(adata, basis="X_2d", color=["cell_type", "nope"], show=False)
    adata.obsm["X_1d"] = np.zeros((adata.n_obs, 1))
    with pytest.raises(ValueError, match="at least two dimensions"):
        cf.pl.embedding(adata, basis="X_1d", show=False)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="single `color`"):
        cf.pl.embedding(adata, basis="X_2d", color=["cell_type", "batch"], ax=ax, show=False)
