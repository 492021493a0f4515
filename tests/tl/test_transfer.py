from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellformers import InvalidExpressionError, MissingKeyError, tl


def _blobs(n, seed):
    rng = np.random.default_rng(seed)
    centers = np.array([[0, 0], [10, 0], [0, 10]], dtype=float)
    lab = rng.integers(0, 3, n)
    emb = centers[lab] + rng.normal(scale=1.0, size=(n, 2))
    a = ad.AnnData(np.zeros((n, 1), dtype=np.float32), obs=pd.DataFrame(index=[f"c{seed}_{i}" for i in range(n)]))
    a.obsm["X_emb"] = emb
    a.obs["cell_type"] = pd.Categorical(np.array(["a", "b", "c"])[lab])
    return a


def test_transfer_recovers_labels_with_confidence():
    ref, query = _blobs(300, 0), _blobs(100, 1)
    truth = query.obs["cell_type"].astype(str).to_numpy()
    query.obs = query.obs.drop(columns="cell_type")
    tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_emb")
    pred = query.obs["cell_type_transferred"]
    assert isinstance(pred.dtype, pd.CategoricalDtype)
    assert (pred.astype(str).to_numpy() == truth).mean() > 0.98
    conf = query.obs["cell_type_transferred_confidence"].to_numpy()
    assert conf.min() >= 0
    assert conf.max() <= 1
    assert np.median(conf) > 0.9


def test_ambiguous_cells_get_low_confidence():
    ref = _blobs(300, 0)
    query = ad.AnnData(np.zeros((1, 1), dtype=np.float32))
    query.obsm["X_emb"] = np.array([[5.0, 5.0]])  # between the three clusters
    tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_emb", n_neighbors=30)
    assert query.obs["cell_type_transferred_confidence"].iloc[0] < 0.8


def test_bad_inputs_leave_query_unchanged():
    ref, query = _blobs(50, 0), _blobs(20, 1)
    before = query.obs.copy()
    with pytest.raises(MissingKeyError, match="labels_key"):
        tl.transfer_labels(query, ref, labels_key="nope", use_rep="X_emb")
    with pytest.raises(MissingKeyError, match="use_rep"):
        tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_missing")
    query.obsm["X_emb"][0, 0] = np.nan
    with pytest.raises(InvalidExpressionError, match="NaN"):
        tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_emb")
    pd.testing.assert_frame_equal(query.obs, before)
    query.obsm["X_emb"] = np.zeros((20, 3))
    with pytest.raises(ValueError, match="same model"):
        tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_emb")
