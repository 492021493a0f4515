"""The scanpy plotting contract shared by the ``pl`` functions: ``ax``, ``show``, ``save`` and ``return_fig``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


def panel_axes(
    ax: Axes | Sequence[Axes] | None, names: Sequence[str], *, panel_size: tuple[float, float]
) -> tuple[Figure, list[Axes]]:
    """One axes per named panel in a row: a new figure when ``ax`` is ``None``, else the given axes, checked."""
    import matplotlib.pyplot as plt
    import numpy as np

    n = len(names)
    if ax is None:
        width, height = panel_size
        fig, grid = plt.subplots(1, n, figsize=(width * n, height), squeeze=False, layout="constrained")
        return fig, list(grid[0])
    axes = list(np.ravel(ax)) if isinstance(ax, list | tuple | np.ndarray) else [ax]
    if len(axes) != n:
        msg = f"`ax` has {len(axes)} axes; this plot needs {n} (one per panel: {list(names)})."
        raise ValueError(msg)
    return axes[0].figure, axes


def finish(
    fig: Figure,
    axes: Axes | list[Axes],
    *,
    show: bool | None,
    save: str | os.PathLike | None,
    return_fig: bool,
) -> Figure | Axes | list[Axes] | None:
    """Save and/or show a finished plot and return what scanpy's plotting functions return.

    ``save`` writes the figure to that path (format from the suffix). ``return_fig=True`` returns the
    :class:`~matplotlib.figure.Figure`; otherwise ``show=None`` follows ``scanpy.settings.autoshow``; a shown plot
    returns ``None``, an unshown one its axes.
    """
    import matplotlib.pyplot as plt
    import scanpy as sc

    if save is not None:
        path = Path(save)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, bbox_inches="tight")
    if return_fig:
        return fig
    show = sc.settings.autoshow if show is None else show
    if show:
        plt.show()
        return None
    return axes
