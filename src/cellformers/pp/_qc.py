"""Quality control and count recovery (xTrimoGene App. 1), and the raw-counts check."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from cellformers._docs import doc_dsp
from cellformers._utils import check_block_values, get_matrix, iter_row_chunks, resolve_adata
from cellformers._utils import check_counts as _check_counts
from cellformers._utils._counts import recover_counts

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["check_counts", "counts_from_normalized", "filter_cells_by_genes"]


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
    out, base, n_inexact = recover_counts(X, where=_where(layer), log_base=log_base)
    adata = adata.copy() if copy else adata
    adata.layers[key_added] = (
        out if sparse.issparse(X) or getattr(X, "format", None) in ("csr", "csc") else out.toarray()
    )
    params: dict[str, object] = {"log_base": base, "key_added": key_added}
    if layer is not None:
        params["layer"] = layer
    adata.uns["counts_from_normalized"] = {"params": params, "n_inexact_cells": int(n_inexact)}
    logger.info(f"added {key_added!r} (adata.layers)")
    return adata if copy else None
