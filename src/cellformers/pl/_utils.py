"""The scanpy plotting contract shared by the ``pl`` functions: ``ax``, ``show``, ``save`` and ``return_fig``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import os

    from matplotlib.axes import Axes
    from matplotlib.figure import Figure


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
