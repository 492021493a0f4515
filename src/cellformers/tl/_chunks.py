"""Row chunks of a user's AnnData ready for a model's getters, without copying it whole or writing into it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from cellformers._constants import CELL_SEED_OBS_COLUMN
from cellformers._exceptions import InvalidExpressionError
from cellformers._utils._validation import check_batch_size

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

    from cellformers.model.base import CellformersModel

__all__ = ["DEFAULT_CHUNK", "model_chunks"]

#: Cells loaded at a time from a backed AnnData (or when ``chunk_size`` is not given for one).
DEFAULT_CHUNK = 8192


def _setup_columns(adata: AnnData, model: CellformersModel) -> list[str]:
    """The ``adata.obs`` columns the model's setup reads (``batch_key``, ``labels_key``, ...) that ``adata`` has."""
    setup_args = (model.registry_ or {}).get("setup_args", {}) or {}
    columns = [v for k, v in setup_args.items() if k.endswith("_key") and isinstance(v, str)]
    columns.append(CELL_SEED_OBS_COLUMN)
    return [c for c in dict.fromkeys(columns) if c in adata.obs.columns]


def _lean_rows(adata: AnnData, start: int, stop: int, model: CellformersModel) -> AnnData:
    """Rows ``start:stop`` with only what the model reads: its counts, its setup's ``obs`` columns, and ``var``."""
    from anndata import AnnData

    layer = ((model.registry_ or {}).get("setup_args", {}) or {}).get("layer")
    if layer is not None and layer not in adata.layers:  # keep every layer: the model's error then lists them
        sub = adata[start:stop]
        return sub.to_memory() if adata.isbacked else sub.copy()
    matrix = adata.X[start:stop] if layer is None else adata.layers[layer][start:stop]
    if hasattr(matrix, "to_memory"):  # a backed sparse slice
        matrix = matrix.to_memory()
    obs = adata.obs.iloc[start:stop][_setup_columns(adata, model)].copy()
    var = adata.var.copy()
    if layer is None:
        return AnnData(X=matrix, obs=obs, var=var)
    # the layer is what the model reads; X shares its (already sliced) matrix rather than holding a second copy
    return AnnData(X=matrix, obs=obs, var=var, layers={layer: matrix})


def model_chunks(
    adata: AnnData,
    model: CellformersModel,
    chunk_size: int | None,
    *,
    align: tuple[list[str], float] | None = None,
    default_chunk: int | None = None,
) -> Iterator[tuple[int, int, AnnData]]:
    """``(start, stop, chunk)`` over the cells of ``adata`` for the model's getters.

    The model's own (registered) in-memory AnnData comes back whole and as it is: it is set up already, so nothing
    is copied or written. Otherwise ``adata`` is cut into chunks that hold only what the model reads (its counts
    matrix, the ``obs`` columns of its setup, ``var``), so setting a chunk up never writes into the caller's object
    and no other layer, ``obsm`` entry or column is copied. Chunks have ``chunk_size`` cells; without it, backed
    data come in chunks of :data:`DEFAULT_CHUNK` cells and in-memory data in ``default_chunk`` cells (``None``: one
    piece). With ``align=(genes, min_coverage)``, each chunk is
    aligned to those genes first (:func:`cellformers.pp.align_to_reference`).
    """
    check_batch_size(chunk_size, arg="chunk_size")
    n = adata.n_obs
    if n == 0:
        msg = f"`adata` has no cells (shape {adata.shape}); there is nothing to compute."
        raise InvalidExpressionError(msg)
    size = chunk_size or (DEFAULT_CHUNK if adata.isbacked else default_chunk) or n
    own = not adata.isbacked and not adata.is_view and model.get_anndata_manager(adata) is not None
    if align is None and own and size >= n:
        yield 0, n, adata
        return
    for start in range(0, n, size):
        stop = min(start + size, n)
        sub = _lean_rows(adata, start, stop, model)
        if align is not None:
            from cellformers.pp import align_to_reference

            sub = align_to_reference(sub, align[0], min_coverage=align[1])
        yield start, stop, sub
