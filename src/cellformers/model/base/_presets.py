"""Architecture presets: one table per model, the same lookup for all of them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["preset_config"]


def preset_config(
    model: str, presets: Mapping[str, Mapping[str, Any]], preset: str, explicit: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The values of ``presets[preset]``, overridden by those of ``explicit`` that are not ``None``.

    Every model has a ``"tiny"`` preset (one layer, width 16) for examples and tests: it builds and trains in a
    second, and it is not meant to learn anything.
    """
    if preset not in presets:
        msg = f"`preset` of {model} must be one of {list(presets)}, got {preset!r}."
        raise ValueError(msg)
    return {**presets[preset], **{k: v for k, v in (explicit or {}).items() if v is not None}}
