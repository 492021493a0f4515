"""Base classes shared by the models."""

from __future__ import annotations

from ._annotation import AnnotationMixin, CellTypeAnnotator
from ._base import CellformersModel

__all__ = ["AnnotationMixin", "CellTypeAnnotator", "CellformersModel"]
