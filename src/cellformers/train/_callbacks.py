"""Lightning callbacks of scFormer's training: keep the best epoch, ECS warm-up, DAR gradient-reversal ramp."""

from __future__ import annotations

import copy
import logging
import math

from lightning.pytorch.callbacks import Callback

logger = logging.getLogger(__name__)

__all__ = ["DarRamp", "EcsWarmup", "KeepBestEpoch"]


class KeepBestEpoch(Callback):
    """Keep the module state with the lowest monitored validation metric and restore it when training ends."""

    def __init__(self, monitor: str):
        self.monitor = monitor
        self.best: float | None = None
        self.state: dict | None = None
        self.epoch: int | None = None

    def on_validation_epoch_end(self, trainer, pl_module):
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(self.monitor)
        if value is None:
            return
        value = float(value)
        if self.best is None or value < self.best:
            self.best, self.epoch = value, trainer.current_epoch
            self.state = copy.deepcopy({k: v.detach().cpu() for k, v in pl_module.module.state_dict().items()})

    @property
    def state_key(self) -> str:
        """Checkpoint key of the state: ``"_KeepBest"``, the class's earlier name, so older checkpoints resume."""
        return "_KeepBest"

    def state_dict(self) -> dict:
        """Kept in Lightning checkpoints, so a resumed run restores the best epoch of the whole run."""
        return {"best": self.best, "epoch": self.epoch, "state": self.state}

    def load_state_dict(self, state_dict: dict) -> None:
        self.best, self.epoch, self.state = state_dict["best"], state_dict["epoch"], state_dict["state"]

    def on_train_end(self, trainer, pl_module):
        if self.state is not None:
            pl_module.module.load_state_dict(self.state)
            logger.info(f"restored the epoch-{self.epoch} weights (best {self.monitor} = {self.best:.4f})")


class EcsWarmup(Callback):
    """Leave the ECS loss out of the objective for the first ``epochs`` epochs (it is still logged)."""

    def __init__(self, epochs: int):
        self.epochs = int(epochs)

    def on_train_epoch_start(self, trainer, pl_module):
        pl_module.module.ecs_active = trainer.current_epoch >= self.epochs

    def on_train_end(self, trainer, pl_module):
        pl_module.module.ecs_active = True


class DarRamp(Callback):
    """Ganin's schedule for the gradient-reversal scale: ``λ(p) = λ_max · (2 / (1 + exp(-γ p)) - 1)``.

    ``p`` is the fraction of training steps done (Ganin and Lempitsky 2015, γ = 10). The discriminator learns at full
    strength from the start, but the reversed gradient reaching the encoder grows from 0 to ``λ_max``, so the
    adversary does not scramble the embedding before the masked losses have shaped it.
    """

    def __init__(self, gamma: float = 10.0):
        self.gamma = float(gamma)
        self.lambda_max: float | None = None

    def on_train_start(self, trainer, pl_module):
        reverse = pl_module.module.discriminator.reverse
        self.lambda_max = reverse.lambda_ if self.lambda_max is None else self.lambda_max

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        total = max(1, int(trainer.estimated_stepping_batches))
        p = min(1.0, trainer.global_step / total)
        pl_module.module.discriminator.reverse.lambda_ = self.lambda_max * (
            2.0 / (1.0 + math.exp(-self.gamma * p)) - 1.0
        )

    def on_train_end(self, trainer, pl_module):
        pl_module.module.discriminator.reverse.lambda_ = self.lambda_max
