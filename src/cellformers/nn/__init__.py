"""Plain PyTorch building blocks (no AnnData, no scvi-tools)."""

from __future__ import annotations

from ._transformer import MultiheadSelfAttention, TransformerBlock, TransformerEncoder

__all__ = [
    "MultiheadSelfAttention",
    "TransformerBlock",
    "TransformerEncoder",
]
