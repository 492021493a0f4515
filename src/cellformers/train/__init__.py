"""Training plans."""

from __future__ import annotations

from ._plan import MaskedModelingTrainingPlan

__all__ = [
    "MaskedModelingTrainingPlan",
]
