"""Lightning callback: the step boundary at which training trims a heap that fragmentation made grow."""

from __future__ import annotations

from lightning.pytorch.callbacks import Callback

from cellformers._utils._heap import release_fragmented_heap

__all__ = ["TrimFragmentedHeap"]


class TrimFragmentedHeap(Callback):
    """After every training step, trim the kept heap if it grew past its bound.

    Runs :func:`~cellformers._utils._heap.release_fragmented_heap` inside ``train``'s
    :func:`~cellformers._utils._heap.retained_heap` region; a no-op elsewhere.
    """

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        release_fragmented_heap()
