"""Tools: functions that compute on an AnnData and write the result back into it (scanpy's ``tl`` contract)."""

from __future__ import annotations

from ._annotate import annotate, annotation_baselines
from ._baselines import baselines
from ._benchmark import benchmark
from ._context import context_embedding
from ._embed import embed, gene_embeddings, impute
from ._impute_eval import evaluate_imputation, mask_expression, train_and_impute
from ._leiden import leiden_search
from ._transfer import transfer_labels
from ._umap import umap
from ._untrained import embed_untrained

__all__: list[str] = [
    "annotate",
    "annotation_baselines",
    "baselines",
    "benchmark",
    "context_embedding",
    "embed",
    "embed_untrained",
    "gene_embeddings",
    "impute",
    "evaluate_imputation",
    "leiden_search",
    "mask_expression",
    "train_and_impute",
    "transfer_labels",
    "umap",
]
