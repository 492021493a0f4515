"""Exceptions raised for user mistakes.

Each kind of mistake has its own type, and every message names the argument at fault and the fix.
All inherit from :class:`CellformersError` and from the matching built-in type, so ``except ValueError``
keeps working.
"""

from __future__ import annotations

__all__ = [
    "CellformersError",
    "CheckpointError",
    "ChecksumError",
    "GeneMappingError",
    "InvalidExpressionError",
    "MissingKeyError",
    "NotCountsError",
    "UnknownCategoryError",
    "UntrustedCheckpointError",
]


class CellformersError(Exception):
    """Base class of every error raised by cellformers for bad input."""


class InvalidExpressionError(CellformersError, ValueError):
    """The expression matrix holds values the method cannot use (NaN, inf, negative, empty cells)."""


class NotCountsError(InvalidExpressionError):
    """Raw counts were expected but the data looks normalized or log-transformed."""


class GeneMappingError(CellformersError, ValueError):
    """Genes of the data could not be matched to the vocabulary well enough."""


class MissingKeyError(CellformersError, KeyError):
    """A key named by the caller is not in the ``AnnData`` (obs, obsm, layers, var, uns)."""

    def __str__(self) -> str:
        # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


class UnknownCategoryError(CellformersError, ValueError):
    """A categorical covariate (e.g. the ``batch_key`` column) holds categories the model was not set up with."""


class ChecksumError(CellformersError, OSError):
    """A downloaded file does not match its pinned sha256 hash."""


class UntrustedCheckpointError(CellformersError, ValueError):
    """A checkpoint names a class outside cellformers or would need unpickling arbitrary objects."""


class CheckpointError(CellformersError, ValueError):
    """A checkpoint directory or archive is incomplete, damaged or of an unsupported format version."""
