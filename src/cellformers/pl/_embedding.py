"""Scatter plot of an embedding or of its UMAP, coloured by ``obs`` keys, thin over :func:`scanpy.pl.embedding`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._exceptions import MissingKeyError
from cellformers.tl._umap import resolve_rep, umap_key

from ._utils import finish

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

logger = logging.getLogger(__name__)

__all__ = ["embedding"]


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


def _plot_key(adata: AnnData, basis: str, *, components: object) -> str:
    """The ``adata.obsm`` key to draw for ``basis``: itself (two columns, or ``components``), else its UMAP."""
    dims = np.shape(adata.obsm[basis])
    if len(dims) != 2 or dims[1] < 2:
        msg = f"`basis={basis!r}`: adata.obsm[{basis!r}] must have at least two dimensions, got shape {dims}."
        raise ValueError(msg)
    if dims[1] == 2 or components is not None:
        return basis
    key = umap_key(basis)
    record = adata.uns.get(key)
    params = record.get("params", {}) if isinstance(record, dict) else {}
    if key in adata.obsm and params.get("use_rep", basis) == basis:
        logger.info(f"drawing adata.obsm[{key!r}], the UMAP of adata.obsm[{basis!r}]")
        return key
    name = basis.removeprefix("X_")
    msg = (
        f"adata.obsm[{basis!r}] has {dims[1]} dimensions and no UMAP of it was computed. Compute it first: "
        f"`cellformers.tl.umap(adata, {basis!r})` (writes adata.obsm[{key!r}]), then "
        f"`cellformers.pl.embedding(adata, {basis!r}, ...)`; or draw two of its dimensions, as "
        f"`scanpy.pl.embedding` does: `cellformers.pl.embedding(adata, {name!r}, components='1,2')`."
    )
    raise MissingKeyError(msg)


def embedding(
    adata: AnnData,
    basis: str,
    *,
    color: str | Sequence[str] | None = None,
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
    **kwargs,
) -> Figure | Axes | list[Axes] | None:
    """Scatter plot of an embedding (its UMAP when it has more than two dimensions), coloured by ``obs`` keys or genes.

    Called like :func:`scanpy.pl.embedding` (``cf.pl.embedding(adata, "X_scvi", color="cell_type")``), and like
    it, never writes to ``adata``. A two-dimensional ``adata.obsm[basis]`` is drawn as is. For a wider one, its
    UMAP computed by :func:`cellformers.tl.umap` (``adata.obsm['X_umap_<basis>']``, e.g. ``X_umap_scvi`` for
    ``basis="X_scvi"``) is drawn; without one, an error says how to compute it. With ``components=``, the
    chosen dimensions of ``basis`` itself are drawn, as scanpy does.

    Parameters
    ----------
    adata
        Annotated data matrix.
    basis
        Key of ``adata.obsm`` with the embedding (``"X_scvi"``; ``"scvi"`` works too).
    color
        Column(s) of ``adata.obs`` or gene(s) to colour by; several make a grid of panels.
    ax
        A matplotlib axes object to draw into (one ``color`` only).
    show
        Show the plot, do not return the axes. ``None`` follows ``scanpy.settings.autoshow``.
    save
        Path to write the figure to (format from the suffix).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.
    **kwargs
        Passed to :func:`scanpy.pl.embedding` (``components``, ``palette``, ``size``, ``legend_loc``, ``title``, …).

    Returns
    -------
    The figure if ``return_fig=True``; else the axes (a list for several colours) if the plot is not shown; else
    ``None``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> cf.tl.umap(adata, "X_pca_hvg")  # adata.obsm["X_umap_pca_hvg"]
    >>> axes = cf.pl.embedding(adata, "X_pca_hvg", color=["labels", "batch"], show=False)
    >>> len(axes)
    2
    """
    import scanpy as sc

    basis = resolve_rep(adata, basis, arg="basis")
    _check_color(adata, color)
    if ax is not None and not isinstance(color, str | None) and len(color) > 1:
        msg = "`ax` can only be used with a single `color`."
        raise ValueError(msg)
    plot_key = _plot_key(adata, basis, components=kwargs.get("components"))
    axes = sc.pl.embedding(adata, basis=plot_key, color=color, ax=ax, show=False, return_fig=False, **kwargs)
    first = axes[0] if isinstance(axes, list) else axes
    return finish(first.figure, axes, show=show, save=save, return_fig=return_fig)
