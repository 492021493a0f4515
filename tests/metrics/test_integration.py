from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse
from sklearn import metrics as skm

from cellformers import metrics as M


@pytest.fixture
def rng_data():
    """scib-metrics style random data: 200 cells, 10 dims, 4 labels, 3 batches."""
    rng = np.random.default_rng(42)
    X = rng.normal(size=(200, 10))
    labels = rng.integers(0, 4, size=200)
    batch = rng.integers(0, 3, size=200)
    return X, labels, batch


# --- hand-checked tiny cases ---------------------------------------------------------------------------------


def test_ari_nmi_identical_and_permuted():
    y = np.array(["a", "a", "b", "b", "c", "c"])
    assert M.adjusted_rand_index(y, y) == pytest.approx(1.0)
    assert M.normalized_mutual_info(y, np.array([2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)
    assert M.adjusted_rand_index(y, np.array([2, 2, 0, 0, 1, 1])) == pytest.approx(1.0)


def test_homogeneity_completeness_by_hand():
    y = np.array([0, 0, 1, 1])
    one_cluster = np.zeros(4, dtype=int)
    singletons = np.arange(4)
    # One cluster holding both labels: complete, not homogeneous.
    assert M.homogeneity(y, one_cluster) == pytest.approx(0.0)
    assert M.completeness(y, one_cluster) == pytest.approx(1.0)
    # Every cell its own cluster: homogeneous; CP = 1 - H(C|Y)/H(C) = 1 - log 2 / log 4 = 0.5.
    assert M.homogeneity(y, singletons) == pytest.approx(1.0)
    assert M.completeness(y, singletons) == pytest.approx(0.5)
    # NMI (arithmetic) = I / ((H(Y)+H(C))/2) = log2 / ((log2 + log4)/2) = 2/3.
    assert M.normalized_mutual_info(y, singletons) == pytest.approx(2 / 3)


def test_silhouette_scaled_by_hand():
    # Points 0, 1 | 10, 11 on a line: s = 1 - 1/10.5, 1 - 1/9.5, 1 - 1/9.5, 1 - 1/10.5.
    X = np.array([[0.0], [1.0], [10.0], [11.0]])
    labels = np.array(["a", "a", "b", "b"])
    expected = ((1 - 1 / 10.5) + (1 - 1 / 9.5)) / 2
    assert M.silhouette(X, labels) == pytest.approx(expected)
    assert M.asw_cell(X, labels) == pytest.approx((expected + 1) / 2)
    # Batches alternate: s = -0.4, -0.5, -0.5, -0.4, so ASW_B = -0.45 and ASW_batch = 1 - 0.45.
    batch = np.array([0, 1, 0, 1])
    assert M.silhouette(X, batch) == pytest.approx(-0.45)
    assert M.asw_batch(X, batch) == pytest.approx(0.55)


def test_graph_connectivity_by_hand():
    # a: 0-1-2 connected; b: only 3-4 connected, 5 isolated within b (its edge goes to a).
    edges = [(0, 1), (1, 2), (3, 4), (2, 5), (2, 3)]
    rows, cols = zip(*edges, strict=True)
    A = sparse.coo_matrix((np.ones(len(edges)), (rows, cols)), shape=(6, 6))
    labels = np.array(["a", "a", "a", "b", "b", "b"])
    assert M.graph_connectivity(A, labels) == pytest.approx((1 + 2 / 3) / 2)
    # Direction of edges does not matter, nor does a dense input.
    assert M.graph_connectivity(A.T.toarray(), labels) == pytest.approx((1 + 2 / 3) / 2)


def test_aggregates_scformer_definitions():
    assert M.avg_bio(0.3, 0.6, 0.9) == pytest.approx(0.6)
    assert M.avg_batch(0.2, 0.4) == pytest.approx(0.3)
    assert M.overall(0.6, 0.3) == pytest.approx(0.6 * 0.6 + 0.4 * 0.3)
    assert np.isnan(M.avg_batch(float("nan"), 0.4))
    assert np.isnan(M.overall(0.5, float("nan")))


# --- random data (np.random.default_rng(42)) ----------------------------------------------------------------


def test_random_matches_sklearn(rng_data):
    X, labels, batch = rng_data
    clusters = np.random.default_rng(42).integers(0, 5, size=labels.size)
    assert M.adjusted_rand_index(labels, clusters) == pytest.approx(skm.adjusted_rand_score(labels, clusters))
    assert M.normalized_mutual_info(labels, clusters) == pytest.approx(
        skm.normalized_mutual_info_score(labels, clusters, average_method="arithmetic")
    )
    assert M.homogeneity(labels, clusters) == pytest.approx(skm.homogeneity_score(labels, clusters))
    assert M.completeness(labels, clusters) == pytest.approx(skm.completeness_score(labels, clusters))
    assert M.silhouette(X, labels) == pytest.approx(skm.silhouette_score(X, labels))
    # Random labels on noise: ARI about 0, silhouettes about 0, so ASW_cell ~ 0.5 and ASW_batch ~ 1.
    assert abs(M.adjusted_rand_index(labels, clusters)) < 0.05
    assert 0.4 < M.asw_cell(X, labels) < 0.6
    assert M.asw_batch(X, batch) > 0.9


def test_random_ranges_and_separated_blobs():
    rng = np.random.default_rng(42)
    labels = np.repeat(np.arange(4), 50)
    centers = rng.normal(scale=10, size=(4, 10))
    X = centers[labels] + rng.normal(size=(200, 10))
    assert M.asw_cell(X, labels) > 0.8
    # Batches split each blob in two: silhouette w.r.t. batch ~ 0, mixing ~ 1.
    batch = rng.integers(0, 2, size=200)
    assert M.asw_batch(X, batch) > 0.9
    # Batch == label: perfectly separated batches, poor mixing.
    assert M.asw_batch(X, labels) < 0.3
    for v in (M.asw_cell(X, labels), M.asw_batch(X, batch)):
        assert 0.0 <= v <= 1.0


def test_graph_connectivity_knn_random(rng_data):
    from sklearn.neighbors import kneighbors_graph

    X, labels, _ = rng_data
    G = kneighbors_graph(X, n_neighbors=15)
    gc = M.graph_connectivity(G, labels)
    assert 0.0 < gc <= 1.0
    # One label covering everything: a connected kNN graph gives 1.
    assert M.graph_connectivity(G, np.zeros(200)) == pytest.approx(1.0)


# --- degenerate and bad inputs --------------------------------------------------------------------------------


def test_silhouette_undefined_is_nan():
    X = np.random.default_rng(42).normal(size=(10, 3))
    assert np.isnan(M.silhouette(X, np.zeros(10)))
    assert np.isnan(M.asw_batch(X, np.zeros(10)))
    assert np.isnan(M.silhouette(X, np.arange(10)))


@pytest.mark.parametrize(
    ("fn", "args"),
    [
        (M.adjusted_rand_index, (np.zeros(3), np.zeros(4))),
        (M.normalized_mutual_info, (np.array([0.0, np.nan]), np.zeros(2))),
        (M.silhouette, (np.zeros((3, 2)), np.zeros(4))),
        (M.silhouette, (np.zeros(4), np.zeros(4))),
        (M.silhouette, (np.array([[0.0], [np.inf], [1.0]]), np.array([0, 1, 1]))),
        (M.graph_connectivity, (np.zeros((3, 3)), np.zeros(4))),
        (M.homogeneity, (np.zeros(0), np.zeros(0))),
    ],
)
def test_bad_inputs_raise(fn, args):
    with pytest.raises(ValueError):  # noqa: PT011
        fn(*args)
