"""Plain PyTorch building blocks (no AnnData, no scvi-tools)."""

from __future__ import annotations

from ._autodiscretization import AutoDiscretizationEmbedding
from ._contrastive import TokenContrastiveLoss, spherical_kmeans
from ._dsbn import DomainSpecificBatchNorm1d
from ._ecs import ElasticCellSimilarity
from ._expression_head import ExpressionHead
from ._grad_reverse import AdversarialDiscriminator, GradientReversal, grad_reverse
from ._mvc_head import MVCHead
from ._performer import Performer, PerformerAttention, PerformerBlock
from ._permutation_invariant import PermutationInvariantEmbedding
from ._transformer import MultiheadSelfAttention, TransformerBlock, TransformerEncoder
from ._trivial_baseline import TrivialBaseline
from ._value_embedding import EqualBinEmbedding, RoundBinEmbedding, UpBinEmbedding, make_value_embedding
from ._value_encoders import CategoricalValueEncoder, ContinuousValueEncoder
from ._vector_quantizer import QuantizerOutput, VectorQuantizer, codebook_usage, kmeans

__all__ = [
    "AdversarialDiscriminator",
    "CategoricalValueEncoder",
    "ContinuousValueEncoder",
    "DomainSpecificBatchNorm1d",
    "ElasticCellSimilarity",
    "ExpressionHead",
    "GradientReversal",
    "MVCHead",
    "grad_reverse",
    "AutoDiscretizationEmbedding",
    "EqualBinEmbedding",
    "Performer",
    "PerformerAttention",
    "PerformerBlock",
    "RoundBinEmbedding",
    "UpBinEmbedding",
    "make_value_embedding",
    "MultiheadSelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
    "PermutationInvariantEmbedding",
    "QuantizerOutput",
    "TokenContrastiveLoss",
    "TrivialBaseline",
    "VectorQuantizer",
    "codebook_usage",
    "kmeans",
    "spherical_kmeans",
]
