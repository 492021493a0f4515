from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pytest
import scanpy as sc
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


def _snapshot(adata):
    return {
        "obsm": {k: np.array(v, copy=True) for k, v in adata.obsm.items()},
        "uns": set(adata.uns),
        "obs": list(adata.obs.columns),
    }


def test_basis_is_positional_like_scanpy(adata):
    ax = cf.pl.embedding(adata, "X_2d", color="cell_type", show=False)
    assert isinstance(ax, Axes)
    sc_ax = sc.pl.embedding(adata, "X_2d", color="cell_type", show=False)
    np.testing.assert_array_equal(ax.collections[0].get_offsets(), sc_ax.collections[0].get_offsets())


def test_high_dim_basis_draws_the_umap_of_tl_umap(adata):
    cf.tl.umap(adata, "X_emb")
    assert adata.obsm["X_umap_emb"].shape == (adata.n_obs, 2)
    assert adata.uns["X_umap_emb"]["params"] == {"use_rep": "X_emb", "n_neighbors": 15, "random_state": 0}
    # The caller's own UMAP and neighbours are untouched.
    np.testing.assert_array_equal(adata.obsm["X_umap"], 0)
    assert "neighbors" not in adata.uns
    before = _snapshot(adata)
    ax = cf.pl.embedding(adata, "X_emb", color="batch", show=False)
    np.testing.assert_allclose(ax.collections[0].get_offsets(), adata.obsm["X_umap_emb"], rtol=1e-6)
    cf.pl.embedding(adata, "emb", color="cell_type", show=False)
    after = _snapshot(adata)
    assert after["obsm"].keys() == before["obsm"].keys()
    for k, v in before["obsm"].items():
        np.testing.assert_array_equal(after["obsm"][k], v)
    assert after["obs"] == before["obs"]
    assert after["uns"] - before["uns"] <= {"batch_colors", "cell_type_colors"}  # scanpy's palettes, as sc.pl does


def test_high_dim_basis_without_umap_never_computes(adata):
    before = _snapshot(adata)
    with pytest.raises(MissingKeyError, match=r"cellformers.tl.umap\(adata, 'X_emb'\)"):
        cf.pl.embedding(adata, "X_emb", color="cell_type", show=False)
    assert set(adata.obsm) == set(before["obsm"])
    assert set(adata.uns) == before["uns"]
    ax = cf.pl.embedding(adata, "X_emb", color="cell_type", components="2,3", show=False)  # as scanpy
    np.testing.assert_allclose(ax.collections[0].get_offsets(), adata.obsm["X_emb"][:, 1:3], rtol=1e-6)


def test_tl_umap_copy_key_added_and_errors(adata):
    out = cf.tl.umap(adata, "X_emb", n_neighbors=5, key_added="umap5", copy=True)
    assert "umap5" in out.obsm
    assert out.uns["umap5"]["params"]["n_neighbors"] == 5
    assert "umap5" not in adata.obsm
    with pytest.raises(MissingKeyError, match="use_rep='X_nope'"):
        cf.tl.umap(adata, "X_nope")
    with pytest.raises(ValueError, match="n_neighbors"):
        cf.tl.umap(adata, "X_emb", n_neighbors=1)


def test_two_dim_basis_plotted_directly(adata):
    ax = cf.pl.embedding(adata, "X_2d", color=["g0"], show=False)
    assert "X_umap_2d" not in adata.obsm
    assert isinstance(ax, Axes)


def test_several_colors_and_return_fig(adata):
    axes = cf.pl.embedding(adata, "X_2d", color=["cell_type", "batch"], show=False)
    assert isinstance(axes, list)
    assert len(axes) == 2
    fig = cf.pl.embedding(adata, "X_2d", color=["cell_type", "batch"], return_fig=True)
    assert isinstance(fig, Figure)


def test_ax_and_show_and_save(adata, tmp_path):
    fig, ax = plt.subplots()
    out = cf.pl.embedding(adata, "X_2d", color="cell_type", ax=ax, show=False)
    assert out is ax
    assert cf.pl.embedding(adata, "X_2d", color="cell_type", show=True) is None
    path = tmp_path / "emb.pdf"
    cf.pl.embedding(adata, "X_2d", color="cell_type", show=False, save=path)
    assert path.stat().st_size > 0


def test_bad_inputs(adata):
    with pytest.raises(MissingKeyError, match="basis='X_nope'"):
        cf.pl.embedding(adata, "X_nope", show=False)
    with pytest.raises(MissingKeyError, match="color"):
        cf.pl.embedding(adata, "X_2d", color=["cell_type", "nope"], show=False)
    adata.obsm["X_1d"] = np.zeros((adata.n_obs, 1))
    with pytest.raises(ValueError, match="at least two dimensions"):
        cf.pl.embedding(adata, "X_1d", show=False)
    fig, ax = plt.subplots()
    with pytest.raises(ValueError, match="single `color`"):
        cf.pl.embedding(adata, "X_2d", color=["cell_type", "batch"], ax=ax, show=False)
