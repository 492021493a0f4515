"""Imputation benchmark: hide expressed entries, let each method predict them, score on the hidden entries."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from cellformers._utils import check_counts, check_key, get_matrix

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

#: Built-in baselines of :func:`evaluate_imputation`.
BUILTIN_IMPUTERS = ("knn_smoothing", "scvi", "gene_mean", "no_imputation")

ImputationMethod = str | Callable[..., Any] | Any


def _log_normalize(counts: sparse.csr_matrix, target_sum: float) -> sparse.csr_matrix:
    lib = np.asarray(counts.sum(1)).ravel()
    scale = np.divide(target_sum, lib, out=np.zeros_like(lib, dtype=np.float64), where=lib > 0)
    out = sparse.diags(scale) @ counts
    out = sparse.csr_matrix(out, dtype=np.float32)
    out.data = np.log1p(out.data)
    return out


def mask_expression(
    adata: AnnData,
    *,
    layer: str | None = None,
    mask_fraction: float = 0.1,
    candidates: Literal["all", "nonzero"] = "all",
    target_sum: float = 1e4,
    random_state: int = 0,
) -> tuple[AnnData, sparse.csr_matrix]:
    """Mask entries of a count matrix as in scPaLM :cite:p:`scPaLM`, appendix B.4.

    In each cell, ``mask_fraction`` of the candidate genes are drawn without replacement with probability
    proportional to ``exp(-x)``, ``x`` the log-normalized expression (``log1p(counts / library * target_sum)``), and
    set to zero. Draws use the Gumbel-top-k trick, seeded by ``random_state``.

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or ``layer``.
    layer
        Layer with the counts (``None``: ``X``).
    mask_fraction
        Fraction of the candidate genes masked in each cell (0.1 in the paper).
    candidates
        ``"all"``: every gene may be masked (the paper; most masked entries are then zeros, which have the largest
        weight). ``"nonzero"``: only detected genes, i.e. a dropout simulation.
    target_sum
        Library size of the normalization.
    random_state
        Seed.

    Returns
    -------
    ``(masked, mask)``: a new AnnData (same ``obs``/``var``, counts with the masked entries set to 0 in ``X``,
    and in ``layer`` too when given) and the boolean CSR mask ``(n_obs, n_vars)``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> masked, mask = cf.tl.mask_expression(adata, mask_fraction=0.1)
    >>> mask.shape, mask.nnz  # 10% of the 50 genes of each cell
    ((100, 50), 500)
    >>> float(masked.X[mask].sum())  # set to zero in the copy ...
    0.0
    >>> bool(adata.X[mask].sum() > 0)  # ... the input is unchanged
    True
    """
    from anndata import AnnData

    if not 0 < mask_fraction < 1:
        msg = f"`mask_fraction` must be in (0, 1), got {mask_fraction}."
        raise ValueError(msg)
    if candidates not in ("all", "nonzero"):
        msg = f"`candidates` must be 'all' or 'nonzero', got {candidates!r}."
        raise ValueError(msg)
    counts = sparse.csr_matrix(get_matrix(adata, layer), dtype=np.float32)
    counts.sort_indices()
    rng = np.random.default_rng(random_state)
    n, g = counts.shape
    mask_rows, mask_cols = [], []
    chunk = max(1, int(2**24 // max(g, 1)))
    for start in range(0, n, chunk):
        block = counts[start : start + chunk]
        lognorm = _log_normalize(block, target_sum).toarray()
        keys = -lognorm + rng.gumbel(size=lognorm.shape)  # log-weight + Gumbel noise
        if candidates == "nonzero":
            keys[block.toarray() == 0] = -np.inf
            k = np.rint(mask_fraction * np.diff(block.indptr)).astype(np.int64)
        else:
            k = np.full(block.shape[0], int(round(mask_fraction * g)), dtype=np.int64)
        order = np.argsort(-keys, axis=1, kind="stable")
        for i in range(block.shape[0]):
            cols = order[i, : k[i]]
            mask_rows.append(np.full(cols.size, start + i, dtype=np.int64))
            mask_cols.append(cols)
    rows = np.concatenate(mask_rows) if mask_rows else np.zeros(0, dtype=np.int64)
    cols = np.concatenate(mask_cols) if mask_cols else np.zeros(0, dtype=np.int64)
    mask = sparse.csr_matrix((np.ones(rows.size, dtype=bool), (rows, cols)), shape=(n, g))
    masked = counts - counts.multiply(mask)
    masked = sparse.csr_matrix(masked, dtype=np.float32)
    masked.eliminate_zeros()
    out = AnnData(X=masked, obs=adata.obs.copy(), var=adata.var.copy())
    if layer is not None:
        out.layers[layer] = masked.copy()
    return out, mask


# ---------------------------------------------------------------------- built-in imputers
def _knn_smoothing(
    masked: AnnData,
    *,
    layer: str | None,
    target_sum: float,
    n_neighbors: int = 5,
    n_neighbors_kernel: int | None = None,
    decay: float = 40.0,
    t: int = 3,
    n_pcs: int = 100,
    random_state: int = 0,
) -> np.ndarray:
    """MAGIC-style diffusion (van Dijk et al. 2018): alpha-decay kNN kernel on a PCA, Markov matrix to the power t."""
    import scanpy as sc
    from sklearn.neighbors import NearestNeighbors

    x = _log_normalize(sparse.csr_matrix(get_matrix(masked, layer), dtype=np.float32), target_sum)
    n = x.shape[0]
    n_comp = int(min(n_pcs, n - 1, x.shape[1] - 1))
    pcs = sc.pp.pca(x, n_comps=n_comp, random_state=random_state)  # sparse input: implicitly centred
    k_kernel = min(n - 1, n_neighbors_kernel or 3 * n_neighbors)
    dist, idx = NearestNeighbors(n_neighbors=k_kernel + 1).fit(pcs).kneighbors(pcs)
    sigma = np.maximum(dist[:, min(n_neighbors, k_kernel)], 1e-12)  # distance to the k-th neighbour (self is 0th)
    w = np.exp(-((dist / sigma[:, None]) ** decay))
    w[w < 1e-4] = 0
    kernel = sparse.csr_matrix((w.ravel(), (np.repeat(np.arange(n), k_kernel + 1), idx.ravel())), shape=(n, n))
    kernel = (kernel + kernel.T) / 2
    row = np.asarray(kernel.sum(1)).ravel()
    markov = sparse.diags(1 / np.maximum(row, 1e-12)) @ kernel
    out = x.toarray()
    for _ in range(t):
        out = markov @ out
    return np.asarray(out, dtype=np.float32)


def _scvi(
    masked: AnnData,
    *,
    layer: str | None,
    target_sum: float,
    n_latent: int = 10,
    max_epochs: int | None = None,
    accelerator: str = "cpu",
    random_state: int = 0,
    **train_kwargs,
) -> np.ndarray:
    """ScVI's normalized expression (Lopez et al. 2018), ``log1p`` of the expected counts per ``target_sum``."""
    import scvi

    from ._baselines import default_scvi_epochs

    scvi.settings.seed = random_state
    a = masked.copy()
    scvi.model.SCVI.setup_anndata(a, layer=layer)
    model = scvi.model.SCVI(a, n_latent=n_latent)
    model.train(
        max_epochs=max_epochs or default_scvi_epochs(a.n_obs),
        accelerator=accelerator,
        enable_progress_bar=False,
        **train_kwargs,
    )
    expr = model.get_normalized_expression(library_size=target_sum, return_numpy=True)
    return np.log1p(np.asarray(expr, dtype=np.float32))


def _gene_mean(masked: AnnData, *, layer: str | None, target_sum: float) -> np.ndarray:
    """Each gene's mean log-normalized expression over the cells of the masked matrix."""
    x = _log_normalize(sparse.csr_matrix(get_matrix(masked, layer), dtype=np.float32), target_sum)
    mean = np.asarray(x.mean(0), dtype=np.float32).ravel()
    return np.broadcast_to(mean, x.shape)


def _no_imputation(masked: AnnData, *, layer: str | None, target_sum: float) -> np.ndarray:
    """The masked matrix itself (masked entries predicted as 0): the floor every method should beat."""
    return _log_normalize(sparse.csr_matrix(get_matrix(masked, layer), dtype=np.float32), target_sum).toarray()


_BUILTINS: dict[str, Callable[..., np.ndarray]] = {
    "knn_smoothing": _knn_smoothing,
    "scvi": _scvi,
    "gene_mean": _gene_mean,
    "no_imputation": _no_imputation,
}


def train_and_impute(
    model_cls: type,
    *,
    setup_kwargs: Mapping[str, Any] | None = None,
    model_kwargs: Mapping[str, Any] | None = None,
    train_kwargs: Mapping[str, Any] | None = None,
    impute_kwargs: Mapping[str, Any] | None = None,
) -> Callable[[AnnData], np.ndarray]:
    """An imputation method for :func:`evaluate_imputation` that trains a model on the masked data.

    The returned function runs ``model_cls.setup_anndata(masked, **setup_kwargs)``,
    ``model = model_cls(masked, **model_kwargs)``, ``model.train(**train_kwargs)`` and returns
    ``model.get_imputed_expression(**impute_kwargs)``. Works for every cellformers model (and any scvi-tools-style
    class with ``get_imputed_expression``). The trained model is kept as the attribute ``model`` of the function.

    Parameters
    ----------
    model_cls
        Model class, e.g. :class:`cellformers.model.ScPaLM`.
    setup_kwargs
        Keyword arguments of ``model_cls.setup_anndata``.
    model_kwargs
        Keyword arguments of the model constructor.
    train_kwargs
        Keyword arguments of ``model.train``.
    impute_kwargs
        Keyword arguments of ``model.get_imputed_expression``.

    Returns
    -------
    A function of the masked AnnData returning the imputed ``(n_obs, n_vars)`` array.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> scformer = cf.tl.train_and_impute(
    ...     cf.model.ScFormer,
    ...     model_kwargs={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16},
    ...     train_kwargs={"max_epochs": 1, "enable_progress_bar": False},
    ... )
    >>> imputed = scformer(adata)  # trains on these cells, then imputes them
    >>> imputed.shape
    (100, 50)
    >>> scores = cf.tl.evaluate_imputation(adata, {"scFormer": scformer, "kNN smoothing": "knn_smoothing"})
    """

    def fit(masked: AnnData) -> np.ndarray:
        model_cls.setup_anndata(masked, **dict(setup_kwargs or {}))
        model = model_cls(masked, **dict(model_kwargs or {}))
        model.train(**dict(train_kwargs or {}))
        fit.model = model
        return model.get_imputed_expression(**dict(impute_kwargs or {}))

    fit.model = None
    return fit


def _run_method(name: str, method: ImputationMethod, masked: AnnData, *, layer, target_sum, kwargs) -> np.ndarray:
    if isinstance(method, str):
        if method not in _BUILTINS:
            msg = f"`methods[{name!r}]` = {method!r} is not a built-in imputer; choose among {sorted(_BUILTINS)}."
            raise ValueError(msg)
        return _BUILTINS[method](masked, layer=layer, target_sum=target_sum, **kwargs)
    if hasattr(method, "get_imputed_expression") and not isinstance(method, type):
        # an already trained model, applied to the masked data (transfer / zero-shot)
        return method.get_imputed_expression(masked, **kwargs)
    if callable(method) and not isinstance(method, type):
        return method(masked, **kwargs)
    msg = (
        f"`methods[{name!r}]` must be a built-in name ({sorted(_BUILTINS)}), a trained model with "
        "`get_imputed_expression`, or a function of the masked AnnData (e.g. `cellformers.tl.train_and_impute(...)`); "
        f"got {type(method).__name__}."
    )
    raise TypeError(msg)


def evaluate_imputation(
    adata: AnnData,
    methods: Mapping[str, ImputationMethod] | Sequence[str] = ("knn_smoothing", "scvi", "gene_mean"),
    *,
    layer: str | None = None,
    mask_fraction: float = 0.1,
    candidates: Literal["all", "nonzero"] = "all",
    target_sum: float = 1e4,
    random_state: int = 0,
    method_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
) -> pd.DataFrame:
    """Compare imputation methods on entries hidden from all of them (scPaLM :cite:p:`scPaLM`, appendix B.4).

    :func:`mask_expression` hides ``mask_fraction`` of the genes of every cell (drawn with probability
    proportional to ``exp(-expression)``, set to 0). Every method only ever sees the **masked** copy: it is fit on
    it and predicts the expression of every entry. Predictions are compared with the truth on the masked entries,
    on the log-normalized scale ``log1p(counts / library * target_sum)``, where ``library`` is the cell's library
    size in the masked data (the normalization every method applies to what it sees).

    Parameters
    ----------
    adata
        AnnData with raw counts in ``X`` or ``layer``. It is not modified.
    methods
        Names of built-in methods, or a mapping ``{label: method}``. A method is

        * a built-in name: ``"knn_smoothing"`` (MAGIC-style diffusion: alpha-decay kernel on the 5 nearest
          neighbours in a 100-component PCA of the log-normalized data, Markov matrix cubed), ``"scvi"`` (scVI
          trained on the masked counts, ``log1p`` of its normalized expression), ``"gene_mean"`` (each gene's mean),
          ``"no_imputation"`` (the masked matrix itself);
        * a function ``f(masked_adata) -> array (n_obs, n_vars)`` on the log-normalized scale, e.g.
          :func:`train_and_impute` ``(cf.model.ScPaLM, ...)``, which trains a model on the masked data;
        * an already trained model with ``get_imputed_expression(adata)``, applied to the masked data (zero-shot, as
          scPaLM's Table 3). It must not have been trained on ``adata``: it would have seen the hidden entries.
    layer
        Layer with the counts (``None``: ``X``); the masked copy keeps the counts there and in ``X``.
    mask_fraction
        Fraction of genes masked per cell.
    candidates
        ``"all"`` genes (paper) or only ``"nonzero"`` ones (a dropout simulation); see :func:`mask_expression`.
    target_sum
        Library size of the log-normalization.
    random_state
        Seed of the mask (and of the built-in methods).
    method_kwargs
        Extra keyword arguments per label, e.g. ``{"scvi": {"max_epochs": 100}}``.

    Returns
    -------
    Table indexed by method label with ``RMSE`` and ``MAE`` over the masked entries, ``RMSE_nonzero`` and
    ``MAE_nonzero`` over the masked entries with a non-zero count, ``RMSE_zero`` and ``MAE_zero`` over those with a
    zero count (with ``candidates="all"`` most hidden entries are zeros, where predicting zero, ``"no_imputation"``,
    is exact: read the overall error beside these two), ``n_masked``, ``n_evaluated`` (masked entries
    where the method's prediction is finite: genes outside a model's vocabulary are NaN and left out) and
    ``seconds`` (fit + prediction time). ``df.attrs["params"]`` holds the parameters.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> scformer = cf.tl.train_and_impute(
    ...     cf.model.ScFormer,
    ...     model_kwargs={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16},
    ...     train_kwargs={"max_epochs": 1, "enable_progress_bar": False},
    ... )
    >>> scores = cf.tl.evaluate_imputation(
    ...     adata, {"scFormer": scformer, "kNN": "knn_smoothing", "gene mean": "gene_mean"}
    ... )
    >>> list(scores.index)
    ['scFormer', 'kNN', 'gene mean']
    >>> int(scores.loc["kNN", "n_evaluated"])  # 10% of the entries are masked
    500
    """
    if layer is not None:
        check_key(adata, "layers", layer, arg="layer")
    check_counts(get_matrix(adata, layer), arg="layer", layer=layer)
    if isinstance(methods, str):
        methods = [methods]
    if not isinstance(methods, Mapping):
        methods = {m: m for m in methods}
    if not methods:
        msg = "`methods` is empty."
        raise ValueError(msg)
    method_kwargs = dict(method_kwargs or {})
    unknown = sorted(set(method_kwargs) - set(methods))
    if unknown:
        msg = f"`method_kwargs` names labels that are not in `methods`: {unknown}."
        raise ValueError(msg)

    masked, mask = mask_expression(
        adata,
        layer=layer,
        mask_fraction=mask_fraction,
        candidates=candidates,
        target_sum=target_sum,
        random_state=random_state,
    )
    counts = sparse.csr_matrix(get_matrix(adata, layer), dtype=np.float32)
    lib = np.asarray(masked.X.sum(1), dtype=np.float64).ravel()
    rows, cols = mask.nonzero()
    keep = lib[rows] > 0  # a cell whose every count was masked has no normalization
    rows, cols = rows[keep], cols[keep]
    true_counts = np.asarray(counts[rows, cols], dtype=np.float64).ravel()
    truth = np.log1p(true_counts / lib[rows] * target_sum)
    expressed = true_counts > 0
    logger.info(
        f"masked {rows.size} entries ({expressed.mean():.1%} with a non-zero count) in {adata.n_obs} cells; "
        f"evaluating {len(methods)} method(s)"
    )

    records = []
    for name, method in methods.items():
        kwargs = dict(method_kwargs.get(name, {}))
        if isinstance(method, str) and method in ("knn_smoothing", "scvi"):
            kwargs.setdefault("random_state", random_state)
        logger.info(f"imputation: running {name!r}")
        start = time.perf_counter()
        pred = _run_method(name, method, masked.copy(), layer=layer, target_sum=target_sum, kwargs=kwargs)
        seconds = time.perf_counter() - start
        pred = np.asarray(pred)
        if pred.shape != adata.shape:
            msg = f"method {name!r} returned an array of shape {pred.shape}, expected {adata.shape}."
            raise ValueError(msg)
        p = np.asarray(pred[rows, cols], dtype=np.float64)
        ok = np.isfinite(p)
        err = p[ok] - truth[ok]
        err_nz = p[ok & expressed] - truth[ok & expressed]
        err_z = p[ok & ~expressed] - truth[ok & ~expressed]
        records.append(
            {
                "method": name,
                "RMSE": float(np.sqrt(np.mean(err**2))) if err.size else np.nan,
                "MAE": float(np.mean(np.abs(err))) if err.size else np.nan,
                "RMSE_nonzero": float(np.sqrt(np.mean(err_nz**2))) if err_nz.size else np.nan,
                "MAE_nonzero": float(np.mean(np.abs(err_nz))) if err_nz.size else np.nan,
                "RMSE_zero": float(np.sqrt(np.mean(err_z**2))) if err_z.size else np.nan,
                "MAE_zero": float(np.mean(np.abs(err_z))) if err_z.size else np.nan,
                "n_masked": int(rows.size),
                "n_evaluated": int(ok.sum()),
                "seconds": seconds,
            }
        )
    df = pd.DataFrame.from_records(records).set_index("method")
    df.attrs["params"] = {
        "mask_fraction": mask_fraction,
        "candidates": candidates,
        "target_sum": target_sum,
        "random_state": random_state,
        "layer": layer,
        "fraction_masked_nonzero": float(expressed.mean()) if expressed.size else np.nan,
    }
    return df
