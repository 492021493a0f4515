"""Scores of a regression or a binary prediction (the drug-combination heads of :mod:`cellformers.downstream`)."""

from __future__ import annotations

import numpy as np

__all__ = ["binary_scores", "regression_scores"]


def regression_scores(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``mse``, ``pearson`` and ``spearman`` of predictions ``pred`` of targets ``y`` (correlations NaN if constant).

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.metrics.regression_scores([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])["spearman"]
    1.0
    """
    from scipy import stats

    y, pred = np.asarray(y, dtype=np.float64), np.asarray(pred, dtype=np.float64)
    const = np.std(pred) == 0 or np.std(y) == 0
    return {
        "mse": float(np.mean((pred - y) ** 2)),
        "pearson": float("nan") if const else float(stats.pearsonr(pred, y)[0]),
        "spearman": float("nan") if const else float(stats.spearmanr(pred, y)[0]),
    }


def binary_scores(y: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """``auroc``, ``auprc`` (NaN unless ``y`` holds both classes) and ``accuracy`` of logits for 0/1 targets.

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.metrics.binary_scores([0, 1, 1], [-2.0, 1.0, 3.0])["auroc"]
    1.0
    """
    from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score

    y = np.asarray(y)
    prob = 1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))
    both = np.unique(y).size == 2
    return {
        "auroc": float(roc_auc_score(y, prob)) if both else float("nan"),
        "auprc": float(average_precision_score(y, prob)) if both else float("nan"),
        "accuracy": float(accuracy_score(y, prob >= 0.5)),
    }
