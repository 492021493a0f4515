"""Plot of the table written by :func:`cellformers.tl.benchmark`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from cellformers.tl._benchmark import METRICS, SCFORMER_METRICS, SCIB_PREFIX, XTRIMOGENE_METRICS, _benchmark_table

from ._utils import finish

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def _select(df: pd.DataFrame, metrics: Sequence[str] | Literal["all"] | None) -> list[str]:
    if metrics is None or metrics == "all":
        cols = [c for c in df.columns if c in METRICS or (metrics == "all" and c.startswith(SCIB_PREFIX))]
        cols = [c for c in cols if np.isfinite(df[c].to_numpy(dtype=float)).any()]
    else:
        cols = [metrics] if isinstance(metrics, str) else list(metrics)
        missing = [c for c in cols if c not in df.columns]
        if missing:
            msg = f"`metrics` has {missing!r}, which the benchmark table does not hold (it has {list(df.columns)})."
            raise ValueError(msg)
    if not cols:
        msg = "no metric to plot: every value of the selected metrics is NaN."
        raise ValueError(msg)
    return cols


def _group_of(col: str) -> str:
    if col in XTRIMOGENE_METRICS:
        return "xTrimoGene"
    if col in SCFORMER_METRICS:
        return "scFormer"
    return "scib-metrics"


def _heatmap(ax: Axes, df: pd.DataFrame) -> None:
    values = df.to_numpy(dtype=float)
    finite = values[np.isfinite(values)]
    vmin = min(0.0, float(finite.min())) if finite.size else 0.0
    vmax = max(1.0, float(finite.max())) if finite.size else 1.0
    import matplotlib as mpl

    cmap = mpl.colormaps["viridis"].with_extremes(bad="lightgray")
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=vmin, vmax=vmax, aspect="auto")
    ax.grid(False)  # scanpy's set_figure_params turns axes grids on: they would cross the cells
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = values[i, j]
            text = "–" if not np.isfinite(v) else f"{v:.2f}"
            light = np.isfinite(v) and (v - vmin) / (vmax - vmin or 1.0) < 0.6
            ax.text(j, i, text, ha="center", va="center", fontsize=8, color="white" if light else "black")
    ax.set_xticks(range(values.shape[1]), [c.removeprefix(SCIB_PREFIX) for c in df.columns], rotation=45, ha="right")
    ax.set_yticks(range(values.shape[0]), list(df.index))
    groups = [_group_of(c) for c in df.columns]
    start = 0
    for j in range(1, len(groups) + 1):
        if j == len(groups) or groups[j] != groups[start]:
            if j < len(groups):
                ax.axvline(j - 0.5, color="white", linewidth=3)
            ax.text((start + j - 1) / 2, -0.7, groups[start], ha="center", va="bottom", fontsize=9, weight="bold")
            start = j
    ax.figure.colorbar(im, ax=ax, fraction=0.03, pad=0.02)


def _bars(ax: Axes, df: pd.DataFrame) -> None:
    n_emb, n_met = df.shape
    width = 0.8 / n_emb
    x = np.arange(n_met)
    for i, (name, row) in enumerate(df.iterrows()):
        ax.bar(x - 0.4 + width * (i + 0.5), row.to_numpy(dtype=float), width=width, label=str(name))
    ax.set_xticks(x, [c.removeprefix(SCIB_PREFIX) for c in df.columns], rotation=45, ha="right")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_ylabel("score")
    ax.legend(title="embedding", frameon=False, bbox_to_anchor=(1.01, 1), loc="upper left")


def benchmark(
    adata: AnnData,
    *,
    key: str = "cellformers_benchmark",
    metrics: Sequence[str] | Literal["all"] | None = None,
    kind: Literal["heatmap", "bar"] = "heatmap",
    ax: Axes | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | Axes | None:
    """Plot the metrics table of :func:`cellformers.tl.benchmark`: a heat-table or grouped bars.

    Columns are grouped as xTrimoGene (ARI, NMI, HOMO, CP, SIL; appendix 4) and scFormer (ARI_cell … Overall; appendix
    A.1.1, whose AvgBIO/AvgBATCH/Overall are the scFormer definitions), then scib-metrics when present. NaN
    values (e.g. batch metrics without a batch) are drawn grey and marked "–".

    Parameters
    ----------
    adata
        Annotated data matrix holding the table in ``adata.uns[key]``.
    key
        Key of ``adata.uns`` written by :func:`cellformers.tl.benchmark` (its ``key_added``).
    metrics
        Metrics (columns) to show. ``None``: the xTrimoGene and scFormer metrics that are not all NaN; ``"all"``:
        those and the ``"scib …"`` columns.
    kind
        ``"heatmap"``: embeddings × metrics with values written in the cells; ``"bar"``: bars grouped by metric.
    ax
        A matplotlib axes object to draw into; a new figure is made otherwise.
    show
        Show the plot, do not return the axes. ``None`` follows ``scanpy.settings.autoshow``.
    save
        Path to write the figure to (format from the suffix).
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure if ``return_fig=True``; else the axes if the plot is not shown; else ``None``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> scores = cf.tl.benchmark(adata, embeddings=["X_pca_hvg"], label_key="labels")
    >>> ax = cf.pl.benchmark(adata, kind="bar", metrics=["ARI", "NMI", "AvgBIO"], show=False)
    """
    import matplotlib.pyplot as plt

    if kind not in ("heatmap", "bar"):
        msg = f"`kind` must be 'heatmap' or 'bar', got {kind!r}."
        raise ValueError(msg)
    table = _benchmark_table(adata, key, arg="key")
    df = table[_select(table, metrics)]
    if ax is None:
        if kind == "heatmap":
            figsize = (1.6 + 0.75 * df.shape[1], 1.4 + 0.45 * df.shape[0])
        else:
            figsize = (2.5 + 0.35 * df.shape[1] * max(df.shape[0], 2), 4.0)
        fig, ax = plt.subplots(figsize=figsize)
    else:
        fig = ax.figure
    (_heatmap if kind == "heatmap" else _bars)(ax, df)
    return finish(fig, ax, show=show, save=save, return_fig=return_fig)
