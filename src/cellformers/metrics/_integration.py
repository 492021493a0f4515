"""Embedding-quality metrics of the xTrimoGene and scFormer papers, as pure functions on arrays.

Two families, each implemented as its paper defines it:

* xTrimoGene :cite:p:`Gong23`, appendix section 4 ("Cell clustering"): the Leiden clusters reached by a
  dichotomy on resolution are compared with the cell types by the adjusted Rand index (ARI), normalized
  mutual information (NMI), homogeneity (HOMO) and completeness (CP); the silhouette coefficient (SIL)
  scores the embedding against those clusters.
* scFormer :cite:p:`Cui22`, appendix A.1.1 ("Embedding extraction"), following :cite:t:`Luecken22`:
  ``NMI_cell`` / ``ARI_cell`` on NMI-optimised clusters, the scaled silhouettes ``ASW_cell = (ASW_C + 1) / 2``
  and ``ASW_batch = 1 - |ASW_B|``, graph connectivity, and the aggregates ``AvgBIO``, ``AvgBATCH`` and
  ``Overall``.

Every function takes plain arrays (labels of any hashable dtype; missing labels must be removed by the caller)
and returns a Python ``float``. Nothing here touches :class:`~anndata.AnnData`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse
from sklearn import metrics as skm

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

logger = logging.getLogger(__name__)

__all__ = [
    "adjusted_rand_index",
    "asw_batch",
    "asw_cell",
    "avg_batch",
    "avg_bio",
    "completeness",
    "graph_connectivity",
    "homogeneity",
    "normalized_mutual_info",
    "overall",
    "silhouette",
]


def _as_labels(labels: ArrayLike, *, name: str) -> np.ndarray:
    arr = np.asarray(labels)
    if arr.ndim != 1:
        msg = f"`{name}` must be one-dimensional, got shape {arr.shape}."
        raise ValueError(msg)
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        msg = f"`{name}` contains NaN; drop the cells without a label before computing the metric."
        raise ValueError(msg)
    return arr


def _pair(labels_true: ArrayLike, labels_pred: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    t = _as_labels(labels_true, name="labels_true")
    p = _as_labels(labels_pred, name="labels_pred")
    if t.shape[0] != p.shape[0]:
        msg = f"`labels_true` has {t.shape[0]} entries but `labels_pred` has {p.shape[0]}; they must match."
        raise ValueError(msg)
    if t.shape[0] == 0:
        msg = "cannot compute a clustering metric on zero cells."
        raise ValueError(msg)
    return t, p


def _embedding(X: ArrayLike, n: int) -> np.ndarray:
    if sparse.issparse(X):
        X = X.toarray()
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        msg = f"`X` must be a 2-D (cells × dimensions) array, got shape {arr.shape}."
        raise ValueError(msg)
    if arr.shape[0] != n:
        msg = f"`X` has {arr.shape[0]} rows but the labels have {n} entries; they must match."
        raise ValueError(msg)
    if not np.isfinite(arr).all():
        msg = "`X` contains NaN or infinite values."
        raise ValueError(msg)
    return arr


# --- xTrimoGene, appendix section 4 (and scFormer A.1.1 for ARI/NMI) -----------------------------------------


def adjusted_rand_index(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Adjusted Rand index between cell labels and cluster labels.

    ARI (Hubert & Arabie, 1985), as used by xTrimoGene (appendix section 4, "ARI") and scFormer (appendix A.1.1,
    ``ARI_cell``); computed by :func:`sklearn.metrics.adjusted_rand_score`. 1 for identical partitions,
    about 0 for random ones.

    Parameters
    ----------
    labels_true
        Ground-truth label of each cell.
    labels_pred
        Cluster of each cell.
    """
    t, p = _pair(labels_true, labels_pred)
    return float(skm.adjusted_rand_score(t, p))


def normalized_mutual_info(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Normalized mutual information between cell labels and cluster labels.

    ``NMI = I(Y; C) / ((H(Y) + H(C)) / 2)`` (arithmetic normalisation, as in scib and scib-metrics); xTrimoGene
    appendix section 4 ("NMI") and scFormer appendix A.1.1 (``NMI_cell``). Computed by
    :func:`sklearn.metrics.normalized_mutual_info_score` with ``average_method="arithmetic"``.

    Parameters
    ----------
    labels_true
        Ground-truth label of each cell.
    labels_pred
        Cluster of each cell.
    """
    t, p = _pair(labels_true, labels_pred)
    return float(skm.normalized_mutual_info_score(t, p, average_method="arithmetic"))


def homogeneity(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Homogeneity ``HOMO = 1 - H(Y | C) / H(Y)`` (xTrimoGene appendix section 4, "HOMO").

    1 when every cluster holds cells of a single label (Rosenberg & Hirschberg, 2007;
    :func:`sklearn.metrics.homogeneity_score`).

    Parameters
    ----------
    labels_true
        Ground-truth label of each cell.
    labels_pred
        Cluster of each cell.
    """
    t, p = _pair(labels_true, labels_pred)
    return float(skm.homogeneity_score(t, p))


def completeness(labels_true: ArrayLike, labels_pred: ArrayLike) -> float:
    """Completeness ``CP = 1 - H(C | Y) / H(C)`` (xTrimoGene appendix section 4, "CP").

    1 when all cells of a label fall in the same cluster (Rosenberg & Hirschberg, 2007;
    :func:`sklearn.metrics.completeness_score`).

    Parameters
    ----------
    labels_true
        Ground-truth label of each cell.
    labels_pred
        Cluster of each cell.
    """
    t, p = _pair(labels_true, labels_pred)
    return float(skm.completeness_score(t, p))


def silhouette(X: ArrayLike, labels: ArrayLike) -> float:
    """Mean silhouette width of the cells of ``X`` grouped by ``labels`` (Euclidean), in ``[-1, 1]``.

    ``s(i) = (b(i) - a(i)) / max(a(i), b(i))`` with ``a(i)`` the mean distance of cell ``i`` to the other cells of
    its group and ``b(i)`` the smallest mean distance to the cells of another group; the score is the mean of
    ``s(i)`` over all cells (:func:`sklearn.metrics.silhouette_score`). This is xTrimoGene's SIL (appendix section
    4) when ``labels`` are the Leiden clusters, and the unscaled ``ASW_C`` / ``ASW_B`` of scFormer A.1.1.

    Parameters
    ----------
    X
        Embedding, cells × dimensions.
    labels
        Group of each cell.

    Returns
    -------
    The silhouette, or NaN when there are fewer than 2 groups or as many groups as cells (undefined).
    """
    lab = _as_labels(labels, name="labels")
    arr = _embedding(X, lab.shape[0])
    n_groups = np.unique(lab).size
    if n_groups < 2 or n_groups >= lab.shape[0]:
        return float("nan")
    return float(skm.silhouette_score(arr, lab, metric="euclidean"))


# --- scFormer, appendix A.1.1 ---------------------------------------------------------------------------------


def asw_cell(X: ArrayLike, labels: ArrayLike) -> float:
    """Cell-type silhouette scaled to ``[0, 1]``: ``ASW_cell = (ASW_C + 1) / 2`` (scFormer appendix A.1.1).

    ``ASW_C`` is :func:`silhouette` of the embedding grouped by cell type. Higher is better.

    Parameters
    ----------
    X
        Embedding, cells × dimensions.
    labels
        Cell type of each cell.
    """
    return (silhouette(X, labels) + 1.0) / 2.0


def asw_batch(X: ArrayLike, batch: ArrayLike) -> float:
    """Batch silhouette turned into a mixing score: ``ASW_batch = 1 - |ASW_B|`` (scFormer appendix A.1.1).

    ``ASW_B`` is :func:`silhouette` of the embedding grouped by batch, over all cells at once, as the scFormer text
    writes it (scib's variant instead averages ``1 - |s(i)|`` per cell type; scib-metrics' ``silhouette_batch``
    gives that one). 1 means batches are perfectly mixed. NaN with a single batch.

    Parameters
    ----------
    X
        Embedding, cells × dimensions.
    batch
        Batch of each cell.
    """
    return 1.0 - abs(silhouette(X, batch))


def graph_connectivity(connectivities: ArrayLike, labels: ArrayLike) -> float:
    """Graph connectivity (scFormer appendix A.1.1, from :cite:t:`Luecken22`).

    ``GraphConn = 1/|C| · Σ_c |LCC(G_c)| / N_c``: for each cell type ``c``, the kNN graph restricted to the
    ``N_c`` cells of that type is split into connected components (edges taken as undirected), and the size of the
    largest one is divided by ``N_c``; the mean is taken over cell types. 1 means each cell type is one connected
    piece of the graph. On scanpy's (symmetric) connectivities this is scib's score, and scib-metrics'
    ``graph_connectivity`` given the same graph; by default scib-metrics reads the directed kNN graph with strongly
    connected components instead, which can only give a lower score (``tests/tl/test_metrics_scib.py``).

    Parameters
    ----------
    connectivities
        Square (sparse or dense) adjacency matrix of the kNN graph, e.g. ``adata.obsp['connectivities']``; any
        non-zero entry is an edge.
    labels
        Cell type of each cell.
    """
    lab = _as_labels(labels, name="labels")
    graph = sparse.csr_matrix(connectivities)
    if graph.shape != (lab.shape[0], lab.shape[0]):
        msg = (
            f"`connectivities` has shape {graph.shape}; expected ({lab.shape[0]}, {lab.shape[0]}) to match the labels."
        )
        raise ValueError(msg)
    if lab.shape[0] == 0:
        msg = "cannot compute graph connectivity on zero cells."
        raise ValueError(msg)
    scores = []
    for c in np.unique(lab):
        idx = np.flatnonzero(lab == c)
        sub = graph[idx][:, idx]
        _, comp = sparse.csgraph.connected_components(sub, directed=False)
        scores.append(np.bincount(comp).max() / idx.size)
    return float(np.mean(scores))


def avg_bio(ari: float, nmi: float, asw_cell: float) -> float:
    """``AvgBIO = (ARI + NMI + ASW_cell) / 3``, the scFormer definition (appendix A.1.1, "Aggregated Metrics").

    Parameters
    ----------
    ari
        ``ARI_cell``.
    nmi
        ``NMI_cell``.
    asw_cell
        Scaled cell-type silhouette, see :func:`asw_cell`.
    """
    return (ari + nmi + asw_cell) / 3.0


def avg_batch(asw_batch: float, graph_conn: float) -> float:
    """``AvgBATCH = (ASW_batch + GraphConn) / 2``, the scFormer definition (appendix A.1.1, "Aggregated Metrics").

    Parameters
    ----------
    asw_batch
        Batch mixing silhouette, see :func:`asw_batch`.
    graph_conn
        See :func:`graph_connectivity`.
    """
    return (asw_batch + graph_conn) / 2.0


def overall(avg_bio: float, avg_batch: float) -> float:
    """``Overall = 0.6 · AvgBIO + 0.4 · AvgBATCH``, the scFormer definition (appendix A.1.1, after Luecken et al.).

    (The scFormer text prints the left-hand side as "AvgBATCH", a typo: the sentence before it names it Overall.)

    Parameters
    ----------
    avg_bio
        See :func:`avg_bio`.
    avg_batch
        See :func:`avg_batch`.
    """
    return 0.6 * avg_bio + 0.4 * avg_batch
