"""Training plans and data splitters."""

from __future__ import annotations

from cellformers._utils._heap import huge_pages_active
from cellformers._utils._torch import bf16_hardware, resolve_precision

from ._annotation_plan import AnnotationTrainingPlan
from ._learning_signal import learning_signal, warn_if_trivial
from ._memory import estimate_training_memory
from ._plan import MaskedModelingTrainingPlan
from ._samplers import BatchGroupedAnnDataLoader, BatchGroupedDataSplitter, BatchGroupedSampler
from ._scpalm_plan import ScPaLMTrainingPlan

__all__ = [
    "AnnotationTrainingPlan",
    "BatchGroupedAnnDataLoader",
    "BatchGroupedDataSplitter",
    "BatchGroupedSampler",
    "MaskedModelingTrainingPlan",
    "ScPaLMTrainingPlan",
    "bf16_hardware",
    "estimate_training_memory",
    "huge_pages_active",
    "resolve_precision",
    "learning_signal",
    "warn_if_trivial",
]
