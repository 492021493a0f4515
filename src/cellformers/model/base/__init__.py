"""Base classes shared by the models."""

from __future__ import annotations

from ._base import CellformersModel

__all__ = ["CellformersModel"]
