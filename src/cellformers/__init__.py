"""cellformers: single-cell transformer foundation models for the scverse ecosystem."""

from __future__ import annotations

import logging

from rich.console import Console
from rich.logging import RichHandler

from ._settings import settings
from ._version import __version__

logger = logging.getLogger("cellformers")
if not logger.handlers:
    _handler = RichHandler(show_path=False, console=Console(force_terminal=False), show_time=False)
    _handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(_handler)
logger.setLevel(logging.INFO)
# Without this the root logger prints every message a second time.
logger.propagate = False

from . import checkpoint, data, downstream, metrics, model, module, nn, pl, pp, pretrained, tl, train  # noqa: E402
from ._exceptions import (  # noqa: E402
    CellformersError,
    CheckpointError,
    ChecksumError,
    GeneMappingError,
    InvalidExpressionError,
    InvalidLabelsError,
    MissingKeyError,
    NotCountsError,
    UnknownCategoryError,
    UntrustedCheckpointError,
)

__all__ = [
    "CellformersError",
    "CheckpointError",
    "ChecksumError",
    "GeneMappingError",
    "InvalidExpressionError",
    "InvalidLabelsError",
    "MissingKeyError",
    "NotCountsError",
    "UnknownCategoryError",
    "UntrustedCheckpointError",
    "data",
    "downstream",
    "model",
    "module",
    "nn",
    "pl",
    "pp",
    "pretrained",
    "settings",
    "tl",
    "train",
]
