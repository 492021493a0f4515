"""Perturbation-prediction scores of scFormer App. A.1.2, on mean expression vectors."""

from __future__ import annotations

import numpy as np

__all__ = ["pearson", "perturbation_scores"]


def pearson(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two vectors (NaN when either is constant or has fewer than two values).

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.metrics.pearson([1.0, 2.0, 3.0], [2.0, 4.0, 7.0]) > 0.99
    True
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.size < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def perturbation_scores(pred: np.ndarray, truth: np.ndarray, control: np.ndarray, de: np.ndarray | None) -> dict:
    """ScFormer App. A.1.2 metrics of mean expression vectors.

    ``pearson`` = corr(pred, truth); ``pearson_delta`` = corr(pred - control, truth - control); the ``_de``
    variants restrict both to the genes ``de`` (column indices of the top differentially expressed genes).

    Examples
    --------
    >>> import numpy as np
    >>> import cellformers as cf
    >>> control = np.array([1.0, 1.0, 1.0, 1.0])
    >>> truth = np.array([2.0, 1.0, 0.5, 1.0])
    >>> scores = cf.metrics.perturbation_scores(truth + 0.01, truth, control, de=np.array([0, 2]))
    >>> round(scores["pearson_delta"], 3)
    1.0
    """
    out = {"pearson": pearson(pred, truth), "pearson_delta": pearson(pred - control, truth - control)}
    if de is not None and len(de):
        out["pearson_de"] = pearson(pred[de], truth[de])
        out["pearson_delta_de"] = pearson(pred[de] - control[de], truth[de] - control[de])
    else:
        out["pearson_de"] = out["pearson_delta_de"] = float("nan")
    return out
