"""Leiden clustering with a search over the resolution (xTrimoGene appendix 4, scFormer appendix A.1.1)."""

from __future__ import annotations

import logging
import random
import warnings
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
from natsort import natsorted
from scipy import sparse

from cellformers._docs import doc_dsp
from cellformers._exceptions import InvalidExpressionError
from cellformers._settings import settings
from cellformers._utils import check_key, resolve_adata
from cellformers.metrics import normalized_mutual_info

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

#: Resolution grid of the NMI sweep is ``[2 * x / n for x in 1..n]``; n = 20 gives 0.1, 0.2, …, 2.0 (scFormer A.1.1).
_DEFAULT_N_RESOLUTIONS = 20


# --- building blocks shared with `benchmark` -----------------------------------------------------------------


def _get_rep(adata: AnnData, use_rep: str, *, arg: str = "use_rep") -> np.ndarray:
    """Dense float copy of ``adata.obsm[use_rep]`` after checking it exists, is 2-D and finite."""
    check_key(adata, "obsm", use_rep, arg=arg)
    X = adata.obsm[use_rep]
    if isinstance(X, pd.DataFrame):
        X = X.to_numpy()
    if sparse.issparse(X):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] == 0:
        msg = f"`{arg}={use_rep!r}`: adata.obsm[{use_rep!r}] must be a cells × dimensions matrix, got shape {X.shape}."
        raise ValueError(msg)
    if not np.isfinite(X).all():
        msg = (
            f"`{arg}={use_rep!r}`: adata.obsm[{use_rep!r}] contains NaN or infinite values. Recompute the embedding "
            "(from raw counts without NaN), or leave out the cells whose rows are not finite."
        )
        raise InvalidExpressionError(msg)
    return X


def _knn_graph(X: np.ndarray, *, n_neighbors: int, random_state: int) -> sparse.csr_matrix:
    """UMAP-weighted kNN connectivities of ``X``, computed by :func:`scanpy.pp.neighbors` on a throwaway AnnData.

    The caller's ``AnnData`` never sees this graph, so its ``uns['neighbors']`` / ``obsp`` are left alone. Nor does
    torch's thread count change: pynndescent sets numba's, which goes through the OpenMP runtime torch shares.
    """
    import scanpy as sc
    import torch
    from anndata import AnnData

    n = X.shape[0]
    if n < 3:
        msg = f"a kNN graph needs at least 3 cells, got {n}."
        raise ValueError(msg)
    k = min(n_neighbors, n - 1)
    tmp = AnnData(obs=pd.DataFrame(index=pd.RangeIndex(n).astype(str)), obsm={"X_rep": X})
    n_threads = torch.get_num_threads()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sc.pp.neighbors(tmp, n_neighbors=k, use_rep="X_rep", random_state=random_state)
    finally:
        torch.set_num_threads(n_threads)
    return sparse.csr_matrix(tmp.obsp["connectivities"])


def _leiden(graph: sparse.csr_matrix, resolution: float, seed: int) -> np.ndarray:
    """Leiden partition of ``graph`` at ``resolution``; clusters numbered 0, 1, … by decreasing size.

    Follows scib-metrics' ``_compute_clustering_leiden``: the symmetric connectivities become an undirected igraph
    graph with both edge directions kept (as scanpy does), and ``community_leiden(objective_function="modularity",
    weights="weight", resolution=resolution)`` runs under a ``random.Random(seed)`` generator. igraph's global
    generator is restored afterwards.
    """
    import igraph

    g = igraph.Graph.Weighted_Adjacency(graph, mode="directed")
    g.to_undirected(mode="each")
    igraph.set_random_number_generator(random.Random(seed))
    try:
        part = g.community_leiden(objective_function="modularity", weights="weight", resolution=resolution)
    finally:
        igraph.set_random_number_generator(random)
    membership = np.asarray(part.membership, dtype=np.int64)
    sizes = np.bincount(membership)
    order = np.argsort(-sizes, kind="stable")
    remap = np.empty_like(order)
    remap[order] = np.arange(order.size)
    return remap[membership]


class _SearchResult(NamedTuple):
    clusters: np.ndarray
    resolution: float
    n_clusters: int
    trace: dict[str, np.ndarray]
    reached: bool
    nmi: float


def _trace(rows: list[tuple[float, int, float]]) -> dict[str, np.ndarray]:
    return {
        "resolution": np.array([r[0] for r in rows], dtype=np.float64),
        "n_clusters": np.array([r[1] for r in rows], dtype=np.int64),
        "nmi": np.array([r[2] for r in rows], dtype=np.float64),
    }


def _dichotomy(graph: sparse.csr_matrix, n_clusters: int, *, seed: int, max_iter: int) -> _SearchResult:
    """Dichotomy on the resolution until Leiden gives exactly ``n_clusters`` clusters (xTrimoGene appendix 4).

    Starts at resolution 1; doubles the upper bound while there are too few clusters, then bisects between the
    last resolution with too few clusters (or 0) and the first with too many. Stops at the first resolution that
    gives ``n_clusters`` or after ``max_iter`` Leiden runs; then the partition closest to the target is kept
    (``reached=False``).
    """
    rows: list[tuple[float, int, float]] = []
    best: tuple[int, np.ndarray, float] | None = None

    def run(r: float) -> int:
        nonlocal best
        membership = _leiden(graph, r, seed)
        k = int(membership.max()) + 1
        rows.append((r, k, float("nan")))
        if best is None or abs(k - n_clusters) < abs(best[0] - n_clusters):
            best = (k, membership, r)
        return k

    lo, hi = 0.0, 1.0
    k = run(hi)
    while k < n_clusters and len(rows) < max_iter:
        lo, hi = hi, hi * 2.0
        k = run(hi)
    while k != n_clusters and len(rows) < max_iter and hi - lo > 1e-9 * max(hi, 1.0):
        mid = (lo + hi) / 2.0
        k = run(mid)
        if k < n_clusters:
            lo = mid
        elif k > n_clusters:
            hi = mid
    assert best is not None
    k_best, membership, r_best = best
    return _SearchResult(membership, r_best, k_best, _trace(rows), k_best == n_clusters, float("nan"))


def _nmi_sweep(graph: sparse.csr_matrix, labels: np.ndarray, *, seed: int, n_resolutions: int) -> _SearchResult:
    """Leiden over ``r in [2 * x / n for x in 1..n]``, keeping the partition of highest NMI with ``labels``.

    scFormer appendix A.1.1 (NMI over resolutions 0.1 … 2 in steps of 0.1 for n = 20), with Leiden in place of
    Louvain as in scib-metrics' ``nmi_ari_cluster_labels_leiden``. ``labels`` may hold missing values (``None`` /
    NaN): those cells are clustered but left out of the NMI. Ties keep the lowest resolution.
    """
    known = ~pd.isna(labels)
    rows: list[tuple[float, int, float]] = []
    best: tuple[float, np.ndarray, float, int] | None = None
    for x in range(1, n_resolutions + 1):
        r = 2.0 * x / n_resolutions
        membership = _leiden(graph, r, seed)
        k = int(membership.max()) + 1
        nmi = normalized_mutual_info(labels[known], membership[known])
        rows.append((r, k, nmi))
        if best is None or nmi > best[0]:
            best = (nmi, membership, r, k)
    assert best is not None
    nmi, membership, r_best, k_best = best
    return _SearchResult(membership, r_best, k_best, _trace(rows), True, nmi)


def _obs_labels(adata: AnnData, key: str, *, arg: str) -> np.ndarray:
    """``adata.obs[key]`` as an object array with ``None`` for missing values, after checking the key."""
    check_key(adata, "obs", key, arg=arg)
    col = adata.obs[key]
    values = col.astype(object).to_numpy()
    values[pd.isna(col).to_numpy()] = None
    return values


def _as_categorical(clusters: np.ndarray) -> pd.Categorical:
    values = clusters.astype(str)
    return pd.Categorical(values=values, categories=natsorted(np.unique(values)))


# --- public API ----------------------------------------------------------------------------------------------


@doc_dsp.dedent
def leiden_search(
    adata: AnnData,
    *,
    use_rep: str,
    n_clusters: int | None = None,
    labels_key: str | None = None,
    n_neighbors: int = 15,
    n_resolutions: int = _DEFAULT_N_RESOLUTIONS,
    max_iter: int = 50,
    key_added: str = "leiden_search",
    random_state: int = 0,
    copy: bool = False,
) -> AnnData | None:
    """Leiden clustering of an embedding, with the resolution chosen for a target cluster count or for NMI.

    Exactly one of ``n_clusters`` and ``labels_key`` must be given:

    * ``n_clusters``: the dichotomy on resolution of xTrimoGene :cite:p:`Gong23` (appendix section 4): start at
      resolution 1, double it while Leiden finds fewer than ``n_clusters`` clusters, then bisect until it finds
      exactly ``n_clusters``, for at most ``max_iter`` Leiden runs. If the exact count is never reached (the
      number of clusters is not monotone in the resolution, or the graph has more connected components than
      ``n_clusters``), a :class:`UserWarning` says so and the partition whose count is closest to the target is kept;
      ``adata.uns[key_added]['params']['reached']`` is then ``False``.
    * ``labels_key``: the NMI-maximising sweep of scFormer :cite:p:`Cui22` (appendix A.1.1): Leiden at resolutions
      ``[2 * x / n for x in 1..n]`` (``n = n_resolutions``; 0.1, 0.2, …, 2.0 by default) and keep the partition with
      the highest NMI against ``adata.obs[labels_key]`` (cells with a missing label are clustered but not scored).
      As in scib-metrics, Leiden replaces the Louvain algorithm of the paper.

    The kNN graph is built from ``adata.obsm[use_rep]`` with :func:`scanpy.pp.neighbors` (``n_neighbors``, UMAP
    connectivities) on a private, throwaway AnnData, so ``adata.uns['neighbors']`` and ``adata.obsp`` are never read
    or overwritten. Each Leiden run is seeded igraph ``community_leiden(objective_function="modularity",
    weights="weight", resolution=r)``, as in scib-metrics. Nothing is written to ``adata`` when an error is raised.

    Parameters
    ----------
    %(adata)s
    use_rep
        Key of ``adata.obsm`` holding the embedding to cluster (e.g. ``"X_pca"``).
    n_clusters
        Number of clusters to reach by dichotomy on resolution.
    labels_key
        Column of ``adata.obs`` with the cell labels whose NMI the resolution sweep maximises.
    n_neighbors
        Number of neighbours of the kNN graph.
    n_resolutions
        Number ``n`` of resolutions of the NMI sweep (``labels_key`` mode).
    max_iter
        Maximum number of Leiden runs of the dichotomy (``n_clusters`` mode).
    key_added
        Key of ``adata.obs`` for the clusters and of ``adata.uns`` for the parameters and trace. The default is
        not scanpy's ``"leiden"``: the ``uns`` entry has another layout (a search trace), and a later
        :func:`scanpy.tl.leiden` call should not overwrite it (nor this one scanpy's).
    %(random_state)s Seeds the kNN search and every Leiden run.
    %(copy)s

    Returns
    -------
    Returns ``None`` if ``copy=False``, else a copy of ``adata``. Sets the following fields:

    `adata.obs['leiden_search' | key_added]` : :class:`pandas.Categorical` (dtype ``category``)
        Cluster of each cell, ``"0"`` the largest; categories in natural sort order.
    `adata.uns['leiden_search' | key_added]['params']` : :class:`dict`
        ``method`` (``"dichotomy"`` or ``"nmi"``), ``use_rep``, ``n_neighbors``, ``random_state``, the chosen
        ``resolution`` and the ``n_clusters`` it gives; in ``n_clusters`` mode also ``target_n_clusters`` and
        ``reached``; in ``labels_key`` mode also ``labels_key`` and the best ``nmi``.
    `adata.uns['leiden_search' | key_added]['trace']` : :class:`dict` of arrays
        One entry per Leiden run, in order: ``resolution``, ``n_clusters`` and ``nmi`` (NaN in ``n_clusters``
        mode); ``pandas.DataFrame(adata.uns[key_added]['trace'])`` shows it as a table.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> cf.tl.leiden_search(adata, use_rep="X_pca_hvg", n_clusters=3)
    >>> adata.obs["leiden_search"].nunique()
    3
    >>> cf.tl.leiden_search(adata, use_rep="X_pca_hvg", labels_key="labels", key_added="leiden_nmi")
    >>> sorted(adata.uns["leiden_nmi"]["params"])  # doctest: +ELLIPSIS
    [..., 'nmi', ..., 'resolution', ...]

    See Also
    --------
    cellformers.tl.benchmark : uses both searches to score embeddings.
    scanpy.tl.leiden : Leiden at a fixed resolution on the neighbours graph.
    """
    if (n_clusters is None) == (labels_key is None):
        msg = "Pass exactly one of `n_clusters=` (dichotomy on resolution) and `labels_key=` (NMI sweep)."
        raise ValueError(msg)
    adata = resolve_adata(adata)
    X = _get_rep(adata, use_rep, arg="use_rep")
    n_obs = X.shape[0]
    if n_clusters is not None:
        if isinstance(n_clusters, bool) or not isinstance(n_clusters, int | np.integer) or n_clusters < 1:
            msg = f"`n_clusters` must be a positive integer, got {n_clusters!r}."
            raise ValueError(msg)
        if n_clusters > n_obs:
            msg = f"`n_clusters={n_clusters}` is more than the {n_obs} cells of `adata`."
            raise ValueError(msg)
        if max_iter < 1:
            msg = f"`max_iter` must be at least 1, got {max_iter!r}."
            raise ValueError(msg)
        labels = None
    else:
        labels = _obs_labels(adata, labels_key, arg="labels_key")
        if pd.isna(labels).all():
            msg = f"`labels_key={labels_key!r}`: every value of adata.obs[{labels_key!r}] is missing."
            raise ValueError(msg)
        if n_resolutions < 1:
            msg = f"`n_resolutions` must be at least 1, got {n_resolutions!r}."
            raise ValueError(msg)
    if n_neighbors < 2:
        msg = f"`n_neighbors` must be at least 2, got {n_neighbors!r}."
        raise ValueError(msg)

    logger.info(f"computing Leiden clusters of {use_rep!r} by resolution search")
    graph = _knn_graph(X, n_neighbors=n_neighbors, random_state=random_state)
    params: dict = {
        "use_rep": use_rep,
        "n_neighbors": int(n_neighbors),
        "random_state": int(random_state),
        "objective_function": "modularity",
    }
    if labels is None:
        res = _dichotomy(graph, int(n_clusters), seed=random_state, max_iter=max_iter)
        params.update(method="dichotomy", target_n_clusters=int(n_clusters), reached=bool(res.reached))
        if not res.reached:
            msg = (
                f"leiden_search could not reach exactly {n_clusters} clusters in {len(res.trace['resolution'])} "
                f"Leiden runs; keeping the closest partition ({res.n_clusters} clusters at resolution "
                f"{res.resolution:.4g}). Try another `random_state`, `n_neighbors` or a larger `max_iter`."
            )
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
    else:
        res = _nmi_sweep(graph, labels, seed=random_state, n_resolutions=n_resolutions)
        params.update(method="nmi", labels_key=labels_key, nmi=float(res.nmi))
    params.update(resolution=float(res.resolution), n_clusters=int(res.n_clusters))

    adata = adata.copy() if copy else adata
    adata.obs[key_added] = _as_categorical(res.clusters)
    adata.uns[key_added] = {"params": params, "trace": res.trace}
    logger.info(
        f"    found {res.n_clusters} clusters at resolution {res.resolution:.4g}\n"
        f"added\n    {key_added!r}, the cluster labels (adata.obs, categorical)\n"
        f"    {key_added!r}, parameters and trace (adata.uns)"
    )
    return adata if copy else None
