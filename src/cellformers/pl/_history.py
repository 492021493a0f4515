"""Training curves of a model: losses, the validation pretext loss beside its trivial baseline, learning rate."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._utils import finish, panel_axes

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cellformers.model.base import CellformersModel

_LOSS_KEYS = ("train_loss_epoch", "validation_loss")
_SIGNAL_KEYS = ("pretext_loss_train", "pretext_loss_validation", "trivial_loss_validation")
_LR_KEYS = ("lr", "lr-AdamW", "lr-Adam")


def _series(history: Mapping[str, pd.DataFrame], key: str) -> tuple[np.ndarray, np.ndarray] | None:
    frame = history.get(key)
    if frame is None or len(frame) == 0:
        return None
    values = frame.iloc[:, 0].to_numpy(dtype=float)
    epochs = np.asarray(frame.index, dtype=float)
    keep = np.isfinite(values)
    if not keep.any():
        return None
    return epochs[keep], values[keep]


def history(
    model: CellformersModel | Mapping[str, pd.DataFrame],
    *,
    keys: list[str] | None = None,
    ax: Axes | Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Plot a model's training history.

    Panels: the training and validation losses; the validation pretext loss beside the loss of its trivial
    predictor (each gene's mean or value distribution, :class:`~cellformers.nn.TrivialBaseline`) with their ratio in
    the title, so a model that has not learned anything about cells is visible at a glance; the learning rate when
    it was logged; and any extra ``keys``.

    Parameters
    ----------
    model
        A trained cellformers model, or its ``history`` (a dict of one-column DataFrames indexed by epoch).
    keys
        Further history entries to plot, one panel each (e.g. ``["ecs_loss_validation"]``).
    ax
        Axes to draw into, one per panel (a single axes when there is one panel); ``None`` makes a new figure.
    show
        Show the figure (``None``: ``scanpy.settings.autoshow``).
    save
        Write the figure to this path.
    return_fig
        Return the :class:`~matplotlib.figure.Figure`.

    Returns
    -------
    The figure with ``return_fig=True``; else the list of axes unless the plot was shown.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=40)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=3, enable_progress_bar=False)  # doctest: +ELLIPSIS
    >>> axes = cf.pl.history(model, show=False)
    >>> [ax.get_ylabel() for ax in axes]
    ['loss', 'pretext loss', 'learning rate']
    """
    hist = model if isinstance(model, dict) else getattr(model, "history_", None) or getattr(model, "history", None)
    if not hist:
        msg = "`model` has no training history: train it first (or pass a `history` dict)."
        raise ValueError(msg)
    missing = [k for k in keys or [] if k not in hist]
    if missing:
        msg = f"`keys` has {missing!r}, which the history does not hold (it has {sorted(hist)})."
        raise ValueError(msg)

    panels: list[tuple[str, list[tuple[str, str]]]] = []
    losses = [(k, k.replace("_epoch", "")) for k in _LOSS_KEYS if _series(hist, k) is not None]
    if losses:
        panels.append(("loss", losses))
    signal = [(k, k) for k in _SIGNAL_KEYS if _series(hist, k) is not None]
    if signal:
        panels.append(("pretext loss", signal))
    lr = next((k for k in _LR_KEYS if _series(hist, k) is not None), None)
    if lr is not None:
        panels.append(("learning rate", [(lr, "learning rate")]))
    panels += [(k, [(k, k)]) for k in keys or []]
    if not panels:
        msg = f"the history has none of the entries this plot draws (it has {sorted(hist)}); name some with `keys`."
        raise ValueError(msg)

    fig, axes = panel_axes(ax, [p[0] for p in panels], panel_size=(4.2, 3.2))
    for ax, (ylabel, entries) in zip(axes, panels, strict=True):
        for key, label in entries:
            x, y = _series(hist, key)
            trivial = key == "trivial_loss_validation"
            ax.plot(
                x,
                y,
                ls="--" if trivial else "-",
                color="0.4" if trivial else None,
                marker="." if len(x) < 30 else None,
                label=label,
            )
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if ylabel == "pretext loss":
            pair = [_series(hist, k) for k in ("pretext_loss_validation", "trivial_loss_validation")]
            if all(p is not None for p in pair):
                ratio = pair[0][1][-1] / pair[1][1][-1]
                verdict = "beats" if ratio < 1 else "does not beat"
                ax.set_title(f"validation {verdict} trivial (ratio {ratio:.3f})", fontsize="medium")
        if len(entries) > 1:
            ax.legend(fontsize="small", frameon=False)
        ax.grid(alpha=0.3)
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)
