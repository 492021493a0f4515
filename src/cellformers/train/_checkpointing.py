"""Resumable training: atomically written Lightning checkpoints and per-epoch seeds that travel with them."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback

from cellformers._utils import cell_seed

if TYPE_CHECKING:
    import lightning.pytorch as pl

logger = logging.getLogger(__name__)

#: Name (without ``.ckpt``) of the checkpoint ``train(checkpoint_dir=...)`` writes after every epoch.
CHECKPOINT_NAME = "last"


class EpochSeeder(Callback):
    """Seed torch's global generator at the start of every training epoch from ``(base_seed, epoch)``.

    Shuffling, training masks and dropout of epoch ``e`` then depend only on the base seed and ``e``, not on what
    consumed random numbers before, so a run resumed from a checkpoint (which keeps the base seed) repeats the
    uninterrupted run exactly.

    Parameters
    ----------
    base_seed
        Seed of the run; drawn from torch's global generator when ``None`` (so ``scvi.settings.seed`` fixes it).
    """

    def __init__(self, base_seed: int | None = None):
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.base_seed = int(base_seed)
        self._first_epoch_of_fit = False

    def _seed(self, epoch: int) -> None:
        torch.manual_seed(cell_seed(str(epoch), seed=self.base_seed, salt="epoch"))

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._first_epoch_of_fit = True

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        epoch = trainer.current_epoch
        self._seed(epoch)
        if self._first_epoch_of_fit:
            # Lightning creates the first epoch's data iterator (drawing its shuffling) while setting up the data,
            # before this hook; later epochs create it after this hook. Recreate it after seeding so that the first
            # epoch of a fit, fresh or resumed, draws exactly as an epoch in the middle of a run does.
            self._first_epoch_of_fit = False
            fetcher = getattr(trainer.fit_loop, "_data_fetcher", None)
            if fetcher is not None:
                iter(fetcher)

    def state_dict(self) -> dict[str, Any]:
        return {"base_seed": self.base_seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = int(state_dict["base_seed"])


class EpochCheckpoint(Callback):
    """Write a Lightning checkpoint to ``path`` at the end of every training epoch, atomically.

    The checkpoint is written under a temporary name beside ``path`` and renamed over it, so a crash while saving
    leaves the previous checkpoint intact instead of a truncated file.

    Parameters
    ----------
    path
        The checkpoint file (``.ckpt``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp-{uuid.uuid4().hex[:8]}")
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        finally:
            if trainer.is_global_zero and tmp.exists():
                tmp.unlink()
        trainer.strategy.barrier()


def resumable_train_kwargs(checkpoint_dir: str | os.PathLike, resume: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` keyword arguments that checkpoint every epoch into ``checkpoint_dir`` (and resume from it).

    The checkpoint is ``<checkpoint_dir>/last.ckpt``, or ``last-stage<k>.ckpt`` for a training plan with a ``stage``
    (scPaLM), so the stages of one ``train()`` call do not overwrite each other.
    """
    kwargs = dict(kwargs)
    if kwargs.get("ckpt_path") is not None and resume:
        msg = "Pass either `resume=True` (continue from `checkpoint_dir`) or `ckpt_path=`, not both."
        raise ValueError(msg)
    stage = (kwargs.get("plan_kwargs") or {}).get("stage")
    name = CHECKPOINT_NAME if stage is None else f"{CHECKPOINT_NAME}-stage{stage}"
    directory = Path(checkpoint_dir).expanduser()
    path = directory / f"{name}.ckpt"
    if resume:
        if path.is_file():
            kwargs["ckpt_path"] = str(path)
            logger.info(f"resuming training from {path}")
        else:
            logger.info(f"no checkpoint at {path}; training from the start")
    callbacks = list(kwargs.pop("callbacks", None) or [])
    kwargs["callbacks"] = [*callbacks, EpochSeeder(), EpochCheckpoint(path)]
    return kwargs
