from __future__ import annotations

import sys

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellformers as cf
from cellformers import MissingKeyError
from cellformers import metrics as M
from cellformers.tl._benchmark import METRICS, SCFORMER_METRICS, XTRIMOGENE_METRICS, _benchmark_table


def _data(n_per: int = 50, n_types: int = 4, dim: int = 8, seed: int = 42) -> ad.AnnData:
    """Blobs by cell type in 'X_good', the same plus a strong batch shift in 'X_batchy', noise in 'X_noise'."""
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(n_types), n_per)
    batch = np.tile([0, 1], types.size // 2)
    centers = rng.normal(scale=8, size=(n_types, dim))
    good = centers[types] + rng.normal(size=(types.size, dim))
    batchy = good + 6.0 * batch[:, None] * np.eye(dim)[0]
    obs = pd.DataFrame(
        {
            "cell_type": pd.Categorical([f"t{t}" for t in types]),
            "batch": pd.Categorical([f"b{b}" for b in batch]),
        },
        index=[f"c{i}" for i in range(types.size)],
    )
    adata = ad.AnnData(obs=obs)
    adata.obsm["X_good"] = good.astype(np.float32)
    adata.obsm["X_batchy"] = batchy.astype(np.float32)
    adata.obsm["X_noise"] = rng.normal(size=(types.size, dim)).astype(np.float32)
    return adata


@pytest.fixture
def data() -> ad.AnnData:
    return _data()


def test_table_shape_and_values(data):
    df = cf.tl.benchmark(data, embeddings=["X_good", "X_noise"], label_key="cell_type", batch_key="batch")
    assert list(df.index) == ["X_good", "X_noise"]
    assert df.index.name == "embedding"
    assert list(df.columns) == list(METRICS) == list(XTRIMOGENE_METRICS + SCFORMER_METRICS)
    assert np.isfinite(df.to_numpy()).all()
    good, noise = df.loc["X_good"], df.loc["X_noise"]
    assert good["ARI"] == pytest.approx(1.0)
    assert good["ARI_cell"] == pytest.approx(1.0)
    assert good["NMI_cell"] == pytest.approx(1.0)
    assert good["AvgBIO"] > noise["AvgBIO"] + 0.3
    assert good["SIL"] > noise["SIL"]
    # Aggregates follow the scFormer definitions.
    for _, row in df.iterrows():
        assert row["AvgBIO"] == pytest.approx((row["ARI_cell"] + row["NMI_cell"] + row["ASW_cell"]) / 3)
        assert row["AvgBATCH"] == pytest.approx((row["ASW_batch"] + row["GraphConn"]) / 2)
        assert row["Overall"] == pytest.approx(0.6 * row["AvgBIO"] + 0.4 * row["AvgBATCH"])


def test_matches_metric_functions(data):
    df = cf.tl.benchmark(data, embeddings="X_good", label_key="cell_type", batch_key="batch")
    X = data.obsm["X_good"]
    assert df.loc["X_good", "ASW_cell"] == pytest.approx(M.asw_cell(X, data.obs["cell_type"].to_numpy()))
    assert df.loc["X_good", "ASW_batch"] == pytest.approx(M.asw_batch(X, data.obs["batch"].to_numpy()))
    # SIL is the silhouette of the dichotomy clusters; here they equal the cell types.
    assert df.loc["X_good", "SIL"] == pytest.approx(M.silhouette(X, data.obs["cell_type"].to_numpy()), abs=1e-6)


def test_batch_metrics_see_batch_effect(data):
    df = cf.tl.benchmark(data, embeddings=["X_good", "X_batchy"], label_key="cell_type", batch_key="batch")
    assert df.loc["X_good", "ASW_batch"] > df.loc["X_batchy", "ASW_batch"]


def test_without_batch_key_batch_metrics_nan(data):
    df = cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type")
    row = df.loc["X_good"]
    assert np.isnan(row["ASW_batch"])
    assert np.isnan(row["AvgBATCH"])
    assert np.isnan(row["Overall"])
    assert np.isfinite(row["GraphConn"])
    assert np.isfinite(row["AvgBIO"])
    assert "batch_key" not in data.uns["cellformers_benchmark"]["params"]


def test_single_batch_warns(data):
    data.obs["one"] = "b0"
    with pytest.warns(UserWarning, match="1 batch"):
        df = cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type", batch_key="one")
    assert np.isnan(df.loc["X_good", "ASW_batch"])


def test_nan_labels_are_left_out(data):
    labels = data.obs["cell_type"].astype(object)
    labels.iloc[::7] = np.nan
    data.obs["partial"] = pd.Categorical(labels)
    with pytest.warns(UserWarning, match="have no label"):
        df = cf.tl.benchmark(data, embeddings=["X_good"], label_key="partial")
    assert np.isfinite(df.loc["X_good", ["ARI", "NMI", "ASW_cell", "GraphConn", "AvgBIO"]].to_numpy(dtype=float)).all()
    assert df.loc["X_good", "ARI"] == pytest.approx(1.0)


def test_uns_storage_and_h5ad_roundtrip(data, tmp_path):
    df = cf.tl.benchmark(data, embeddings=["X_good", "X_noise"], label_key="cell_type", key_added="bm")
    entry = data.uns["bm"]
    assert entry["params"]["label_key"] == "cell_type"
    assert entry["params"]["n_labels"] == 4
    assert set(entry["clustering"]) == {"X_good", "X_noise"}
    assert entry["clustering"]["X_good"]["dichotomy_n_clusters"] == 4
    pd.testing.assert_frame_equal(_benchmark_table(data, "bm"), df)
    path = tmp_path / "bm.h5ad"
    data.write_h5ad(path)
    back = ad.read_h5ad(path)
    pd.testing.assert_frame_equal(_benchmark_table(back, "bm"), df)


def test_caller_fields_untouched(data):
    before_obs = data.obs.copy()
    before_obsm = set(data.obsm.keys())
    cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type", batch_key="batch")
    pd.testing.assert_frame_equal(data.obs, before_obs)
    assert set(data.obsm.keys()) == before_obsm
    assert set(data.uns.keys()) == {"cellformers_benchmark"}
    assert len(data.obsp) == 0


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"embeddings": ["X_good", "X_nope"], "label_key": "cell_type"}, MissingKeyError, "embeddings='X_nope'"),
        ({"embeddings": ["X_good"], "label_key": "nope"}, MissingKeyError, "label_key='nope'"),
        (
            {"embeddings": ["X_good"], "label_key": "cell_type", "batch_key": "nope"},
            MissingKeyError,
            "batch_key='nope'",
        ),
        ({"embeddings": [], "label_key": "cell_type"}, ValueError, "empty"),
        ({"embeddings": ["X_good"], "label_key": "single"}, ValueError, "single cell type"),
        ({"embeddings": ["X_good"], "label_key": "missing"}, ValueError, "every value"),
        ({"embeddings": ["X_inf"], "label_key": "cell_type"}, ValueError, "NaN or infinite"),
    ],
)
def test_bad_inputs(data, kwargs, exc, match):
    data.obs["single"] = "t0"
    data.obs["missing"] = np.nan
    data.obsm["X_inf"] = np.full((data.n_obs, 2), np.inf)
    with pytest.raises(exc, match=match):
        cf.tl.benchmark(data, **kwargs)
    assert "cellformers_benchmark" not in data.uns


def test_scib_missing_gives_clear_import_error(data, monkeypatch):
    monkeypatch.setitem(sys.modules, "scib_metrics", None)
    monkeypatch.setitem(sys.modules, "scib_metrics.benchmark", None)
    with pytest.raises(ImportError, match=r"pip install cellformers\[benchmark\]"):
        cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type", scib_metrics=True)
    assert "cellformers_benchmark" not in data.uns


@pytest.mark.optional
def test_scib_metrics_table_beside(data, tmp_path):
    pytest.importorskip("scib_metrics")
    df = cf.tl.benchmark(
        data,
        embeddings=["X_good", "X_noise"],
        label_key="cell_type",
        batch_key="batch",
        scib_metrics=True,
        scib_pre_integrated_key="X_batchy",
    )
    scib_cols = [c for c in df.columns if c.startswith("scib ")]
    assert {"scib Bio conservation", "scib Batch correction", "scib Total", "scib Silhouette label"} <= set(scib_cols)
    assert list(df.columns[: len(METRICS)]) == list(METRICS)
    assert df.loc["X_good", "scib Bio conservation"] > df.loc["X_noise", "scib Bio conservation"]
    # scib's label silhouette is the same (ASW_C + 1) / 2.
    assert df.loc["X_good", "scib Silhouette label"] == pytest.approx(df.loc["X_good", "ASW_cell"], abs=1e-3)
    path = tmp_path / "scib.h5ad"
    data.write_h5ad(path)
    pd.testing.assert_frame_equal(_benchmark_table(ad.read_h5ad(path)), df)


def test_scib_with_batch_needs_x_or_pre_integrated_key(data):
    pytest.importorskip("scib_metrics")
    with pytest.raises(MissingKeyError, match="scib_pre_integrated_key"):
        cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type", batch_key="batch", scib_metrics=True)


@pytest.mark.optional
def test_scib_metrics_without_batch(data):
    pytest.importorskip("scib_metrics")
    df = cf.tl.benchmark(data, embeddings=["X_good"], label_key="cell_type", scib_metrics=True)
    assert "scib Bio conservation" in df.columns
    assert "scib Total" not in df.columns
