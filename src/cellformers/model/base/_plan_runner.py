"""Running a ready Lightning training plan through scvi-tools' training runner, keeping the model's training record."""

from __future__ import annotations

from typing import TYPE_CHECKING

from scvi.model.base import UnsupervisedTrainingMixin

from cellformers._utils import resolve_precision, training_device
from cellformers._utils._progress import show_progress

if TYPE_CHECKING:
    from lightning.pytorch import LightningModule
    from scvi.model.base import BaseModelClass

__all__ = ["run_training_plan"]

#: What scvi-tools' training runner records on the model, restored after the run of a foreign training plan.
TRAINING_RECORD = ("history_", "train_indices", "test_indices", "validation_indices", "trainer", "is_trained_")


def run_training_plan(
    model: BaseModelClass,
    plan: LightningModule,
    max_epochs: int | None,
    accelerator: str,
    devices: int | list[int] | str,
    precision: str | int | None,
    enable_progress_bar: bool | None,
    kwargs: dict,
) -> None:
    """Run ``plan`` on ``kwargs["datamodule"]`` with scvi-tools' ``train``, then restore the model's training record.

    The run gets ``model.train``'s precision resolution, progress-bar setting and stop-on-SIGTERM callback; scvi-tools'
    runner would otherwise extend ``history_`` with the plan's metrics and replace the training indices and
    ``trainer`` of the model's own training, so those (and the module's train/eval mode) are put back afterwards.
    """
    from cellformers.train._checkpointing import StopOnSigterm
    from cellformers.train._heap_trim import RetainedHeap

    if kwargs.get("datamodule") is None or max_epochs is None:
        msg = "`training_plan=` needs `datamodule=` (its data) and `max_epochs=`."
        raise ValueError(msg)
    kept = {name: getattr(model, name, None) for name in TRAINING_RECORD}
    if isinstance(kept["history_"], dict):  # the runner extends the dict in place: keep a copy, not a reference
        kept["history_"] = dict(kept["history_"])
    was_training = model.module.training
    stop, heap = StopOnSigterm(None), RetainedHeap()
    kwargs = {
        **kwargs,
        "precision": resolve_precision(precision, training_device(accelerator, None)),
        "enable_progress_bar": show_progress(enable_progress_bar),
        "callbacks": [*(kwargs.get("callbacks") or []), stop, heap],
    }
    # scvi-tools builds `model._training_plan_cls(module, **plan_kwargs)`: an instance attribute hands it the plan
    model._training_plan_cls = lambda module, **_: plan
    try:
        with stop, heap:
            UnsupervisedTrainingMixin.train(
                model, max_epochs=max_epochs, accelerator=accelerator, devices=devices, **kwargs
            )
    finally:
        del model._training_plan_cls
        for name, value in kept.items():
            setattr(model, name, value)
        model.module.train(was_training)
