"""Did training learn anything about cells? The pretext loss read against its trivial predictor."""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scvi.model.base import BaseModelClass

#: Generic advice when a model has not beaten its trivial predictor; models add their own (``_trivial_hint``).
_GENERIC_HINT = (
    "Train longer (more epochs or cells), check the learning rate and its warm-up, and prefer highly variable genes "
    "as input when training from scratch."
)


def learning_signal(history: dict | None) -> dict[str, float] | None:
    """The last validation epoch's pretext loss, its trivial predictor's loss and their ratio.

    Parameters
    ----------
    history
        A model's ``history`` (scvi-tools: a dict of one-column DataFrames indexed by epoch).

    Returns
    -------
    ``{"pretext_loss", "trivial_loss", "ratio", "epoch"}``, or ``None`` when the history has no validation epoch with
    both losses (no validation cells, or training stopped before the first validation).

    Examples
    --------
    >>> import pandas as pd
    >>> from cellformers.train import learning_signal
    >>> hist = {
    ...     "pretext_loss_validation": pd.DataFrame({"pretext_loss_validation": [0.7, 0.6]}),
    ...     "trivial_loss_validation": pd.DataFrame({"trivial_loss_validation": [0.65, 0.65]}),
    ... }
    >>> round(learning_signal(hist)["ratio"], 3)
    0.923
    """
    if not history:
        return None
    frames = [history.get(k) for k in ("pretext_loss_validation", "trivial_loss_validation")]
    if any(f is None or len(f) == 0 for f in frames):
        return None
    both = frames[0].iloc[:, 0].to_frame("p").join(frames[1].iloc[:, 0].to_frame("t"), how="inner").dropna()
    if both.empty:
        return None
    p, t = float(both["p"].iloc[-1]), float(both["t"].iloc[-1])
    ratio = p / t if t > 0 else math.nan
    return {"pretext_loss": p, "trivial_loss": t, "ratio": ratio, "epoch": both.index[-1]}


def warn_if_trivial(model: BaseModelClass) -> dict[str, float] | None:
    """Warn when ``model`` ended training no better than the trivial predictor of its pretext target.

    ``train`` calls it after every run; the warning names the model, both losses and what to try.

    Returns
    -------
    :func:`learning_signal` of the model's history.

    Examples
    --------
    >>> import warnings
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> with warnings.catch_warnings():
    ...     warnings.simplefilter("ignore")  # `train` itself warns if the model did not beat the baseline
    ...     model.train(max_epochs=1, enable_progress_bar=False, plan_kwargs={"lr": 0.0})
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     signal = cf.train.warn_if_trivial(model)
    >>> signal["ratio"] >= 1, "did not beat the trivial predictor" in str(caught[0].message)
    (True, True)
    """
    signal = learning_signal(getattr(model, "history_", None))
    if signal is None or not signal["ratio"] >= 1.0:
        return signal
    name = type(model).__name__
    hint = getattr(model, "_trivial_hint", "") or ""
    msg = (
        f"{name} did not beat the trivial predictor on the validation cells: pretext loss {signal['pretext_loss']:.4g} "
        f"vs {signal['trivial_loss']:.4g} for {getattr(model, '_trivial_name', 'the per-gene statistics')} (ratio "
        f"{signal['ratio']:.3f}). Its embedding then reflects little beyond gene identity and the untrained "
        f"network. {hint + ' ' if hint else ''}{_GENERIC_HINT}"
    )
    warnings.warn(msg, UserWarning, stacklevel=_caller_stacklevel())
    return signal


def _caller_stacklevel() -> int:
    """Stack level of the first frame outside cellformers, so the warning points at the user's ``train`` call."""
    import sys

    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith("cellformers"):
        frame, level = frame.f_back, level + 1
    return level
