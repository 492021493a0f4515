"""scvi-tools modules (tensors in, ``LossOutput`` out)."""

from __future__ import annotations

from ._base import GeneTokenModule

__all__ = [
    "GeneTokenModule",
]
