"""UMAP of any embedding, coloured by ``obs`` keys, thin over :func:`scanpy.pl.embedding`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._exceptions import MissingKeyError
from cellformers._utils import check_key

from ._utils import finish

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _resolve_basis(adata: AnnData, basis: str) -> str:
    if basis not in adata.obsm and f"X_{basis}" in adata.obsm:
        return f"X_{basis}"
    check_key(adata, "obsm", basis, arg="basis")
    return basis


def _check_color(adata: AnnData, color: str | Sequence[str] | None) -> None:
    if color is None:
        return
    keys = [color] if isinstance(color, str) else list(color)
    raw_names = adata.raw.var_names if adata.raw is not None else pd.Index([])
    missing = [c for c in keys if c not in adata.obs.columns and c not in adata.var_names and c not in raw_names]
    if missing:
        shown = ", ".join(map(repr, list(adata.obs.columns)[:15]))
        msg = f"`color` has {missing!r}, which are neither columns of adata.obs ({shown}) nor genes of adata.var_names."
        raise MissingKeyError(msg)


def _umap(adata: AnnData, basis: str, *, n_neighbors: int, random_state: int, recompute: bool) -> str:
    """UMAP of ``adata.obsm[basis]`` cached in ``adata.obsm['X_umap_<basis>']`` (recomputed when params differ)."""
    import scanpy as sc
    from anndata import AnnData

    key = f"X_umap_{basis.removeprefix('X_')}"
    params = {"basis": basis, "n_neighbors": int(n_neighbors), "random_state": int(random_state)}
    cached = adata.uns.get(key, {}).get("params", {}) if isinstance(adata.uns.get(key), dict) else {}
    if not recompute and key in adata.obsm and {k: cached.get(k) for k in params} == params:
        return key
    X = adata.obsm[basis]
    X = X.to_numpy() if isinstance(X, pd.DataFrame) else X
    X = np.asarray(X.toarray() if hasattr(X, "toarray") else X, dtype=np.float32)
    tmp = AnnData(obs=pd.DataFrame(index=adata.obs_names.copy()), obsm={"X_rep": X})
    sc.pp.neighbors(tmp, n_neighbors=min(n_neighbors, tmp.n_obs - 1), use_rep="X_rep", random_state=random_state)
    sc.tl.umap(tmp, random_state=random_state)
    adata.obsm[key] = np.asarray(tmp.obsm["X_umap"], dtype=np.float32)
    adata.uns[key] = {"params": params}
    return key


def embedding(
    adata: AnnData,
    *,
    basis: str,
    color: str | Sequence[str] | None = None,
    n_neighbors: int = 15,
    random_state: int = 0,
    recompute: bool = False,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Figure | Axes | list[Axes] | None:
    """Scatter plot of an embedding (its UMAP when it has more than two dimensions), coloured by ``obs`` keys or genes.

    A two-dimensional ``adata.obsm[basis]`` is drawn as is. Otherwise a UMAP of it is computed
    (:func:`scanpy.pp.neighbors` with ``use_rep=basis`` and :func:`scanpy.tl.umap`, on a private AnnData, so the
    caller's neighbours and ``X_umap`` are untouched) and cached in ``adata.obsm['X_umap_<basis>']`` (e.g.
    ``X_umap_scvi`` for ``basis="X_scvi"``) with its parameters in ``adata.uns['X_umap_<basis>']``; it is reused
    while those parameters match. The drawing is :func:`scanpy.pl.embedding`.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        Key of ``adata.obsm`` with the embedding (``"X_scvi"``; ``"scvi"`` works too).
    color
        Column(s) of ``adata.obs`` or gene(s) to colour by; several make a grid of panels.
    n_neighbors
        Number of neighbours of the graph the UMAP is computed from.
    random_state
        Seed of the neighbour search and of UMAP.
    recompute
        Compute the UMAP again even when a cached one matches.
    ax
        A matplotlib axes object to draw into (one ``color`` only).
    show
        Show the plot, do not return the axes. ``None`` follows ``scanpy.settings.autoshow``.
    save
        Path to write the figure to (format from the suffix).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``palette``, ``size``, ``legend_loc``, ``title``, …).

    Returns
    -------
    The figure if ``return_fig=True``; else the axes (a list for several colours) if the plot is not shown; else
    ``None``. May set `adata.obsm['X_umap_<basis>']` and `adata.uns['X_umap_<basis>']` (the UMAP cache).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> axes = cf.pl.embedding(adata, basis="X_pca_hvg", color=["labels", "batch"], show=False)
    >>> len(axes)
    2
    """
    import scanpy as sc

    basis = _resolve_basis(adata, basis)
    _check_color(adata, color)
    if ax is not None and not isinstance(color, str | None) and len(color) > 1:
        msg = "`ax` can only be used with a single `color`."
        raise ValueError(msg)
    dims = np.shape(adata.obsm[basis])
    if len(dims) != 2 or dims[1] < 2:
        msg = f"`basis={basis!r}`: adata.obsm[{basis!r}] must have at least two dimensions, got shape {dims}."
        raise ValueError(msg)
    plot_key = (
        basis
        if dims[1] == 2
        else _umap(adata, basis, n_neighbors=n_neighbors, random_state=random_state, recompute=recompute)
    )
    axes = sc.pl.embedding(adata, basis=plot_key, color=color, ax=ax, show=False, return_fig=False, **kwargs)
    first = axes[0] if isinstance(axes, list) else axes
    return finish(first.figure, axes, show=show, save=save, return_fig=return_fig)
