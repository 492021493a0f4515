"""Per-cell value binning written into an ``AnnData`` layer."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

from cellformers._docs import doc_dsp
from cellformers._settings import settings
from cellformers._utils import get_matrix, resolve_adata
from cellformers.data._binning import bin_expression

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["bin_values"]


@doc_dsp.dedent
def bin_values(
    adata: AnnData,
    n_bins: int = 51,
    *,
    layer: str | None = None,
    key_added: str = "X_binned",
    chunk_size: int = 2048,
    tie_breaking: Literal["draw", "average"] = "draw",
    copy: bool = False,
) -> AnnData | None:
    """Per-cell equal-frequency bins of the non-zero values (scFormer eq. 2).

    Zeros get bin ``0``; the non-zero values of each cell are split by rank into ``n_bins - 1`` groups of equal
    size (``1 … n_bins-1``; the largest value of a cell always gets ``n_bins - 1``). Ties are ordered by a
    per-cell draw at each column, seeded from ``cellformers.settings.seed`` and the cell name, so the bins of a
    cell do not depend on chunking, cell order or the other cells; scFormer computes the same bins from the same
    counts inside the model. See :func:`cellformers.data.bin_expression` for the exact rule.
    Bins only depend on the order of values within a cell, so raw counts and normalized or log values give the
    same result. Rows are read in chunks, so backed ``AnnData`` works; sparse input gives a sparse layer.

    Parameters
    ----------
    %(adata)s
    n_bins
        Number of bins including the zero bin (51, as in scGPT, gives 50 bins for non-zero values).
    layer
        Layer holding the values to bin; ``None`` uses ``adata.X``.
    key_added
        Name of the layer (and ``uns`` entry) written.
    chunk_size
        Cells per chunk; does not change the result.
    tie_breaking
        ``"draw"`` (above; scFormer's default) or ``"average"``: equal values of a cell share the bin of their mean
        rank (what ``ScFormer(..., tie_breaking="average")`` computes inside the model).
    %(copy)s

    Returns
    -------
    Returns ``None`` or, with ``copy=True``, a copy of ``adata``. Sets these fields:

    `adata.layers['X_binned' | key_added]` : :class:`scipy.sparse.csr_matrix` or :class:`numpy.ndarray` (``int32``)
        Bin of each value; CSR with the same non-zero pattern when the input is sparse.
    `adata.uns['X_binned' | key_added]['params']` : :class:`dict`
        ``n_bins``, ``layer``, ``seed`` and ``tie_breaking``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts()
    >>> cf.pp.bin_values(adata, n_bins=51)
    >>> int(adata.layers["X_binned"].max())
    50
    """
    adata = resolve_adata(adata)
    adata = adata.copy() if copy else adata
    X = get_matrix(adata, layer)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    seed = settings.seed
    logger.info(f"binning {where} into {n_bins - 1} equal-frequency bins per cell")
    binned = bin_expression(
        X, n_bins, cell_names=adata.obs_names, seed=seed, chunk_size=chunk_size, arg=where, ties=tie_breaking
    )
    adata.layers[key_added] = binned
    rule = "counter_draw" if tie_breaking == "draw" else tie_breaking
    params: dict[str, object] = {"n_bins": int(n_bins), "seed": int(seed), "tie_breaking": rule}
    if layer is not None:
        params["layer"] = layer
    adata.uns[key_added] = {"params": params}
    logger.info(f"added {key_added!r} (adata.layers)")
    return adata if copy else None
