from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

import cellformers as cf
from cellformers import MissingKeyError


def _blobs(n_per: int = 60, n_types: int = 4, dim: int = 10, seed: int = 42) -> ad.AnnData:
    rng = np.random.default_rng(seed)
    types = np.repeat(np.arange(n_types), n_per)
    centers = rng.normal(scale=8, size=(n_types, dim))
    X = centers[types] + rng.normal(size=(types.size, dim))
    adata = ad.AnnData(
        X=np.zeros((types.size, 3), dtype=np.float32),
        obs=pd.DataFrame(
            {"cell_type": pd.Categorical([f"t{t}" for t in types])}, index=[f"c{i}" for i in range(types.size)]
        ),
    )
    adata.obsm["X_emb"] = X.astype(np.float32)
    return adata


@pytest.fixture
def blobs() -> ad.AnnData:
    return _blobs()


def test_dichotomy_reaches_n_clusters(blobs):
    cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=4)
    col = blobs.obs["leiden_search"]
    assert isinstance(col.dtype, pd.CategoricalDtype)
    assert list(col.cat.categories) == ["0", "1", "2", "3"]
    params = blobs.uns["leiden_search"]["params"]
    assert params["method"] == "dichotomy"
    assert params["n_clusters"] == params["target_n_clusters"] == 4
    assert params["reached"] is True
    trace = pd.DataFrame(blobs.uns["leiden_search"]["trace"])
    assert trace["n_clusters"].iloc[-1] == 4
    assert trace["resolution"].iloc[-1] == pytest.approx(params["resolution"])
    # Blobs are recovered exactly.
    assert cf.metrics.adjusted_rand_index(blobs.obs["cell_type"], col) == pytest.approx(1.0)


@pytest.mark.parametrize("target", [2, 6, 9])
def test_dichotomy_other_targets(blobs, target):
    cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=target, key_added="cl")
    p = blobs.uns["cl"]["params"]
    assert blobs.obs["cl"].nunique() == p["n_clusters"]
    if p["reached"]:
        assert p["n_clusters"] == target


def test_clusters_numbered_by_size(blobs):
    cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=6)
    counts = blobs.obs["leiden_search"].value_counts().reindex(blobs.obs["leiden_search"].cat.categories)
    assert list(counts) == sorted(counts, reverse=True)


def test_nmi_sweep(blobs):
    cf.tl.leiden_search(blobs, use_rep="X_emb", labels_key="cell_type", key_added="leiden_nmi")
    out = blobs.uns["leiden_nmi"]
    trace = pd.DataFrame(out["trace"])
    np.testing.assert_allclose(trace["resolution"], [2 * x / 20 for x in range(1, 21)])
    best = int(np.argmax(trace["nmi"]))
    assert out["params"]["resolution"] == pytest.approx(trace["resolution"][best])
    assert out["params"]["nmi"] == pytest.approx(trace["nmi"].max())
    assert out["params"]["labels_key"] == "cell_type"
    assert blobs.obs["leiden_nmi"].nunique() == out["params"]["n_clusters"] == trace["n_clusters"][best]


def test_nmi_sweep_n_resolutions_and_missing_labels(blobs):
    labels = blobs.obs["cell_type"].astype(object)
    labels.iloc[:10] = np.nan
    blobs.obs["partial"] = labels
    cf.tl.leiden_search(blobs, use_rep="X_emb", labels_key="partial", n_resolutions=5)
    trace = blobs.uns["leiden_search"]["trace"]
    np.testing.assert_allclose(trace["resolution"], [0.4, 0.8, 1.2, 1.6, 2.0])
    # Unlabelled cells are still clustered.
    assert blobs.obs["leiden_search"].notna().all()


def test_does_not_touch_neighbors_or_other_fields(blobs):
    blobs.uns["neighbors"] = {"params": {"sentinel": 1}}
    before_obsp = set(blobs.obsp.keys())
    before_obsm = {k: v.copy() for k, v in blobs.obsm.items()}
    cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=4)
    assert blobs.uns["neighbors"] == {"params": {"sentinel": 1}}
    assert set(blobs.obsp.keys()) == before_obsp
    assert set(blobs.obsm.keys()) == set(before_obsm)
    np.testing.assert_array_equal(blobs.obsm["X_emb"], before_obsm["X_emb"])
    assert set(blobs.uns.keys()) == {"neighbors", "leiden_search"}


def test_copy(blobs):
    out = cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=4, copy=True)
    assert out is not blobs
    assert "leiden_search" in out.obs
    assert "leiden_search" not in blobs.obs
    assert "leiden_search" not in blobs.uns
    assert cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=4) is None


@pytest.mark.filterwarnings("ignore:leiden_search could not reach")
def test_deterministic(blobs):
    a = cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=6, random_state=3, copy=True)
    b = cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=6, random_state=3, copy=True)
    assert (a.obs["leiden_search"] == b.obs["leiden_search"]).all()
    np.testing.assert_array_equal(
        a.uns["leiden_search"]["trace"]["resolution"], b.uns["leiden_search"]["trace"]["resolution"]
    )


def test_unreachable_warns_and_keeps_closest():
    # Three far-apart tight groups with no edges between them: one cluster is impossible.
    rng = np.random.default_rng(42)
    X = np.concatenate([rng.normal(loc=100 * i, scale=0.1, size=(20, 3)) for i in range(3)])
    adata = ad.AnnData(obs=pd.DataFrame(index=[str(i) for i in range(60)]), obsm={"X_emb": X})
    with pytest.warns(UserWarning, match="could not reach exactly 1 clusters"):
        cf.tl.leiden_search(adata, use_rep="X_emb", n_clusters=1, max_iter=8)
    p = adata.uns["leiden_search"]["params"]
    assert p["reached"] is False
    assert p["n_clusters"] == adata.obs["leiden_search"].nunique() == 3
    assert len(adata.uns["leiden_search"]["trace"]["resolution"]) <= 8


def test_h5ad_roundtrip(blobs, tmp_path):
    cf.tl.leiden_search(blobs, use_rep="X_emb", n_clusters=4)
    cf.tl.leiden_search(blobs, use_rep="X_emb", labels_key="cell_type", key_added="nmi")
    path = tmp_path / "a.h5ad"
    blobs.write_h5ad(path)
    back = ad.read_h5ad(path)
    assert back.uns["leiden_search"]["params"]["n_clusters"] == 4
    pd.testing.assert_frame_equal(
        pd.DataFrame(back.uns["nmi"]["trace"]), pd.DataFrame(blobs.uns["nmi"]["trace"]), check_like=True
    )
    assert (back.obs["leiden_search"] == blobs.obs["leiden_search"]).all()


# --- bad inputs: clear errors and the AnnData untouched -------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"use_rep": "X_nope", "n_clusters": 3}, MissingKeyError, "use_rep='X_nope'"),
        ({"use_rep": "X_emb", "labels_key": "nope"}, MissingKeyError, "labels_key='nope'"),
        ({"use_rep": "X_emb"}, ValueError, "exactly one of"),
        ({"use_rep": "X_emb", "n_clusters": 3, "labels_key": "cell_type"}, ValueError, "exactly one of"),
        ({"use_rep": "X_emb", "n_clusters": 0}, ValueError, "positive integer"),
        ({"use_rep": "X_emb", "n_clusters": 2.5}, ValueError, "positive integer"),
        ({"use_rep": "X_emb", "n_clusters": 10_000}, ValueError, "more than the 240 cells"),
        ({"use_rep": "X_emb", "n_clusters": 3, "n_neighbors": 1}, ValueError, "n_neighbors"),
        ({"use_rep": "X_bad", "n_clusters": 3}, ValueError, "NaN or infinite"),
        ({"use_rep": "X_emb", "labels_key": "empty"}, ValueError, "every value"),
    ],
)
def test_bad_inputs(blobs, kwargs, exc, match):
    blobs.obsm["X_bad"] = np.full((blobs.n_obs, 2), np.nan)
    blobs.obs["empty"] = pd.Categorical([np.nan] * blobs.n_obs, categories=["x"])
    obs_before = blobs.obs.copy()
    uns_before = dict(blobs.uns)
    with pytest.raises(exc, match=match):
        cf.tl.leiden_search(blobs, **kwargs)
    pd.testing.assert_frame_equal(blobs.obs, obs_before)
    assert dict(blobs.uns) == uns_before


def test_missing_key_is_key_error(blobs):
    with pytest.raises(KeyError):
        cf.tl.leiden_search(blobs, use_rep="X_nope", n_clusters=3)


# --- real data ------------------------------------------------------------------------------------------------


def test_pbmc3k_pca_eight_clusters(shared_data_dir):
    adata = ad.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad")
    cf.tl.leiden_search(adata, use_rep="X_pca", n_clusters=8)
    assert adata.obs["leiden_search"].nunique() == 8
    assert adata.uns["leiden_search"]["params"]["reached"] is True
    assert adata.uns["leiden_search"]["params"]["n_clusters"] == 8
