"""Integer counts recovered from normalized or log-normalized values (xTrimoGene App. 1), on a matrix.

:func:`cellformers.pp.counts_from_normalized` applies it to an AnnData; readers such as
:func:`cellformers.data.read_gears_h5ad` call it directly, so the data layer does not import ``pp``.
"""

from __future__ import annotations

import logging
import warnings
from typing import Literal

import numpy as np
from scipy import sparse

from cellformers._exceptions import InvalidExpressionError
from cellformers._settings import settings

from ._anndata import iter_row_chunks
from ._validation import check_block_values, integer_tolerance, looks_like_counts

logger = logging.getLogger(__name__)

__all__ = ["recover_counts"]

# Recovered counts above this are implausible: the transform was wrong (huge floats are all "integers").
_MAX_COUNT = 1e7
_N_DETECT = 1000


def _as_csr(block) -> sparse.csr_matrix:
    return block if sparse.issparse(block) else sparse.csr_matrix(block)


def recover_counts(
    X, *, where: str, log_base: float | Literal["auto"] | None = "auto"
) -> tuple[sparse.csr_matrix, str, int]:
    """Counts of ``X`` (dense, sparse or backed), the log base used and the number of inexact cells.

    The smallest non-zero value of each cell is taken as one count: values are un-logged (``base**x - 1``),
    divided by the cell's smallest non-zero value and rounded. ``where`` names ``X`` in error messages. Raises
    :class:`~cellformers.InvalidExpressionError` when ``X`` already holds counts or no transform gives integers;
    warns when some cells were rounded.
    """
    n_detect = min(_N_DETECT, X.shape[0])
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
            f"{n_inexact} of {X.shape[0]} cells did not give integer counts (largest deviation {max_dev:.3g}); "
            "their values were rounded. Such cells may lack a gene with a single count."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)

    return out, _base_name(base), int(n_inexact)


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
