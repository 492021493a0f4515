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


@pytest.fixture(scope="module")
def benchmarked() -> ad.AnnData:
    rng = np.random.default_rng(42)
    types = np.repeat(np.arange(3), 40)
    centers = rng.normal(scale=8, size=(3, 6))
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"t{t}" for t in types]),
            "batch": pd.Categorical(rng.choice(["a", "b"], types.size)),
        },
        index=[f"c{i}" for i in range(types.size)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_good"] = (centers[types] + rng.normal(size=(types.size, 6))).astype(np.float32)
    adata.obsm["X_noise"] = rng.normal(size=(types.size, 6)).astype(np.float32)
    cf.tl.benchmark(adata, embeddings=["X_good", "X_noise"], label_key="cell_type")
    return adata


@pytest.mark.parametrize("kind", ["heatmap", "bar"])
def test_show_false_returns_axes(benchmarked, kind):
    ax = cf.pl.benchmark(benchmarked, kind=kind, show=False)
    assert isinstance(ax, Axes)
    labels = [t.get_text() for t in ax.get_xticklabels()]
    # Batch metrics are all NaN without batch_key: not shown by default.
    assert "ARI" in labels
    assert "AvgBIO" in labels
    assert "ASW_batch" not in labels


def test_return_fig(benchmarked):
    fig = cf.pl.benchmark(benchmarked, return_fig=True)
    assert isinstance(fig, Figure)


def test_given_ax_is_used(benchmarked):
    fig, ax = plt.subplots()
    out = cf.pl.benchmark(benchmarked, ax=ax, show=False, metrics=["ARI", "NMI_cell"])
    assert out is ax
    assert [t.get_text() for t in ax.get_xticklabels()] == ["ARI", "NMI_cell"]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["X_good", "X_noise"]


def test_show_true_returns_none(benchmarked):
    assert cf.pl.benchmark(benchmarked, show=True) is None


def test_save(benchmarked, tmp_path):
    path = tmp_path / "figs" / "bm.png"
    cf.pl.benchmark(benchmarked, show=False, save=path)
    assert path.stat().st_size > 0


def test_nan_metric_can_be_asked_for(benchmarked):
    ax = cf.pl.benchmark(benchmarked, metrics=["ASW_batch", "AvgBIO"], show=False)
    texts = [t.get_text() for t in ax.texts]
    assert "–" in texts


def test_bad_inputs(benchmarked):
    with pytest.raises(MissingKeyError, match="key='nope'"):
        cf.pl.benchmark(benchmarked, key="nope", show=False)
    with pytest.raises(ValueError, match="does not hold"):
        cf.pl.benchmark(benchmarked, metrics=["nope"], show=False)
    with pytest.raises(ValueError, match="kind"):
        cf.pl.benchmark(benchmarked, kind="pie", show=False)
    benchmarked.uns["not_a_benchmark"] = {"a": 1}
    with pytest.raises(MissingKeyError, match="not written by"):
        cf.pl.benchmark(benchmarked, key="not_a_benchmark", show=False)


def test_heatmap_has_no_grid_lines_through_its_cells(benchmarked):
    """scanpy's ``set_figure_params`` turns axes grids on (the tutorials call it): none may cross the heatmap."""
    import matplotlib as mpl

    with mpl.rc_context({"axes.grid": True}):
        ax = cf.pl.benchmark(benchmarked, kind="heatmap", show=False)
    lines = ax.get_xgridlines() + ax.get_ygridlines()
    assert not any(line.get_visible() for line in lines)
