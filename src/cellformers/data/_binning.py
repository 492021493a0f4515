"""Per-cell equal-frequency value binning (scFormer eq. 2) with reproducible tie-breaking."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
from scipy import sparse

from cellformers._settings import settings
from cellformers._utils import cell_generator, check_block_values, iter_row_chunks

if TYPE_CHECKING:
    from collections.abc import Sequence

logger = logging.getLogger(__name__)

__all__ = ["bin_expression"]

#: Salt of the per-cell generator used for tie-breaking (see :func:`cellformers._utils.cell_generator`).
BINNING_SALT = "binning"


def _is_sparse(X) -> bool:
    # scipy matrices/arrays and anndata's backed sparse datasets (which carry a ``format`` attribute)
    return sparse.issparse(X) or getattr(X, "format", None) in ("csr", "csc")


def _bin_csr(block: sparse.csr_matrix, n_bins: int, names: Sequence[str], seed: int | None, where: str, start: int):
    """Bin one CSR row block; returns the binned CSR block (``int32``) and the number of empty rows."""
    csr = sparse.csr_matrix(block, dtype=np.float32, copy=True)
    csr.sum_duplicates()  # canonical form: sorted column indices, so draws match entries the same way every time
    check_block_values(csr, arg=where, row_offset=start)
    csr.eliminate_zeros()
    data, indptr = csr.data, csr.indptr
    n_rows, nnz = csr.shape[0], csr.nnz
    counts = np.diff(indptr)

    # Ties are broken by visiting each cell's entries in a random order drawn from the cell's own generator and
    # sorting stably: equal values keep that random order. The sort key packs (row, value) into one uint64
    # (the bits of a non-negative float32 sort like the float), which sorts much faster than np.lexsort.
    visit = np.arange(nnz, dtype=np.int64)
    for i in np.flatnonzero(counts > 1):  # a lone value needs no tie-breaking
        rng = cell_generator(str(names[i]), seed=seed, salt=BINNING_SALT)
        visit[indptr[i] : indptr[i + 1]] = indptr[i] + rng.permutation(counts[i])
    rows = np.repeat(np.arange(n_rows, dtype=np.uint64), counts)
    key = (rows << np.uint64(32)) | data.view(np.uint32).astype(np.uint64)
    order = visit[np.argsort(key[visit], kind="stable")]
    rank = np.empty(nnz, dtype=np.int64)
    rank[order] = np.arange(nnz, dtype=np.int64) - np.repeat(indptr[:-1].astype(np.int64), counts)
    m = np.repeat(counts.astype(np.int64), counts)
    n_nonzero_bins = n_bins - 1
    bins = ((rank + 1) * n_nonzero_bins + m - 1) // m  # ceil((rank+1) * B / m), in 1 … B
    out = sparse.csr_matrix((bins.astype(np.int32), csr.indices.copy(), indptr.copy()), shape=csr.shape)
    return out, int((counts == 0).sum())


def bin_expression(
    X,
    n_bins: int = 51,
    *,
    cell_names: Sequence[str],
    seed: int | None = None,
    chunk_size: int = 2048,
    arg: str = "X",
) -> np.ndarray | sparse.csr_matrix:
    """Per-cell equal-frequency bins of the non-zero values (scFormer eq. 2).

    Zeros stay ``0``. The ``m`` non-zero values of a cell are ranked from smallest to largest (``r = 0 … m-1``)
    and split into ``B = n_bins - 1`` groups of consecutive ranks whose sizes differ by at most one:
    ``bin = ceil((r + 1) · B / m)``, so bins run over ``1 … B`` and the largest value of every cell gets ``B``.
    A cell with fewer than ``B`` non-zero values uses ``m`` bins spread over that range.

    **Ties.** Equal values (ubiquitous in counts: many 1s and 2s) are ordered by a random permutation drawn from
    the cell's own generator, :func:`cellformers._utils.cell_generator` (``settings.seed``, the cell name and the salt
    ``"binning"``). The bins therefore stay exactly equal in size, tied values may fall in adjacent bins (as in
    scGPT's stochastic ``_digitize``), a larger value never gets a smaller bin than a smaller one, and the result
    is the same whatever the chunking, the order of cells, or the other cells present.
    Values are compared as ``float32``.

    Parameters
    ----------
    X
        Cells × genes matrix: dense, scipy sparse, or a backed ``AnnData`` matrix (read in row chunks). Values must
        be finite and non-negative; raw counts or any per-cell monotone transform of them give the same bins.
    n_bins
        Number of bins including the zero bin (scGPT's default 51 gives 50 non-zero bins).
    cell_names
        Name of each cell (``adata.obs_names``), which seeds its tie-breaking.
    seed
        Global seed; ``None`` uses ``cellformers.settings.seed``.
    chunk_size
        Rows per chunk.
    arg
        How ``X`` is named in error messages.

    Returns
    -------
    ``int32`` bins with the shape of ``X``: CSR when ``X`` is sparse (same non-zero pattern), dense otherwise.
    Cells without non-zero values get all zeros, with a warning.

    Examples
    --------
    >>> import numpy as np
    >>> from cellformers.data import bin_expression
    >>> X = np.array([[0, 1, 5, 3, 2], [4, 0, 0, 0, 0]])
    >>> bin_expression(X, n_bins=5, cell_names=["a", "b"]).tolist()
    [[0, 1, 4, 3, 2], [4, 0, 0, 0, 0]]
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer) or n_bins < 2:
        msg = f"`n_bins` must be an integer >= 2 (the zero bin plus at least one bin for non-zero values), got {n_bins!r}."
        raise ValueError(msg)
    n_bins = int(n_bins)
    if len(X.shape) != 2:
        msg = f"{arg} must be a 2-d cells × genes matrix, got shape {X.shape}."
        raise ValueError(msg)
    n_obs = X.shape[0]
    if len(cell_names) != n_obs:
        msg = f"`cell_names` has {len(cell_names)} entries but {arg} has {n_obs} rows."
        raise ValueError(msg)
    names = np.asarray(cell_names, dtype=object)
    is_sparse = _is_sparse(X)

    blocks: list[sparse.csr_matrix] = []
    n_empty = 0
    for start, stop, block in iter_row_chunks(X, chunk_size=chunk_size):
        binned, empty = _bin_csr(block, n_bins, names[start:stop], seed, arg, start)
        blocks.append(binned)
        n_empty += empty
    if n_empty:
        msg = f"{n_empty} of {n_obs} cells have no non-zero values in {arg}; all their bins are 0."
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
    if blocks:
        out = sparse.vstack(blocks, format="csr", dtype=np.int32)
    else:
        out = sparse.csr_matrix(X.shape, dtype=np.int32)
    return out if is_sparse else out.toarray()
