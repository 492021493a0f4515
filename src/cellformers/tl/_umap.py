"""UMAP of any embedding in ``adata.obsm``, for :func:`cellformers.pl.embedding`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._docs import doc_dsp
from cellformers._utils import check_key, resolve_adata

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["umap"]


def resolve_rep(adata: AnnData, use_rep: str, *, arg: str = "use_rep") -> str:
    """The ``adata.obsm`` key ``use_rep`` names (``"scvi"`` stands for ``"X_scvi"`` when only that exists)."""
    if use_rep not in adata.obsm and f"X_{use_rep}" in adata.obsm:
        return f"X_{use_rep}"
    check_key(adata, "obsm", use_rep, arg=arg)
    return use_rep


def umap_key(use_rep: str) -> str:
    """Key of the UMAP :func:`umap` computes of ``adata.obsm[use_rep]``: ``"X_umap_scvi"`` for ``"X_scvi"``."""
    return f"X_umap_{use_rep.removeprefix('X_')}"


@doc_dsp.dedent
def umap(
    adata: AnnData,
    use_rep: str,
    *,
    n_neighbors: int = 15,
    random_state: int = 0,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """UMAP of an embedding, without touching the neighbour graph or ``X_umap`` of ``adata``.

    :func:`scanpy.pp.neighbors` (``use_rep``) and :func:`scanpy.tl.umap` (umap-learn) run on a private AnnData that
    holds only the embedding, so ``adata.obsp``, ``adata.uns['neighbors']`` and ``adata.obsm['X_umap']`` stay as they
    are, and several embeddings each get their own UMAP. :func:`cellformers.pl.embedding` draws it when given the
    embedding itself (``cf.pl.embedding(adata, "X_scvi")``).

    Parameters
    ----------
    %(adata)s
    use_rep
        Key of ``adata.obsm`` holding the embedding (``"X_scvi"``; ``"scvi"`` works too).
    n_neighbors
        Number of neighbours of the kNN graph the UMAP is computed from (at most ``n_obs - 1``).
    random_state
        Seed of the neighbour search and of UMAP.
    key_added
        Key of ``adata.obsm`` and ``adata.uns`` written; ``None``: ``"X_umap_<use_rep without X_>"``.
    %(copy)s

    Returns
    -------
    Returns ``None`` or, with ``copy=True``, a copy of ``adata``. Sets these fields:

    `adata.obsm['X_umap_<use_rep>' | key_added]` : :class:`numpy.ndarray` (dtype ``float32``)
        UMAP coordinates, shape ``(n_obs, 2)``.
    `adata.uns['X_umap_<use_rep>' | key_added]` : :class:`dict`
        ``params``: ``use_rep``, ``n_neighbors`` and ``random_state``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> cf.tl.umap(adata, "X_pca_hvg")
    >>> adata.obsm["X_umap_pca_hvg"].shape
    (100, 2)
    >>> adata.uns["X_umap_pca_hvg"]["params"]
    {'use_rep': 'X_pca_hvg', 'n_neighbors': 15, 'random_state': 0}
    """
    import scanpy as sc
    from anndata import AnnData

    adata = resolve_adata(adata)
    use_rep = resolve_rep(adata, use_rep)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int | np.integer) or n_neighbors < 2:
        msg = f"`n_neighbors` must be an integer of at least 2, got {n_neighbors!r}."
        raise ValueError(msg)
    X = adata.obsm[use_rep]
    X = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    if X.ndim != 2 or X.shape[1] < 2:
        msg = f"`use_rep={use_rep!r}`: adata.obsm[{use_rep!r}] must have at least two columns, got shape {X.shape}."
        raise ValueError(msg)
    if adata.n_obs < 3:
        msg = f"A UMAP needs at least 3 cells, `adata` has {adata.n_obs}."
        raise ValueError(msg)
    key = key_added or umap_key(use_rep)
    logger.info(f"computing the UMAP of adata.obsm[{use_rep!r}]")
    tmp = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()), obsm={"X_rep": X})
    sc.pp.neighbors(tmp, n_neighbors=min(int(n_neighbors), tmp.n_obs - 1), use_rep="X_rep", random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    adata = adata.copy() if copy else adata
    adata.obsm[key] = np.asarray(tmp.obsm["X_umap"], dtype=np.float32)
    adata.uns[key] = {
        "params": {"use_rep": use_rep, "n_neighbors": int(n_neighbors), "random_state": int(random_state)}
    }
    logger.info(f"added {key!r} (adata.obsm, adata.uns)")
    return adata if copy else None
