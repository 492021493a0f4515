"""Progress bars of long loops, switched by :attr:`cellformers.settings.progress_bar` or a call's ``progress_bar=``."""

from __future__ import annotations

import contextlib
import sys
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

from cellformers._settings import settings

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

__all__ = ["progress_bar_override", "show_progress", "track"]

# a `progress_bar=` argument of an outer call (``tl.embed(..., progress_bar=False)``) reaches the loops it runs
_OVERRIDE: ContextVar[bool | None] = ContextVar("cellformers_progress_bar", default=None)


def show_progress(progress_bar: bool | None = None) -> bool:
    """Whether to show a bar: ``progress_bar`` when given, else an enclosing call's choice, else the setting."""
    if progress_bar is not None:
        return bool(progress_bar)
    outer = _OVERRIDE.get()
    return bool(settings.progress_bar) if outer is None else outer


@contextlib.contextmanager
def progress_bar_override(progress_bar: bool | None) -> Iterator[None]:
    """Within the block, loops show a bar as ``progress_bar`` says (``None``: leave the choice as it is)."""
    if progress_bar is None:
        yield
        return
    token = _OVERRIDE.set(bool(progress_bar))
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def track(
    iterable: Iterable,
    *,
    description: str,
    total: int | None = None,
    progress_bar: bool | None = None,
    **kwargs: Any,
) -> Iterable:
    """``iterable`` wrapped in a tqdm bar on stdout (as :func:`scvi.utils.track` draws it) unless switched off.

    Parameters
    ----------
    iterable
        What the loop runs over.
    description
        Text left of the bar.
    total
        Number of items (``len(iterable)`` when it has one).
    progress_bar
        Show the bar; ``None`` follows :func:`show_progress`.
    **kwargs
        Passed to :class:`tqdm.tqdm`.
    """
    if not show_progress(progress_bar):
        return iterable
    from tqdm import tqdm

    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    kwargs.setdefault("leave", False)
    return tqdm(iterable, desc=description, total=total, file=sys.stdout, dynamic_ncols=True, **kwargs)
