"""The package's silhouette and graph connectivity against scib-metrics on the same embedding (issue 20)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.neighbors import NearestNeighbors

from cellformers import metrics as M

scib_metrics = pytest.importorskip("scib_metrics", reason="scib-metrics is the optional `benchmark` extra")
pytestmark = pytest.mark.optional


@pytest.fixture
def embedding():
    rng = np.random.default_rng(42)
    n, k = 300, 4
    labels = rng.integers(0, k, n)
    centers = rng.normal(scale=2.0, size=(k, 10))
    X = (centers[labels] + rng.normal(size=(n, 10))).astype(np.float32)
    X[labels == 3] += rng.normal(scale=6.0, size=(int((labels == 3).sum()), 10)).astype(np.float32)  # a loose type
    return X, labels.astype(str)


def test_silhouette_matches_scib_metrics(embedding):
    X, labels = embedding
    assert M.silhouette(X, labels) == pytest.approx(scib_metrics.silhouette_label(X, labels, rescale=False), abs=1e-5)
    assert M.asw_cell(X, labels) == pytest.approx(scib_metrics.silhouette_label(X, labels, rescale=True), abs=1e-5)


@pytest.mark.parametrize("n_neighbors", [5, 15])
def test_graph_connectivity_matches_scib_metrics_on_the_same_graph(embedding, n_neighbors):
    """Same kNN graph (scanpy-style symmetric UMAP connectivities, as scib used): the same score."""
    X, labels = embedding
    distances, indices = NearestNeighbors(n_neighbors=n_neighbors).fit(X).kneighbors(X)
    neighbors = scib_metrics.nearest_neighbors.NeighborsResults(indices=indices, distances=distances)
    graph = neighbors.knn_graph_connectivities.tocsr()
    ours = M.graph_connectivity(graph, labels)
    neighbors.__dict__["knn_graph_distances"] = graph  # scib-metrics reads this cached property
    assert ours == pytest.approx(scib_metrics.graph_connectivity(neighbors, labels), abs=1e-12)
    assert ours < 1.0  # the loose cell type splits: not a comparison of two trivial 1.0s


def test_graph_connectivity_on_scib_metrics_directed_graph_is_an_upper_bound(embedding):
    """scib-metrics' default reads the directed kNN graph with strong components: never above ours (weak)."""
    X, labels = embedding
    distances, indices = NearestNeighbors(n_neighbors=5).fit(X).kneighbors(X)
    neighbors = scib_metrics.nearest_neighbors.NeighborsResults(indices=indices, distances=distances)
    theirs = scib_metrics.graph_connectivity(neighbors, labels)
    assert M.graph_connectivity(neighbors.knn_graph_distances, labels) >= theirs
