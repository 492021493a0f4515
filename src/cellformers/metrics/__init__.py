"""Metrics as pure functions on arrays: embedding integration, cell-type classification, perturbation prediction.

Nothing here touches an :class:`~anndata.AnnData` or a model: :mod:`cellformers.tl` (benchmarks, Leiden search,
annotation), :mod:`cellformers.pl` and the models call these, so every table and figure scores the same way.

- Integration (xTrimoGene App. 4 and scFormer App. A.1.1, after scIB): :func:`adjusted_rand_index`,
  :func:`normalized_mutual_info`, :func:`homogeneity`, :func:`completeness`, :func:`silhouette`,
  :func:`asw_cell`, :func:`asw_batch`, :func:`graph_connectivity`, :func:`avg_bio`, :func:`avg_batch`,
  :func:`overall`.
- Classification (xTrimoGene Table 2): :func:`classification_metrics`.
- Perturbation (scFormer App. A.1.2): :func:`pearson`, :func:`perturbation_scores`.
- Prediction heads: :func:`regression_scores`, :func:`binary_scores`.
"""

from __future__ import annotations

from ._classification import classification_metrics
from ._integration import (
    adjusted_rand_index,
    asw_batch,
    asw_cell,
    avg_batch,
    avg_bio,
    completeness,
    graph_connectivity,
    homogeneity,
    normalized_mutual_info,
    overall,
    silhouette,
)
from ._perturbation import pearson, perturbation_scores
from ._prediction import binary_scores, regression_scores

__all__ = [
    "adjusted_rand_index",
    "asw_batch",
    "asw_cell",
    "avg_batch",
    "avg_bio",
    "binary_scores",
    "classification_metrics",
    "completeness",
    "graph_connectivity",
    "homogeneity",
    "normalized_mutual_info",
    "overall",
    "pearson",
    "perturbation_scores",
    "regression_scores",
    "silhouette",
]
