"""Training plans and data splitters."""

from __future__ import annotations

from ._plan import MaskedModelingTrainingPlan
from ._samplers import BatchGroupedAnnDataLoader, BatchGroupedDataSplitter, BatchGroupedSampler
from ._scpalm_plan import ScPaLMTrainingPlan

__all__ = [
    "BatchGroupedAnnDataLoader",
    "BatchGroupedDataSplitter",
    "BatchGroupedSampler",
    "MaskedModelingTrainingPlan",
    "ScPaLMTrainingPlan",
]
