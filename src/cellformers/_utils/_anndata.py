"""Access to ``AnnData`` matrices that works alike for dense, CSR/CSC, views and backed files."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from scipy import sparse

from cellformers._exceptions import MissingKeyError

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

_ATTRS = ("obs", "var", "obsm", "varm", "layers", "uns", "obsp")


def resolve_adata(data, *, modality: str = "rna") -> AnnData:
    """Return the ``AnnData`` to work on: ``data`` itself, or ``data[modality]`` for a ``MuData``."""
    from anndata import AnnData

    if isinstance(data, AnnData):
        return data
    mod = getattr(data, "mod", None)
    if isinstance(mod, dict):
        if modality not in mod:
            msg = (
                f"The MuData passed as `adata` has no {modality!r} modality (it has {sorted(mod)}). "
                f"Pass the RNA AnnData directly, e.g. `mdata.mod['<name>']`."
            )
            raise MissingKeyError(msg)
        return mod[modality]
    msg = f"`adata` must be an AnnData (or a MuData with an {modality!r} modality), got {type(data).__name__}."
    raise TypeError(msg)


def check_key(
    adata: AnnData,
    attr: Literal["obs", "var", "obsm", "varm", "layers", "uns", "obsp"],
    key: str,
    *,
    arg: str,
) -> None:
    """Raise :class:`MissingKeyError` naming ``arg`` when ``key`` is not in ``adata.<attr>``."""
    if attr not in _ATTRS:
        msg = f"unknown AnnData attribute {attr!r}"
        raise ValueError(msg)
    container = getattr(adata, attr)
    keys = container.columns if attr in ("obs", "var") else container.keys()
    if key not in keys:
        available = list(keys)
        shown = ", ".join(map(repr, available[:15])) + (" …" if len(available) > 15 else "")
        msg = f"`{arg}={key!r}` is not a key of `adata.{attr}` (available: {shown or 'none'})."
        raise MissingKeyError(msg)


def get_matrix(adata: AnnData, layer: str | None = None, *, arg: str = "layer"):
    """Return ``adata.X`` or ``adata.layers[layer]`` without copying (may be a backed dataset)."""
    if layer is None:
        if adata.X is None:
            msg = f"`adata.X` is empty; pass `{arg}=` naming the layer that holds the expression values."
            raise MissingKeyError(msg)
        return adata.X
    check_key(adata, "layers", layer, arg=arg)
    return adata.layers[layer]


def to_dense_rows(block) -> np.ndarray:
    """Dense ``float32`` copy of a row block (sparse, dense, or backed sparse)."""
    if sparse.issparse(block):
        return np.asarray(block.toarray(), dtype=np.float32)
    if hasattr(block, "to_memory"):
        block = block.to_memory()
        if sparse.issparse(block):
            return np.asarray(block.toarray(), dtype=np.float32)
    return np.asarray(block, dtype=np.float32)


def iter_row_chunks(
    X, *, chunk_size: int = 2048, dense: bool = False
) -> Iterator[tuple[int, int, np.ndarray | sparse.csr_matrix]]:
    """Yield ``(start, stop, rows)`` over row blocks of ``X`` without loading all of it.

    Rows come back as CSR (sparse input) or dense ``float32`` (``dense=True`` or dense input).
    Works for backed ``h5py`` datasets and anndata's backed sparse datasets.
    """
    n = X.shape[0]
    for start in range(0, n, chunk_size):
        stop = min(start + chunk_size, n)
        block = X[start:stop]
        if hasattr(block, "to_memory"):
            block = block.to_memory()
        if sparse.issparse(block):
            yield start, stop, (to_dense_rows(block) if dense else sparse.csr_matrix(block))
        else:
            yield start, stop, np.asarray(block, dtype=np.float32)


def row_nnz(X, *, chunk_size: int = 4096) -> np.ndarray:
    """Number of stored non-zero values in each row of ``X``, without loading ``X`` whole.

    For CSR matrices, in memory or backed, only the row pointers are read; dense and CSC matrices are scanned in
    row chunks. Explicitly stored zeros of a sparse matrix count as stored values.
    """
    if sparse.issparse(X):
        return np.asarray(X.getnnz(axis=1), dtype=np.int64)
    group = getattr(X, "group", None)
    if getattr(X, "format", None) == "csr" and group is not None:  # anndata's backed CSR dataset
        return np.diff(np.asarray(group["indptr"][...], dtype=np.int64))
    out = np.empty(X.shape[0], dtype=np.int64)
    for start, stop, block in iter_row_chunks(X, chunk_size=chunk_size):
        out[start:stop] = block.getnnz(axis=1) if sparse.issparse(block) else np.count_nonzero(block, axis=1)
    return out
