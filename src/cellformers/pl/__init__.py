"""Plotting: scanpy-style figures of cellformers results (``show`` / ``ax`` / ``return_fig`` contract)."""

from __future__ import annotations

from ._benchmark import benchmark
from ._codebook import codebook
from ._embedding import embedding
from ._history import history

__all__: list[str] = [
    "benchmark",
    "codebook",
    "embedding",
    "history",
]
