"""User-facing models."""

from __future__ import annotations

from .base import CellformersModel

__all__ = [
    "CellformersModel",
]
