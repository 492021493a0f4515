"""Per-cell equal-frequency value binning (scFormer eq. 2) with reproducible tie-breaking."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from cellformers._settings import settings
from cellformers._utils import check_block_values, counter_uniform_at, iter_row_chunks, registered_cell_seeds

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["bin_cells", "bin_expression"]

#: Salt of the per-cell counter-based draw that orders tied values (:func:`cellformers._utils.counter_uniform`).
BINNING_SALT = 15

#: Bits of a tie-breaking draw (:func:`~cellformers._utils.counter_uniform` returns multiples of ``2**-24``).
_DRAW_BITS = 24


#: How equal non-zero values of a cell are binned (:func:`bin_cells`).
TIE_RULES = ("draw", "average", "redraw")


def bin_cells(
    values: Tensor,
    cell_seeds: Tensor,
    n_bins: int,
    *,
    positions: Tensor | None = None,
    ties: Literal["draw", "average", "redraw"] = "draw",
) -> Tensor:
    """Per-cell equal-frequency bins of dense rows, in torch on their device: the one definition of the bins.

    :func:`bin_expression` (and so :func:`cellformers.pp.bin_values`) and the scFormer module both call this
    function, so a cell gets the same bins from the data layer and inside the model.

    Zeros stay ``0``. The ``m`` non-zero values of a cell are ranked from smallest to largest (``r = 0 … m-1``) and
    split into ``B = n_bins - 1`` groups of consecutive ranks whose sizes differ by at most one:
    ``bin = ceil((r + 1) · B / m)``. Equal values are ranked by a per-cell draw at their column,
    ``counter_uniform(cell_seed, n_columns, salt=BINNING_SALT)[column]``, and, where two draws are equal too, by
    the column. A counter-based draw rather than a generator is what lets the module compute the same ranks on the
    device of its minibatch, for any minibatch composition.

    Parameters
    ----------
    values
        ``(batch, L)`` finite, non-negative values (compared as ``float32``).
    cell_seeds
        ``(batch,)`` integer-valued per-cell seeds (the registered seeds,
        :func:`cellformers._utils.registered_cell_seeds`).
    n_bins
        Number of bins including the zero bin.
    positions
        ``(batch, L)`` column of each entry in the cell's row, in increasing order along each row except at entries
        whose value is zero (a padded sparse row). ``None``: entry ``j`` is column ``j``.
    ties
        How equal values are ranked. ``"draw"`` (default): by the per-cell counter-based draw above, the same at
        every call, so a cell's tied values always fall in the same (possibly different) bins. ``"redraw"``: by a
        fresh ``torch.rand`` draw at every call (scGPT's stochastic ``_digitize`` draws anew each time), so a model
        cannot memorise one arbitrary order of a cell's tied counts. ``"average"``: every value of a tie group gets
        the bin of the group's mean rank (mid-rank), deterministic and equal for equal values, at the price of
        bins no longer exactly equal in size.

    Returns
    -------
    ``int64`` bins ``(batch, L)`` on the device of ``values``.
    """
    import torch

    if ties not in TIE_RULES:
        msg = f"`ties` must be one of {TIE_RULES}, got {ties!r}."
        raise ValueError(msg)
    values = values.float()
    b, n = values.shape
    device = values.device
    if ties == "redraw":
        draw = torch.rand(b, n, device=device)
    else:
        seeds = cell_seeds.reshape(-1).to(device)
        if positions is None:
            positions = torch.arange(n, device=device, dtype=torch.int64).reshape(1, -1)
        draw = counter_uniform_at(seeds, positions.to(device), salt=BINNING_SALT)
    draw = (draw * float(1 << _DRAW_BITS)).to(torch.int64).expand(b, n)
    nonzero = values > 0
    # the bits of a non-negative float32 sort like the float (31 bits), so (value, draw) packs into one int64 key;
    # a stable sort then orders equal keys by column
    bits = torch.where(nonzero, values, torch.zeros_like(values)).view(torch.int32).to(torch.int64)
    key = (bits << _DRAW_BITS) | draw
    order = torch.argsort(key, dim=1, stable=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=device).expand(b, n))
    m = nonzero.sum(1, keepdim=True)
    rank = rank - (n - m)  # zeros take the first ranks: the non-zeros are ranked 0 … m-1
    n_nonzero_bins = n_bins - 1
    if ties == "average":
        rank2 = _twice_mid_rank(torch.gather(bits, 1, order), rank, order)
        # ceil((r̄ + 1) · B / m) with r̄ = rank2 / 2, in integers
        bins = ((rank2 + 2) * n_nonzero_bins + 2 * m - 1) // (2 * m.clamp_min(1))
    else:
        bins = ((rank + 1) * n_nonzero_bins + m - 1) // m.clamp_min(1)  # ceil((rank+1) * B / m), in 1 … B
    return torch.where(nonzero, bins, torch.zeros_like(bins))


def _twice_mid_rank(sorted_bits: Tensor, rank: Tensor, order: Tensor) -> Tensor:
    """Twice the mean rank of each entry's tie group (``first + last`` of the group), in the entries' order.

    ``sorted_bits`` are the values' bit patterns in sorted order (equal values are adjacent), ``rank`` the rank of
    each entry and ``order`` the sort permutation.
    """
    import torch

    n = sorted_bits.shape[1]
    idx = torch.arange(n, device=sorted_bits.device).expand_as(sorted_bits)
    starts = torch.ones_like(sorted_bits, dtype=torch.bool)
    starts[:, 1:] = sorted_bits[:, 1:] != sorted_bits[:, :-1]
    ends = torch.ones_like(starts)
    ends[:, :-1] = starts[:, 1:]
    first = torch.cummax(torch.where(starts, idx, torch.zeros_like(idx)), dim=1).values
    last = torch.flip(torch.cummin(torch.flip(torch.where(ends, idx, torch.full_like(idx, n)), [1]), dim=1).values, [1])
    # positions in sorted order -> ranks (same offset as ``rank``), back in the entries' order
    offset = torch.gather(rank, 1, order) - idx
    twice = torch.empty_like(rank).scatter_(1, order, first + last + 2 * offset)
    return twice


def _is_sparse(X) -> bool:
    # scipy matrices/arrays and anndata's backed sparse datasets (which carry a ``format`` attribute)
    return sparse.issparse(X) or getattr(X, "format", None) in ("csr", "csc")


def _bin_csr(block: sparse.csr_matrix, n_bins: int, seeds: np.ndarray, where: str, start: int, ties: str = "draw"):
    """Bin one CSR row block through :func:`bin_cells`; returns the binned CSR block (``int32``) and its empty rows."""
    import torch

    csr = sparse.csr_matrix(block, dtype=np.float32, copy=True)
    csr.sum_duplicates()  # canonical form: sorted column indices, the order bin_cells breaks equal draws by
    check_block_values(csr, arg=where, row_offset=start)
    csr.eliminate_zeros()
    indptr = csr.indptr
    counts = np.diff(indptr)
    n_rows, nnz = csr.shape[0], csr.nnz
    # the non-zeros of each row, left-aligned in a dense (rows, longest row) block; padding is zero, so binned 0
    rows = np.repeat(np.arange(n_rows), counts)
    slot = np.arange(nnz) - np.repeat(indptr[:-1], counts)
    width = max(int(counts.max()) if n_rows else 0, 1)
    values = np.zeros((n_rows, width), dtype=np.float32)
    columns = np.zeros((n_rows, width), dtype=np.int64)
    values[rows, slot] = csr.data
    columns[rows, slot] = csr.indices
    bins = bin_cells(
        torch.from_numpy(values), torch.from_numpy(seeds), n_bins, positions=torch.from_numpy(columns), ties=ties
    )
    data = bins.numpy()[rows, slot].astype(np.int32)
    out = sparse.csr_matrix((data, csr.indices.copy(), indptr.copy()), shape=csr.shape)
    return out, int((counts == 0).sum())


def bin_expression(
    X,
    n_bins: int = 51,
    *,
    cell_names: Sequence[str],
    seed: int | None = None,
    chunk_size: int = 2048,
    arg: str = "X",
    ties: Literal["draw", "average"] = "draw",
) -> np.ndarray | sparse.csr_matrix:
    """Per-cell equal-frequency bins of the non-zero values (scFormer eq. 2).

    Zeros stay ``0``. The ``m`` non-zero values of a cell are ranked from smallest to largest (``r = 0 … m-1``)
    and split into ``B = n_bins - 1`` groups of consecutive ranks whose sizes differ by at most one:
    ``bin = ceil((r + 1) · B / m)``, so bins run over ``1 … B`` and the largest value of every cell gets ``B``.
    A cell with fewer than ``B`` non-zero values uses ``m`` bins spread over that range.

    **Ties.** Equal values (ubiquitous in counts: many 1s and 2s) are ordered by a per-cell draw at their column,
    from the cell's registered seed (:func:`cellformers._utils.registered_cell_seeds`: ``settings.seed`` and the cell
    name), then by column; the definition is :func:`bin_cells`, which the scFormer module applies to its minibatches
    on their device, so a cell gets the same bins here and in the model. The bins therefore stay exactly equal in
    size, tied values may fall in adjacent bins (as in scGPT's stochastic ``_digitize``), a larger value never gets a
    smaller bin than a smaller one, and the result is the same whatever the chunking, the order of cells, or the
    other cells present.
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
    ties
        ``"draw"`` (above) or ``"average"``: every value of a group of equal values gets the bin of the group's mean
        rank, so equal values share a bin (the bins are then only approximately equal in size).

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
    if ties not in ("draw", "average"):
        msg = f"`ties` must be 'draw' or 'average' (a fixed rule for a stored layer), got {ties!r}."
        raise ValueError(msg)
    if len(X.shape) != 2:
        msg = f"{arg} must be a 2-d cells × genes matrix, got shape {X.shape}."
        raise ValueError(msg)
    n_obs = X.shape[0]
    if len(cell_names) != n_obs:
        msg = f"`cell_names` has {len(cell_names)} entries but {arg} has {n_obs} rows."
        raise ValueError(msg)
    seeds = registered_cell_seeds(cell_names, seed=seed)
    is_sparse = _is_sparse(X)

    blocks: list[sparse.csr_matrix] = []
    n_empty = 0
    for start, stop, block in iter_row_chunks(X, chunk_size=chunk_size):
        binned, empty = _bin_csr(block, n_bins, seeds[start:stop], arg, start, ties)
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
