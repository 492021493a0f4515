"""Side-by-side scores of cell embeddings with the metrics of xTrimoGene and scFormer (optionally scib-metrics)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers import metrics as M
from cellformers._docs import doc_dsp
from cellformers._exceptions import InvalidLabelsError, MissingKeyError
from cellformers._settings import settings
from cellformers._utils import check_key, resolve_adata

from ._leiden import _DEFAULT_N_RESOLUTIONS, _dichotomy, _get_rep, _knn_graph, _nmi_sweep, _obs_labels

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: xTrimoGene appendix section 4: scores of the Leiden partition reached by dichotomy (n_clusters = n_labels).
XTRIMOGENE_METRICS = ("ARI", "NMI", "HOMO", "CP", "SIL")
#: scFormer appendix A.1.1: NMI-optimised clustering, scaled silhouettes, graph connectivity and aggregates.
SCFORMER_METRICS = ("ARI_cell", "NMI_cell", "ASW_cell", "ASW_batch", "GraphConn", "AvgBIO", "AvgBATCH", "Overall")
METRICS = XTRIMOGENE_METRICS + SCFORMER_METRICS
#: Prefix of the columns that come from scib-metrics' Benchmarker.
SCIB_PREFIX = "scib "
_SCIB_EXTRA = "pip install cellformers[benchmark]"


def _as_key_list(embeddings: str | Sequence[str]) -> list[str]:
    keys = [embeddings] if isinstance(embeddings, str) else list(embeddings)
    if not keys:
        msg = "`embeddings` is empty; pass the obsm keys of the embeddings to score, e.g. `embeddings=['X_pca']`."
        raise ValueError(msg)
    bad = [k for k in keys if not isinstance(k, str)]
    if bad:
        msg = f"`embeddings` must be obsm keys (strings), got {bad!r}."
        raise TypeError(msg)
    return list(dict.fromkeys(keys))


def _import_scib():
    try:
        from scib_metrics.benchmark import BatchCorrection, Benchmarker, BioConservation
    except ImportError as e:
        msg = f"`scib_metrics=True` needs the optional package scib-metrics: `{_SCIB_EXTRA}`."
        raise ImportError(msg) from e
    return BatchCorrection, Benchmarker, BioConservation


def _scib_table(
    adata: AnnData,
    embeddings: list[str],
    labels: np.ndarray,
    batch: np.ndarray | None,
    *,
    pre_integrated_key: str | None,
) -> pd.DataFrame:
    """scib-metrics' ``Benchmarker`` (``prepare`` → ``benchmark`` → ``get_results``) on a private AnnData.

    Cells with a missing label (or batch) are left out. Without a batch, a constant batch is used and only the bio
    conservation metrics run. The unintegrated embedding for scib's PCR comparison is ``pre_integrated_key`` or,
    when not given, a PCA of ``adata.X`` computed as scib-metrics does, but on the private copy so that no
    ``X_pca`` of the caller (or of the embeddings) is overwritten.
    """
    BatchCorrection, Benchmarker, BioConservation = _import_scib()
    import scanpy as sc
    from anndata import AnnData

    keep = ~pd.isna(labels)
    if batch is not None:
        keep &= ~pd.isna(batch)
    idx = np.flatnonzero(keep)
    obs = pd.DataFrame(
        {
            "_label": pd.Categorical(labels[idx].astype(str)),
            "_batch": pd.Categorical(batch[idx].astype(str) if batch is not None else np.full(idx.size, "0")),
        },
        index=adata.obs_names[idx],
    )
    obsm = {k: _get_rep(adata, k, arg="embeddings")[idx] for k in embeddings}
    pre_key = "_cellformers_X_pre"
    if batch is None:
        obsm[pre_key] = obsm[embeddings[0]]  # PCR comparison is a batch metric: not computed without a batch
    elif pre_integrated_key is not None:
        obsm[pre_key] = _get_rep(adata, pre_integrated_key, arg="scib_pre_integrated_key")[idx]
    else:
        tmp_x = AnnData(X=adata.X[idx].astype(np.float32), obs=obs[[]])
        sc.pp.pca(tmp_x, n_comps=min(50, min(tmp_x.shape) - 1), svd_solver="arpack")
        obsm[pre_key] = tmp_x.obsm["X_pca"]
    tmp = AnnData(obs=obs, obsm=obsm)
    bm = Benchmarker(
        tmp,
        batch_key="_batch",
        label_key="_label",
        embedding_obsm_keys=embeddings,
        bio_conservation_metrics=BioConservation(),
        batch_correction_metrics=BatchCorrection() if batch is not None else None,
        pre_integrated_embedding_obsm_key=pre_key,
        n_jobs=1,
        progress_bar=False,
    )
    bm.prepare()
    bm.benchmark()
    res = bm.get_results(min_max_scale=False)
    res = res.loc[[k for k in embeddings if k in res.index]].astype(np.float64)
    res.columns = [f"{SCIB_PREFIX}{c}" for c in res.columns]
    return res


def _table_to_uns(df: pd.DataFrame) -> dict[str, np.ndarray]:
    """An h5ad-writable, order-preserving form of a metrics table."""
    return {
        "embedding": np.asarray(df.index, dtype=str),
        "metric": np.asarray(df.columns, dtype=str),
        "values": df.to_numpy(dtype=np.float64),
    }


def _table_from_uns(table: dict) -> pd.DataFrame:
    index = pd.Index(np.asarray(table["embedding"]).astype(str), name="embedding")
    columns = np.asarray(table["metric"]).astype(str)
    values = np.asarray(table["values"], dtype=np.float64).reshape(index.size, columns.size)
    return pd.DataFrame(values, index=index, columns=list(columns))


def _benchmark_table(adata: AnnData, key: str = "cellformers_benchmark", *, arg: str = "key") -> pd.DataFrame:
    """The table stored by :func:`benchmark` in ``adata.uns[key]`` (with scib-metrics columns when present)."""
    check_key(adata, "uns", key, arg=arg)
    entry = adata.uns[key]
    if not isinstance(entry, dict) or "results" not in entry:
        msg = f"`{arg}={key!r}`: adata.uns[{key!r}] was not written by `cellformers.tl.benchmark`."
        raise MissingKeyError(msg)
    df = _table_from_uns(entry["results"])
    if "scib_metrics" in entry:
        df = df.join(_table_from_uns(entry["scib_metrics"]))
    return df


@doc_dsp.dedent
def benchmark(
    adata: AnnData,
    *,
    embeddings: str | Sequence[str],
    label_key: str,
    batch_key: str | None = None,
    n_neighbors: int = 15,
    n_resolutions: int = _DEFAULT_N_RESOLUTIONS,
    max_iter: int = 50,
    scib_metrics: bool = False,
    scib_pre_integrated_key: str | None = None,
    random_state: int = 0,
    key_added: str = "cellformers_benchmark",
) -> pd.DataFrame:
    """Score cell embeddings with the clustering and integration metrics of xTrimoGene and scFormer.

    For each embedding ``adata.obsm[k]`` a kNN graph is built (:func:`scanpy.pp.neighbors`, ``n_neighbors``, on a
    private AnnData; the caller's neighbours are untouched) and two Leiden searches of
    :func:`~cellformers.tl.leiden_search` run on it. One row per embedding holds:

    xTrimoGene :cite:p:`Gong23`, appendix section 4, on the Leiden partition reached by **dichotomy on resolution**
    with as many clusters as there are cell types:

    * ``ARI`` -- adjusted Rand index between cell types and clusters;
    * ``NMI`` -- normalized mutual information, ``I(Y;C) / ((H(Y)+H(C))/2)``;
    * ``HOMO`` -- homogeneity, ``1 - H(Y|C)/H(Y)``;
    * ``CP`` -- completeness, ``1 - H(C|Y)/H(C)``;
    * ``SIL`` -- silhouette coefficient of the embedding w.r.t. those clusters, in ``[-1, 1]``.

    scFormer :cite:p:`Cui22`, appendix A.1.1 (after Luecken et al. 2022), on the Leiden partition of the **NMI
    sweep** over resolutions 0.1, 0.2, …, 2.0 (``n_resolutions=20``):

    * ``NMI_cell`` -- the highest NMI of the sweep; ``ARI_cell`` -- ARI of that same partition;
    * ``ASW_cell = (ASW_C + 1) / 2`` -- silhouette w.r.t. cell types, scaled to ``[0, 1]``;
    * ``ASW_batch = 1 - |ASW_B|`` -- silhouette w.r.t. batches over all cells, turned into a mixing score;
    * ``GraphConn = 1/|C| Σ_c |LCC(G_c)| / N_c`` -- per cell type, the largest connected component of the kNN
      graph restricted to that type, over its size, averaged over types;
    * ``AvgBIO = (ARI_cell + NMI_cell + ASW_cell) / 3`` (scFormer definition);
    * ``AvgBATCH = (ASW_batch + GraphConn) / 2`` (scFormer definition);
    * ``Overall = 0.6 · AvgBIO + 0.4 · AvgBATCH`` (scFormer definition).

    So the ``ARI``/``NMI`` columns are xTrimoGene's (fixed cluster count) and ``ARI_cell``/``NMI_cell``, which feed
    ``AvgBIO``, are scFormer's (NMI-optimised). Without ``batch_key``, ``ASW_batch``, ``AvgBATCH`` and ``Overall``
    are NaN; ``GraphConn`` only needs the cell types and is reported anyway. With a single batch they are NaN too
    (with a warning). Cells whose label is missing (NaN) are clustered but left out of every label-based score
    (with a warning); cells whose batch is missing are left out of ``ASW_batch``.

    With ``scib_metrics=True`` the table of scib-metrics' ``Benchmarker`` (default metric set, unscaled values)
    is added beside it, its columns prefixed ``"scib "`` (e.g. ``"scib KMeans NMI"``, ``"scib Total"``).

    Parameters
    ----------
    %(adata)s
    embeddings
        Key(s) of ``adata.obsm`` holding the embeddings to score, e.g. ``["X_pca_hvg", "X_scvi"]``.
    label_key
        Column of ``adata.obs`` with the cell types (at least two).
    batch_key
        Column of ``adata.obs`` with the batch of each cell. ``None`` skips the batch metrics.
    n_neighbors
        Number of neighbours of the kNN graph (clustering and graph connectivity).
    n_resolutions
        Number of resolutions of the NMI sweep (``2 * x / n`` for ``x`` in ``1..n``).
    max_iter
        Maximum number of Leiden runs of the dichotomy.
    scib_metrics
        Also run scib-metrics' ``Benchmarker`` (needs ``pip install cellformers[benchmark]``).
    scib_pre_integrated_key
        With ``scib_metrics=True`` and a batch: key of ``adata.obsm`` with the unintegrated embedding for scib's
        PCR comparison. ``None`` computes a PCA of ``adata.X`` as scib-metrics does (``adata.X`` should then be
        normalized), on a private copy.
    %(random_state)s Seeds the kNN search and every Leiden run.
    key_added
        Key of ``adata.uns`` where the table is stored.

    Returns
    -------
    Table with one row per embedding (index ``embedding``) and one column per metric (the 13 above, then the
    ``"scib …"`` columns). Also sets:

    `adata.uns['cellformers_benchmark' | key_added]` : :class:`dict`
        ``results`` (the table as ``embedding`` (rows), ``metric`` (columns) and ``values`` arrays),
        ``scib_metrics`` (idem, when asked), ``clustering`` (per embedding: resolution and cluster count of both searches) and ``params``.
        :func:`cellformers.pl.benchmark` plots it.

    Examples
    --------
    >>> import numpy as np
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> adata.obsm["X_random"] = np.random.default_rng(0).normal(size=(adata.n_obs, 10))
    >>> scores = cf.tl.benchmark(adata, embeddings=["X_pca_hvg", "X_random"], label_key="labels", batch_key="batch")
    >>> list(scores.index)
    ['X_pca_hvg', 'X_random']
    >>> bool(scores.loc["X_pca_hvg", "AvgBIO"] > scores.loc["X_random", "AvgBIO"])
    True
    >>> ax = cf.pl.benchmark(adata, show=False)

    See Also
    --------
    cellformers.tl.leiden_search : the two resolution searches.
    cellformers.tl.baselines : HVG-PCA, scVI and Harmony embeddings to compare against.
    """
    adata = resolve_adata(adata)
    keys = _as_key_list(embeddings)
    for k in keys:
        check_key(adata, "obsm", k, arg="embeddings")
    labels = _obs_labels(adata, label_key, arg="label_key")
    batch = _obs_labels(adata, batch_key, arg="batch_key") if batch_key is not None else None
    if scib_metrics:
        _import_scib()
        if scib_pre_integrated_key is not None:
            check_key(adata, "obsm", scib_pre_integrated_key, arg="scib_pre_integrated_key")
        elif batch is not None and (adata.X is None or adata.n_vars < 2):
            msg = (
                "`scib_metrics=True` with a `batch_key` needs an unintegrated embedding for scib's PCR comparison: "
                "pass `scib_pre_integrated_key=` (an obsm key) or keep normalized expression in `adata.X`."
            )
            raise MissingKeyError(msg)
    reps = {k: _get_rep(adata, k, arg="embeddings") for k in keys}

    known = ~pd.isna(labels)
    n_missing = int((~known).sum())
    if n_missing == known.size:
        msg = f"`label_key={label_key!r}`: every value of adata.obs[{label_key!r}] is missing."
        raise InvalidLabelsError(msg)
    classes = pd.unique(labels[known])
    if classes.size < 2:
        msg = (
            f"`label_key={label_key!r}` has a single cell type ({classes[0]!r}); clustering and silhouette scores "
            "need at least two. Pass a column with several cell types."
        )
        raise InvalidLabelsError(msg)
    if n_missing:
        msg = (
            f"{n_missing} cells have no label in adata.obs[{label_key!r}]; they are left out of the label-based scores."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
    use_batch = batch is not None
    known_b = None
    if batch is not None:
        known_b = ~pd.isna(batch)
        n_batches = pd.unique(batch[known_b]).size
        if n_batches < 2:
            msg = f"`batch_key={batch_key!r}` has {n_batches} batch(es); ASW_batch, AvgBATCH and Overall are NaN."
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
            use_batch = False
    n_labels = int(classes.size)
    lab = labels[known]

    rows: dict[str, dict[str, float]] = {}
    clustering: dict[str, dict] = {}
    for k, X in reps.items():
        t0 = time.perf_counter()
        logger.info(f"benchmarking {k!r}")
        graph = _knn_graph(X, n_neighbors=n_neighbors, random_state=random_state)
        dich = _dichotomy(graph, min(n_labels, X.shape[0]), seed=random_state, max_iter=max_iter)
        if not dich.reached:
            msg = (
                f"{k!r}: the dichotomy on resolution did not reach {n_labels} clusters; the xTrimoGene scores use the "
                f"closest partition ({dich.n_clusters} clusters)."
            )
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
        sweep = _nmi_sweep(graph, labels, seed=random_state, n_resolutions=n_resolutions)
        row = {
            "ARI": M.adjusted_rand_index(lab, dich.clusters[known]),
            "NMI": M.normalized_mutual_info(lab, dich.clusters[known]),
            "HOMO": M.homogeneity(lab, dich.clusters[known]),
            "CP": M.completeness(lab, dich.clusters[known]),
            "SIL": M.silhouette(X, dich.clusters),
            "ARI_cell": M.adjusted_rand_index(lab, sweep.clusters[known]),
            "NMI_cell": sweep.nmi,
            "ASW_cell": M.asw_cell(X[known], lab),
            "ASW_batch": M.asw_batch(X[known_b], batch[known_b]) if use_batch else float("nan"),
            "GraphConn": M.graph_connectivity(graph[known][:, known], lab),
        }
        row["AvgBIO"] = M.avg_bio(row["ARI_cell"], row["NMI_cell"], row["ASW_cell"])
        row["AvgBATCH"] = M.avg_batch(row["ASW_batch"], row["GraphConn"])
        row["Overall"] = M.overall(row["AvgBIO"], row["AvgBATCH"])
        rows[k] = row
        clustering[k] = {
            "dichotomy_resolution": float(dich.resolution),
            "dichotomy_n_clusters": int(dich.n_clusters),
            "dichotomy_reached": bool(dich.reached),
            "nmi_resolution": float(sweep.resolution),
            "nmi_n_clusters": int(sweep.n_clusters),
            "seconds": float(time.perf_counter() - t0),
        }
    df = pd.DataFrame.from_dict(rows, orient="index")[list(METRICS)]
    df.index.name = "embedding"

    scib_df = None
    if scib_metrics:
        logger.info("running scib-metrics' Benchmarker")
        scib_df = _scib_table(
            adata, keys, labels, batch if use_batch else None, pre_integrated_key=scib_pre_integrated_key
        )

    params = {
        "embeddings": np.asarray(keys, dtype=str),
        "label_key": label_key,
        "n_labels": n_labels,
        "n_neighbors": int(n_neighbors),
        "n_resolutions": int(n_resolutions),
        "max_iter": int(max_iter),
        "random_state": int(random_state),
        "scib_metrics": bool(scib_metrics),
    }
    if batch_key is not None:
        params["batch_key"] = batch_key
    entry: dict = {"params": params, "results": _table_to_uns(df), "clustering": clustering}
    if scib_df is not None:
        entry["scib_metrics"] = _table_to_uns(scib_df)
        df = df.join(scib_df)
    adata.uns[key_added] = entry
    logger.info(f"added\n    {key_added!r}, benchmark table (adata.uns)")
    return df
