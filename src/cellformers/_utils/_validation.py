"""Checks of expression values: finiteness, sign, and whether the data are raw counts."""

from __future__ import annotations

import numpy as np
from scipy import sparse

from cellformers._exceptions import InvalidExpressionError, NotCountsError

from ._anndata import iter_row_chunks

# Counts recovered from float32 log-normalized files deviate from integers by up to ~1e-3 relative
# (e.g. scanpy's pbmc68k_reduced); normalized or log data deviate by O(1).
_INT_ABS_TOL = 1e-2
_INT_REL_TOL = 2e-3
# The relative tolerance is capped: otherwise every value above ~250 passes (any x is within 0.5 of an integer),
# and CPM-scale data (normalize_total(target_sum=1e6), all values in the thousands) would pass as counts.
_INT_MAX_TOL = 0.2


def integer_tolerance(v: np.ndarray) -> np.ndarray:
    """How far from an integer a (recovered) count ``v`` may be: 1e-2 absolute, 2e-3 relative, at most 0.2."""
    return np.minimum(np.maximum(_INT_ABS_TOL, _INT_REL_TOL * np.abs(v)), _INT_MAX_TOL)


def _values(block) -> np.ndarray:
    return block.data if sparse.issparse(block) else np.asarray(block).ravel()


def check_block_values(block, *, arg: str = "adata.X", row_offset: int = 0) -> None:
    """Raise :class:`InvalidExpressionError` if an in-memory row block holds NaN, infinite or negative values.

    ``row_offset`` is the index of the block's first row in the whole matrix (for the message).
    """
    v = _values(block)
    if v.size == 0:
        return
    if not np.isfinite(v).all():
        bad = "NaN" if np.isnan(v).any() else "infinite"
        msg = (
            f"{arg} contains {bad} values (first in rows {row_offset}–{row_offset + block.shape[0] - 1}). "
            "Remove or impute them before running cellformers, e.g. `adata = adata[~np.isnan(...)]`."
        )
        raise InvalidExpressionError(msg)
    if (v < 0).any():
        msg = (
            f"{arg} contains negative values (min {v.min():.3g}); it looks scaled or centred "
            "(e.g. by `sc.pp.scale`). Pass raw counts (or a non-negative layer) instead."
        )
        raise InvalidExpressionError(msg)


def check_expression_values(X, *, arg: str = "adata.X", chunk_size: int = 4096) -> None:
    """Raise :class:`InvalidExpressionError` if ``X`` holds NaN, infinite or negative values.

    Streams over row chunks, so backed matrices are never loaded whole.
    """
    for start, _stop, block in iter_row_chunks(X, chunk_size=chunk_size):
        check_block_values(block, arg=arg, row_offset=start)


def _near_integers(v: np.ndarray) -> bool:
    v = v.astype(np.float64, copy=False)
    return bool((np.abs(v - np.rint(v)) <= integer_tolerance(v)).all())


def _block_is_counts(block) -> bool:
    v = _values(block)
    return v.size == 0 or bool(np.isfinite(v).all() and (v >= 0).all() and _near_integers(v))


def looks_like_counts(X, *, n_rows: int | None = 500) -> bool:
    """Whether the first ``n_rows`` rows of ``X`` (``None``: all rows, streamed) are non-negative (near-)integers."""
    if n_rows is None:
        return all(_block_is_counts(block) for _start, _stop, block in iter_row_chunks(X, chunk_size=4096))
    block = X[: min(n_rows, X.shape[0])]
    if hasattr(block, "to_memory"):
        block = block.to_memory()
    return _block_is_counts(block)


def check_counts(X, *, arg: str = "layer", layer: str | None = None, chunk_size: int = 4096) -> None:
    """Raise :class:`NotCountsError` with the fix when ``X`` does not look like raw counts.

    Every row is checked, streamed in chunks of ``chunk_size`` rows (a backed matrix is never loaded whole), so a
    concatenation of raw counts and normalized data is caught wherever the normalized rows are. Also rejects NaN,
    infinite and negative values (:class:`InvalidExpressionError`).
    """
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    for start, _stop, block in iter_row_chunks(X, chunk_size=chunk_size):
        check_block_values(block, arg=where, row_offset=start)
        v = _values(block)
        if v.size == 0 or _near_integers(v):
            continue
        first = start + next(i for i in range(block.shape[0]) if not _near_integers(_values(block[i : i + 1])))
        mixed = (
            f" The first such row is row {first}, and rows before it hold counts: the data may concatenate raw "
            "and normalized datasets."
            if first > 0
            else ""
        )
        msg = (
            f"{where} does not look like raw counts (it has non-integer values): it is probably normalized "
            f"or log-transformed. Pass the raw counts with `{arg}=` (e.g. `{arg}='counts'` after "
            "`adata.layers['counts'] = adata.raw.X` or before normalizing), or recover them with "
            f"`cellformers.pp.counts_from_normalized(adata)`.{mixed}"
        )
        raise NotCountsError(msg)


def check_batch_size(batch_size: int | None, arg: str = "batch_size") -> None:
    """Raise a ``ValueError`` unless ``batch_size`` is ``None`` or a positive integer."""
    if batch_size is None:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer) or batch_size < 1:
        msg = f"`{arg}` must be a positive integer or None (the default), got {batch_size!r}."
        raise ValueError(msg)
