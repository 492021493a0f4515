"""Base classes shared by the models, and saving/loading them as checkpoints."""

from __future__ import annotations

from ._annotation import AnnotationMixin, CellTypeAnnotator
from ._base import CellformersModel
from ._checkpoint_io import load_pretrained, save_pretrained
from ._pretrained import PretrainedMixin

__all__ = [
    "AnnotationMixin",
    "CellTypeAnnotator",
    "CellformersModel",
    "PretrainedMixin",
    "load_pretrained",
    "save_pretrained",
]
