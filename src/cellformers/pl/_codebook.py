"""scPaLM codebook diagnostics: do the pathway codes tell the cells apart, and did stage 1 beat its trivial baseline?"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ._history import _series
from ._utils import finish, panel_axes

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

    from cellformers.model import ScPaLM


def codebook(
    model: ScPaLM,
    adata: AnnData | None = None,
    *,
    batch_size: int | None = None,
    ax: Sequence[Axes] | None = None,
    show: bool | None = None,
    save: str | os.PathLike | None = None,
    return_fig: bool = False,
) -> Figure | list[Axes] | None:
    """Plot the codebook diagnostics of a trained :class:`~cellformers.model.ScPaLM`.

    Three panels:

    1. **stage-1 reconstruction**: the validation MSE of stage 1 beside the per-gene-mean (trivial) predictor of the
       same target, by epoch, their last ratio in the title (``history["stage1_pretext_loss_validation"]`` and
       ``["stage1_trivial_loss_validation"]``; needs validation cells);
    2. **codes per position**: distinct codes among the cells of a minibatch at a position, averaged over the
       positions, by epoch (``history["codes_per_position_train"]`` / ``_validation``), and the code entropy in bits
       on a second axis;
    3. **distinct codes at each position** over all cells of ``adata``
       (:meth:`~cellformers.model.ScPaLM.get_codebook_statistics`), with ``K``. A shared codebook that only encodes
       the positions has one or a few codes per position here, however healthy the codebook usage looks.

    Parameters
    ----------
    model
        A trained scPaLM model (stage 1 at least).
    adata
        Cells for panel 3; ``None``: the registered AnnData.
    batch_size
        Minibatch size of the inference of panel 3.
    ax
        Three axes to draw into; ``None`` makes a new figure.
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
    >>> cf.model.ScPaLM.setup_anndata(adata)
    >>> model = cf.model.ScPaLM(adata, preset="tiny")
    >>> model.train(max_epochs=2, stage=1, enable_progress_bar=False)
    >>> axes = cf.pl.codebook(model, show=False)
    >>> [ax.get_ylabel() for ax in axes]
    ['stage-1 MSE', 'codes per position', 'distinct codes over the cells']
    """
    if not hasattr(model, "get_codebook_statistics"):
        msg = f"`cf.pl.codebook` needs a ScPaLM model, got {type(model).__name__}."
        raise TypeError(msg)
    model._require_stage(1, "`cf.pl.codebook`")
    hist = model.history_ if isinstance(getattr(model, "history_", None), dict) else {}
    fig, axes = panel_axes(
        ax, ["stage-1 MSE", "codes per position", "distinct codes over the cells"], panel_size=(13 / 3, 3.3)
    )

    # 1. stage-1 MSE vs the trivial baseline
    a = axes[0]
    pair = [_series(hist, f"stage1_{k}_loss_validation") for k in ("pretext", "trivial")]
    for series, label, style in zip(pair, ("stage-1 MSE", "per-gene mean"), ("-", "--"), strict=True):
        if series is not None:
            a.plot(*series, ls=style, marker=".", color="0.4" if style == "--" else None, label=label)
    if all(p is not None for p in pair):
        ratio = pair[0][1][-1] / pair[1][1][-1]
        a.set_title(f"validation / trivial = {ratio:.3f}", fontsize="medium")
        a.legend(fontsize="small", frameon=False)
    else:
        a.set_title("no validation cells", fontsize="medium")
    a.set_xlabel("epoch")
    a.set_ylabel("stage-1 MSE")

    # 2. codes per position and entropy by epoch
    a = axes[1]
    for key, style in (("codes_per_position_train", "-"), ("codes_per_position_validation", "--")):
        series = _series(hist, key)
        if series is not None:
            a.plot(*series, ls=style, marker=".", color="C0", label=key.rsplit("_", 1)[-1])
    a.set_xlabel("epoch")
    a.set_ylabel("codes per position")
    entropy = _series(hist, "code_entropy_train")
    if entropy is not None:
        twin = a.twinx()
        twin.plot(*entropy, color="C1", marker=".", label="entropy (train)")
        twin.set_ylabel("code entropy (bits)", color="C1")
    if a.get_lines():
        a.legend(fontsize="small", frameon=False, loc="upper left")
    a.set_title("per minibatch", fontsize="medium")

    # 3. distinct codes at each position over all cells
    a = axes[2]
    codes = model.get_pathway_codes(adata, batch_size=batch_size)
    distinct = np.array([np.unique(codes[:, j]).size for j in range(codes.shape[1])])
    k = model.module.quantizer.n_codes
    a.bar(np.arange(distinct.size), distinct, color="C2", width=1.0)
    a.axhline(k, color="0.4", ls="--", lw=1)
    a.set_xlabel("position")
    a.set_ylabel("distinct codes over the cells")
    a.set_title(
        f"{model.module.quantizer.codebook_mode}: mean {distinct.mean():.1f} of K={k} ({codes.shape[0]} cells)",
        fontsize="medium",
    )
    return finish(fig, axes, show=show, save=save, return_fig=return_fig)
