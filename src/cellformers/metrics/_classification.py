"""Classification scores of a cell-type annotation (macro-F1, macro-precision, accuracy) on plain label arrays.

Used by the annotation training plan (validation), ``model.train_annotator`` (test) and ``cellformers.tl.annotate``
(query).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ["classification_metrics"]


def classification_metrics(y_true: Sequence[str], y_pred: Sequence[str], *, min_support: int = 5) -> dict:
    """Macro-F1, macro-precision (xTrimoGene Table 2) and accuracy, with per-class support.

    Macro averages run over the classes present in ``y_true`` or ``y_pred`` (scikit-learn's default); a class that
    is never predicted has precision 0 (scikit-learn's ``zero_division=0``). A class with two test cells moves
    macro-F1 as much as one with two hundred, so ``macro_f1_supported`` also averages over the classes with at least
    ``min_support`` true cells only.

    Parameters
    ----------
    y_true, y_pred
        True and predicted labels.
    min_support
        Fewest true cells of a class counted in ``macro_f1_supported``.

    Returns
    -------
    ``{"macro_f1", "macro_precision", "accuracy", "n_cells", "macro_f1_supported", "n_classes_supported",
    "per_class"}`` where ``per_class`` maps each class to ``{"support", "f1", "precision"}``; NaN scores for
    empty input.
    """
    y_true = np.asarray(y_true, dtype=object).astype(str)
    y_pred = np.asarray(y_pred, dtype=object).astype(str)
    if y_true.shape != y_pred.shape:
        msg = f"`y_true` and `y_pred` differ in length ({y_true.size} and {y_pred.size})."
        raise ValueError(msg)
    nan = float("nan")
    if y_true.size == 0:
        return {
            "macro_f1": nan,
            "macro_precision": nan,
            "accuracy": nan,
            "n_cells": 0,
            "macro_f1_supported": nan,
            "n_classes_supported": 0,
            "per_class": {},
        }
    classes = np.unique(np.concatenate([y_true, y_pred]))
    k = classes.size
    t, p = np.searchsorted(classes, y_true), np.searchsorted(classes, y_pred)
    confusion = np.bincount(t * k + p, minlength=k * k).reshape(k, k).astype(np.float64)
    tp, n_pred, n_true = np.diag(confusion), confusion.sum(0), confusion.sum(1)
    precision = np.divide(tp, n_pred, out=np.zeros(k), where=n_pred > 0)
    f1 = 2 * tp / (n_true + n_pred)  # each class of the union is in y_true or y_pred, so the sum is positive
    supported = n_true >= max(1, int(min_support))
    return {
        "macro_f1": float(f1.mean()),
        "macro_precision": float(precision.mean()),
        "accuracy": float(tp.sum() / y_true.size),
        "n_cells": int(y_true.size),
        "macro_f1_supported": float(f1[supported].mean()) if supported.any() else nan,
        "n_classes_supported": int(supported.sum()),
        "per_class": {
            str(c): {"support": int(n_true[i]), "f1": float(f1[i]), "precision": float(precision[i])}
            for i, c in enumerate(classes)
        },
    }
