"""Resumable training: atomically written Lightning checkpoints and per-epoch seeds that travel with them."""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from lightning.pytorch.callbacks import Callback

from cellformers._utils import cell_seed
from cellformers._utils._debris import clean_stale, temp_name

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
    batch_size
        The run's training batch size, kept in the checkpoint so that a resumed run with ``batch_size=None`` uses
        the same one (see :func:`checkpoint_batch_size`).
    """

    def __init__(self, base_seed: int | None = None, batch_size: int | None = None):
        if base_seed is None:
            base_seed = int(torch.randint(0, 2**62, (1,)).item())
        self.base_seed = int(base_seed)
        self.batch_size = None if batch_size is None else int(batch_size)
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
        return {"base_seed": self.base_seed, "batch_size": self.batch_size}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base_seed = int(state_dict["base_seed"])
        if state_dict.get("batch_size") is not None:
            self.batch_size = int(state_dict["batch_size"])


class EpochCheckpoint(Callback):
    """Write a Lightning checkpoint to ``path`` at the end of every training epoch, atomically.

    The checkpoint is written under a temporary name beside ``path`` (``.<name>.tmp-<pid>-<random>``) and renamed
    over it, so a crash while saving leaves the previous checkpoint intact instead of a truncated file; the
    temporary file of a killed process is removed at the next epoch end writing to ``path``.

    Parameters
    ----------
    path
        The checkpoint file (``.ckpt``).
    """

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if trainer.is_global_zero:
            clean_stale(self.path.parent, f".{self.path.name}.tmp-")
        tmp = self.path.with_name(temp_name(self.path.name, "tmp"))
        try:
            trainer.save_checkpoint(tmp)
            if trainer.is_global_zero:
                os.replace(tmp, self.path)
        finally:
            if trainer.is_global_zero and tmp.exists():
                tmp.unlink()
        trainer.strategy.barrier()


class _Terminated(SystemExit):
    """Raised at a batch boundary after SIGTERM; :class:`StopOnSigterm` turns it into the process's exit."""


class StopOnSigterm(Callback):
    """Stop training at the next batch boundary after SIGTERM, then exit with status 143 (128 + SIGTERM).

    Used as a context manager around the whole ``train`` call and as a Lightning callback of its trainer. On entry
    (in the main thread, unless SIGTERM is ignored) it installs a handler that only records the signal; Lightning,
    which installs its own SIGTERM handler during ``fit``, calls this one too. The callback raises at the start and
    end of the next training or validation batch, so the batch being computed finishes (the optimiser step is never
    cut in half), the epoch-end checkpoint is not written for the partial epoch, and the last complete checkpoint
    of ``train(checkpoint_dir=...)`` stays in place. On exit the previous handler is restored; when SIGTERM was
    received (even after the last batch) a previous Python handler is called and the call ends with
    ``SystemExit(143)``, the status of a terminated process, instead of returning as if training had completed.
    With several processes (DDP), Lightning's own SIGTERM handling, which stops every rank at the same batch, does
    the stopping.

    Parameters
    ----------
    checkpoint
        The checkpoint file the run writes, named in the log message; ``None`` without checkpointing.
    """

    def __init__(self, checkpoint: str | os.PathLike | None = None):
        self.checkpoint = None if checkpoint is None else Path(checkpoint)
        self.received = False
        self._previous: Any = None
        self._installed = False

    # ---------------------------------------------------------------- signal handling
    def _handler(self, signum: int, frame: Any) -> None:
        self.received = True

    def __enter__(self) -> StopOnSigterm:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGTERM)
            if previous is not signal.SIG_IGN:
                self._previous = previous
                signal.signal(signal.SIGTERM, self._handler)
                self._installed = True
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._installed:
            signal.signal(signal.SIGTERM, self._previous if self._previous is not None else signal.SIG_DFL)
            self._installed = False
        if not self.received:
            return
        where = f"; the last complete checkpoint is {self.checkpoint}" if self.checkpoint is not None else ""
        stopped = "training stopped at a batch boundary" if exc_type is not None else "training had ended"
        logger.warning(f"SIGTERM received: {stopped}{where}")
        if callable(self._previous):
            self._previous(signal.SIGTERM, None)
        raise SystemExit(128 + signal.SIGTERM) from exc

    def __getstate__(self) -> dict[str, Any]:
        # the previous handler may be a lambda or a bound method: it stays in the process that installed it
        return {**self.__dict__, "_previous": None, "_installed": False}

    # ---------------------------------------------------------------- batch boundaries
    def _check(self, trainer: pl.Trainer) -> None:
        # with several processes, Lightning's own SIGTERM handling stops every rank at the same batch (it broadcasts
        # the signal); a rank stopping alone would leave the others waiting in a collective
        if self.received and trainer.world_size == 1:
            raise _Terminated(128 + signal.SIGTERM)

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer)

    def on_validation_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer)

    def on_validation_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any) -> None:
        self._check(trainer)


def resumable_train_kwargs(checkpoint_dir: str | os.PathLike, resume: bool, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The ``train`` keyword arguments that checkpoint every epoch into ``checkpoint_dir`` (and resume from it).

    The checkpoint is ``<checkpoint_dir>/last.ckpt``, or ``last-stage<k>.ckpt`` for a training plan with a ``stage``
    (scPaLM), so the stages of one ``train()`` call do not overwrite each other.
    """
    kwargs = dict(kwargs)
    if kwargs.get("ckpt_path") is not None and resume:
        msg = "Pass either `resume=True` (continue from `checkpoint_dir`) or `ckpt_path=`, not both."
        raise ValueError(msg)
    path = checkpoint_path(checkpoint_dir, kwargs.get("plan_kwargs"))
    if resume:
        if path.is_file():
            kwargs["ckpt_path"] = str(path)
            logger.info(f"resuming training from {path}")
        else:
            logger.info(f"no checkpoint at {path}; training from the start")
    callbacks = list(kwargs.pop("callbacks", None) or [])
    kwargs["callbacks"] = [*callbacks, EpochSeeder(batch_size=kwargs.get("batch_size")), EpochCheckpoint(path)]
    return kwargs


def checkpoint_path(checkpoint_dir: str | os.PathLike, plan_kwargs: dict | None = None) -> Path:
    """``<checkpoint_dir>/last.ckpt``, or ``last-stage<k>.ckpt`` for a training plan with a ``stage`` (scPaLM)."""
    stage = (plan_kwargs or {}).get("stage")
    name = CHECKPOINT_NAME if stage is None else f"{CHECKPOINT_NAME}-stage{stage}"
    return Path(checkpoint_dir).expanduser() / f"{name}.ckpt"


def checkpoint_batch_size(checkpoint_dir: str | os.PathLike, plan_kwargs: dict | None = None) -> int | None:
    """The training batch size stored in the checkpoint of ``checkpoint_dir``, or ``None`` (none, or not stored).

    The checkpoint is memory-mapped, not read, and unpickled with ``weights_only=True`` (tensors and plain containers
    only), so nothing in it can run code.
    """
    path = checkpoint_path(checkpoint_dir, plan_kwargs)
    if not path.is_file():
        return None
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - Lightning reports an unreadable checkpoint when resuming
        logger.debug(f"no batch size read from {path} ({type(err).__name__}: {err})")
        return None
    state = (ckpt.get("callbacks") or {}) if isinstance(ckpt, dict) else {}
    for key, value in state.items():
        if str(key).startswith(EpochSeeder.__qualname__) and isinstance(value, dict) and value.get("batch_size"):
            return int(value["batch_size"])
    return None
