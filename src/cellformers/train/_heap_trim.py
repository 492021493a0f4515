"""Freed memory kept for reuse while Lightning trains, with the heap trimmed at step boundaries."""

from __future__ import annotations

import contextlib

from lightning.pytorch.callbacks import Callback

from cellformers._utils._heap import release_fragmented_heap, retained_heap

__all__ = ["RetainedHeap"]


class RetainedHeap(Callback):
    """:func:`~cellformers._utils._heap.retained_heap` around a training run, trimmed after every step.

    Used, like :class:`~cellformers.train._checkpointing.StopOnSigterm`, as a context manager around the whole
    ``train`` call and as a Lightning callback of its trainer: after every training step it runs
    :func:`~cellformers._utils._heap.release_fragmented_heap` (a no-op outside the region).
    """

    def __init__(self) -> None:
        self._region = contextlib.ExitStack()

    def __enter__(self) -> RetainedHeap:
        self._region.enter_context(retained_heap())
        return self

    def __exit__(self, *exc) -> None:
        self._region.close()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        release_fragmented_heap()
