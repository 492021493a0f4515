"""Quality control and count recovery (xTrimoGene App. 1), and the raw-counts check."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from cellformers._docs import doc_dsp
from cellformers._exceptions import InvalidExpressionError
from cellformers._settings import settings
from cellformers._utils import check_block_values, get_matrix, iter_row_chunks, looks_like_counts, resolve_adata
from cellformers._utils import check_counts as _check_counts
from cellformers._utils._validation import integer_tolerance

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["check_counts", "counts_from_normalized", "filter_cells_by_genes"]

# Recovered counts above this are implausible: the transform was wrong (huge floats are all "integers").
_MAX_COUNT = 1e7
_N_DETECT = 1000


def _where(layer: str | None) -> str:
    return "adata.X" if layer is None else f"adata.layers[{layer!r}]"


def _as_csr(block) -> sparse.csr_matrix:
    return block if sparse.issparse(block) else sparse.csr_matrix(block)


def check_counts(adata: AnnData, layer: str | None = None) -> None:
    """Raise a clear error unless ``adata.X`` (or ``layer``) holds raw counts.

    This is the check every model's ``setup_anndata`` runs. It rejects NaN, infinite and negative values
    (:class:`~cellformers.InvalidExpressionError`) and non-integer values (:class:`~cellformers.NotCountsError`,
    whose message says how to pass or recover the counts, e.g. with :func:`counts_from_normalized`).

    Parameters
    ----------
    adata
        Annotated data matrix.
    layer
        Layer to check; ``None`` checks ``adata.X``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=50, n_genes=20)
    >>> cf.pp.check_counts(adata)  # raw counts: nothing happens
    >>> adata.X = adata.X / 2
    >>> cf.pp.check_counts(adata)  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    cellformers.NotCountsError: adata.X does not look like raw counts (it has non-integer values): ...
    """
    _check_counts(get_matrix(resolve_adata(adata), layer), layer=layer)


@doc_dsp.dedent
def filter_cells_by_genes(
    adata: AnnData,
    min_genes: int = 200,
    *,
    layer: str | None = None,
    key_added: str = "n_genes",
    inplace: bool = True,
    copy: bool = False,
) -> AnnData | tuple[np.ndarray, np.ndarray] | None:
    """Keep cells with at least ``min_genes`` expressed genes, as :func:`scanpy.pp.filter_cells` does.

    Shaped like :func:`scanpy.pp.filter_cells` (same kept cells, same ``obs['n_genes']``). xTrimoGene App. 1
    keeps cells with more than 200 genes: ``min_genes=201``. Rows are read in chunks, so a backed ``AnnData`` can be
    screened with ``inplace=False`` (then ``adata[mask].to_memory()``).

    Parameters
    ----------
    %(adata)s
    min_genes
        A cell is kept when its number of non-zero genes is at least this (scanpy's ``min_genes``).
    layer
        Layer whose non-zero values are counted; ``None`` uses ``adata.X``.
    key_added
        Column of ``adata.obs`` receiving the number of expressed genes.
    inplace
        Subset ``adata`` (and write ``obs[key_added]``) instead of returning the mask and the numbers.
    %(copy)s

    Returns
    -------
    With ``inplace=False``: ``(cell_subset, n_genes)``, a boolean mask of kept cells and the number of expressed
    genes per cell. Otherwise ``None`` or, with ``copy=True``, the filtered copy, with

    `adata.obs['n_genes' | key_added]` : :class:`numpy.ndarray` (``int64``)
        Number of expressed genes of each kept cell.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_genes=100)
    >>> cf.pp.filter_cells_by_genes(adata, min_genes=50)
    """
    if isinstance(min_genes, bool) or not isinstance(min_genes, int | np.integer) or min_genes < 0:
        msg = f"`min_genes` must be a non-negative integer, got {min_genes!r}."
        raise ValueError(msg)
    data, adata = adata, resolve_adata(adata)
    X = get_matrix(adata, layer)
    where = _where(layer)
    n_expr = np.zeros(adata.n_obs, dtype=np.int64)
    for start, stop, block in iter_row_chunks(X):
        csr = _as_csr(block)
        check_block_values(csr, arg=where, row_offset=start)
        rows = np.repeat(np.arange(stop - start), np.diff(csr.indptr))
        n_expr[start:stop] = np.bincount(rows[csr.data != 0], minlength=stop - start)
    keep = n_expr >= min_genes
    n_removed = int((~keep).sum())
    logger.info(f"filtered out {n_removed} of {adata.n_obs} cells with fewer than {min_genes} expressed genes")
    if not inplace and not copy:
        return keep, n_expr
    if adata.isbacked and not copy:
        msg = (
            "A backed AnnData cannot be subset in place. Call `mask, n_genes = filter_cells_by_genes(adata, "
            "inplace=False)` and then `adata = adata[mask].to_memory()`."
        )
        raise ValueError(msg)
    if copy:
        adata = adata[keep].to_memory() if adata.isbacked else adata[keep].copy()
    else:
        adata._inplace_subset_obs(keep)
    adata.obs[key_added] = n_expr[keep]
    if data is not adata and not copy:  # a MuData whose "rna" modality was subset: align its other attributes
        data.update()
    return adata if copy else None


def _transform(data: np.ndarray, base: float | None) -> np.ndarray:
    data = data.astype(np.float64)
    if base is None:
        return data
    with np.errstate(over="ignore"):
        return np.expm1(data * np.log(base))


def _scale_rows(csr: sparse.csr_matrix, base: float | None) -> tuple[np.ndarray, np.ndarray]:
    """Transformed values of a CSR block divided by their row's smallest non-zero value; and the row of each."""
    values = _transform(csr.data, base)
    counts = np.diff(csr.indptr)
    rows = np.repeat(np.arange(csr.shape[0]), counts)
    positive = np.where(values > 0, values, np.inf)
    nonempty = counts > 0
    row_min = np.full(csr.shape[0], np.inf)
    if csr.nnz:
        row_min[nonempty] = np.minimum.reduceat(positive, csr.indptr[:-1][nonempty])
    with np.errstate(invalid="ignore"):
        scaled = values / row_min[rows]
    return scaled, rows


def _integer_fraction(scaled: np.ndarray) -> float:
    v = scaled[scaled != 0]
    if v.size == 0:
        return 0.0
    ok = np.isfinite(v) & (v <= _MAX_COUNT)
    dev = np.abs(v - np.rint(v))
    ok &= dev <= integer_tolerance(v)
    return float(ok.mean())


@doc_dsp.dedent
def counts_from_normalized(
    adata: AnnData,
    *,
    layer: str | None = None,
    log_base: float | Literal["auto"] | None = "auto",
    key_added: str = "counts",
    copy: bool = False,
) -> AnnData | None:
    """Recover integer counts from normalized or log-normalized values (xTrimoGene App. 1).

    The smallest non-zero value of each cell is taken as one count: values are un-logged (``base**x - 1``),
    divided by the cell's smallest non-zero value and rounded. This inverts ``normalize_total`` (+ ``log1p``)
    exactly when every cell has a gene with a single count, which holds for almost all droplet data.
    The appendix takes the smallest value of the whole matrix instead; per cell is what undoes a per-cell
    normalization.

    Data that already are counts are refused (there is nothing to recover; pass them as they are).

    Parameters
    ----------
    %(adata)s
    layer
        Layer holding the normalized values; ``None`` uses ``adata.X``.
    log_base
        Base of the log transform: ``np.e`` for :func:`scanpy.pp.log1p`, ``2`` for log2(CPM+1), ``None`` for
        normalized values without log. ``"auto"`` tries none, e, 2 and 10 on the first 1,000 cells and keeps
        the one giving integers.
    key_added
        Layer receiving the counts.
    %(copy)s

    Returns
    -------
    Returns ``None`` or, with ``copy=True``, a copy of ``adata``. Sets these fields:

    `adata.layers['counts' | key_added]` : :class:`scipy.sparse.csr_matrix` or :class:`numpy.ndarray` (``float32``)
        Recovered counts (sparse when the input is sparse).
    `adata.uns['counts_from_normalized']` : :class:`dict`
        ``params`` (``log_base`` used, ``layer``, ``key_added``) and ``n_inexact_cells``, the number of cells whose
        values were not within tolerance of integers before rounding.

    Examples
    --------
    >>> import numpy as np, scanpy as sc
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts()
    >>> sc.pp.normalize_total(adata, target_sum=1e4)
    >>> sc.pp.log1p(adata)
    >>> cf.pp.counts_from_normalized(adata)
    >>> bool(np.allclose(adata.layers["counts"].toarray(), adata.layers["counts"].toarray().round()))
    True
    """
    adata = resolve_adata(adata)
    X = get_matrix(adata, layer)
    where = _where(layer)
    n_detect = min(_N_DETECT, adata.n_obs)
    head = X[:n_detect]
    if hasattr(head, "to_memory"):
        head = head.to_memory()
    head = _as_csr(head)
    check_block_values(head, arg=where)
    if head.nnz and looks_like_counts(head):
        msg = (
            f"{where} already holds integer counts; there is nothing to recover. Use it as the counts directly "
            "(for example as the `layer` of `setup_anndata`)."
        )
        raise InvalidExpressionError(msg)

    candidates: list[float | None]
    if log_base == "auto":
        candidates = [np.e, 2.0, 10.0, None]
    elif log_base is None:
        candidates = [None]
    else:
        if float(log_base) <= 1:
            msg = f"`log_base` must be > 1, None or 'auto', got {log_base!r}."
            raise ValueError(msg)
        candidates = [float(log_base)]
    scores = {b: _integer_fraction(_scale_rows(head, b)[0]) for b in candidates}
    base = max(candidates, key=lambda b: scores[b])  # first candidate wins ties
    if scores[base] < 0.99:
        tried = ", ".join(f"{_base_name(b)}: {s:.1%}" for b, s in scores.items())
        msg = (
            f"Could not recover integer counts from {where}: no transform makes the values integer multiples of "
            f"each cell's smallest value (fraction of integer values per log base: {tried}). The data may be "
            "scaled, batch-corrected, subset to genes without single counts, or not derived from counts; "
            "find the raw counts instead."
        )
        raise InvalidExpressionError(msg)
    if log_base == "auto":
        logger.info(f"{where} looks like {_describe(base)}")

    blocks = []
    n_inexact = 0
    max_dev = 0.0
    for start, stop, block in iter_row_chunks(X):
        csr = _as_csr(block).copy()
        csr.sum_duplicates()
        check_block_values(csr, arg=where, row_offset=start)
        scaled, rows = _scale_rows(csr, base)
        if not np.isfinite(scaled).all():
            msg = (
                f"Un-logging {where} with base {_base_name(base)} overflows in rows {start}–{stop - 1}; "
                "the data are probably not log-normalized with that base. Check `log_base`."
            )
            raise InvalidExpressionError(msg)
        rounded = np.rint(scaled)
        dev = np.abs(scaled - rounded)
        bad = ~(dev <= integer_tolerance(scaled))
        if bad.any():
            n_inexact += len(np.unique(rows[bad]))
            max_dev = max(max_dev, float(dev.max()))
        csr.data = rounded.astype(np.float32)
        csr.eliminate_zeros()
        blocks.append(csr)
    out = (
        sparse.vstack(blocks, format="csr", dtype=np.float32)
        if blocks
        else sparse.csr_matrix(X.shape, dtype=np.float32)
    )
    if n_inexact:
        msg = (
            f"{n_inexact} of {adata.n_obs} cells did not give integer counts (largest deviation {max_dev:.3g}); "
            "their values were rounded. Such cells may lack a gene with a single count."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)

    adata = adata.copy() if copy else adata
    adata.layers[key_added] = (
        out if sparse.issparse(X) or getattr(X, "format", None) in ("csr", "csc") else out.toarray()
    )
    params: dict[str, object] = {"log_base": _base_name(base), "key_added": key_added}
    if layer is not None:
        params["layer"] = layer
    adata.uns["counts_from_normalized"] = {"params": params, "n_inexact_cells": int(n_inexact)}
    logger.info(f"added {key_added!r} (adata.layers)")
    return adata if copy else None


def _base_name(base: float | None) -> str:
    if base is None:
        return "none"
    if np.isclose(base, np.e):
        return "e"
    return f"{base:g}"


def _describe(base: float | None) -> str:
    if base is None:
        return "normalized values without log"
    return f"log-normalized values (base {_base_name(base)})"
