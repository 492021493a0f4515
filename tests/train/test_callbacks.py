"""scFormer's training callbacks, in cellformers.train (issue 17, item 1)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from cellformers.train._callbacks import DarRamp, EcsWarmup, KeepBestEpoch


def _pl_module():
    module = nn.Linear(2, 1)
    module.ecs_active = True
    module.discriminator = SimpleNamespace(reverse=SimpleNamespace(lambda_=2.0))
    return SimpleNamespace(module=module)


def test_keep_best_epoch_restores_the_lowest_validation_epoch():
    pl_module = _pl_module()
    keep = KeepBestEpoch("mgm_loss_validation")
    weights = []
    for epoch, loss in enumerate([3.0, 1.0, 2.0]):
        with torch.no_grad():
            pl_module.module.weight.fill_(float(epoch))
        weights.append(pl_module.module.weight.detach().clone())
        trainer = SimpleNamespace(
            sanity_checking=False, current_epoch=epoch, callback_metrics={"mgm_loss_validation": torch.tensor(loss)}
        )
        keep.on_validation_epoch_end(trainer, pl_module)
    keep.on_train_end(trainer, pl_module)
    assert (keep.epoch, keep.best) == (1, 1.0)
    torch.testing.assert_close(pl_module.module.weight, weights[1])
    # checkpoints written while the callback was scFormer's private `_KeepBest` keep resuming with their best epoch
    assert keep.state_key == "_KeepBest"


def test_ecs_warmup_switches_ecs_on_after_its_epochs():
    pl_module, warmup = _pl_module(), EcsWarmup(2)
    active = []
    for epoch in range(4):
        warmup.on_train_epoch_start(SimpleNamespace(current_epoch=epoch), pl_module)
        active.append(pl_module.module.ecs_active)
    assert active == [False, False, True, True]


@pytest.mark.parametrize("step", [0, 50, 100])
def test_dar_ramp_follows_ganins_schedule(step):
    pl_module, ramp = _pl_module(), DarRamp(gamma=10.0)
    trainer = SimpleNamespace(estimated_stepping_batches=100, global_step=step)
    ramp.on_train_start(trainer, pl_module)
    ramp.on_train_batch_start(trainer, pl_module, None, 0)
    p = step / 100
    assert pl_module.module.discriminator.reverse.lambda_ == pytest.approx(2.0 * (2 / (1 + math.exp(-10 * p)) - 1))
    ramp.on_train_end(trainer, pl_module)
    assert pl_module.module.discriminator.reverse.lambda_ == 2.0
