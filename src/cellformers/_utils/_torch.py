"""Torch helpers: precision contexts for inference."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

Precision = Literal["32", "bf16", "16"]


def autocast_context(device: torch.device | str, precision: Precision | str | None = None):
    """Autocast context for inference: ``"bf16"`` (or Lightning's ``"bf16-mixed"``) and ``"16"`` enable autocast."""
    if precision is None or str(precision) in ("32", "32-true", "64", "64-true"):
        return contextlib.nullcontext()
    p = str(precision)
    if p.startswith("bf16"):
        dtype = torch.bfloat16
    elif p.startswith("16"):
        dtype = torch.float16
    else:
        msg = f"`precision` must be one of '32', 'bf16', '16' (or Lightning's '*-mixed'), got {precision!r}."
        raise ValueError(msg)
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype)
