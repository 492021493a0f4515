"""Training plan shared by the masked-modelling models: AdamW, warmup + cosine or step decay, per-loss logging."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from scvi.train import TrainingPlan

if TYPE_CHECKING:
    from scvi.module.base import BaseModuleClass, LossOutput


def cosine_decay(progress: float, floor: float) -> float:
    """Cosine decay from 1 to ``floor`` over ``progress`` in ``[0, 1]`` (clipped): the learning-rate factor.

    Examples
    --------
    >>> from cellformers.train._plan import cosine_decay
    >>> cosine_decay(0.0, 0.05), cosine_decay(0.5, 0.05), cosine_decay(2.0, 0.05)
    (1.0, 0.525, 0.05)
    """
    progress = min(1.0, max(0.0, progress))
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


class MaskedModelingTrainingPlan(TrainingPlan):
    """Lightning training plan for cellformers modules.

    Differs from :class:`scvi.train.TrainingPlan` in the optimiser defaults (AdamW with the usual transformer
    epsilon instead of scVI's ``eps=0.01``), the learning-rate schedules transformers need, and in logging each loss
    term of the module's :class:`~scvi.module.base.LossOutput` (``extra_metrics``) instead of an ELBO.

    Parameters
    ----------
    module
        A cellformers module.
    optimizer
        ``"AdamW"`` (default) or ``"Adam"``.
    lr
        Peak learning rate.
    weight_decay
        Decoupled weight decay (AdamW) or L2 penalty (Adam).
    eps
        Optimiser epsilon.
    betas
        Adam betas.
    lr_scheduler
        ``"warmup_cosine"``: linear warmup over ``warmup_steps`` (or ``warmup_ratio`` of all steps) then cosine decay to
        ``min_lr_ratio * lr``; ``"step"``: multiply by ``step_gamma`` after every epoch (scFormer section 5);
        ``"constant"``: no schedule (warmup still applies if ``warmup_steps`` > 0).
    warmup_steps
        Number of optimiser steps of linear warmup. ``None`` uses ``warmup_ratio``.
    warmup_ratio
        Fraction of the total optimiser steps used for warmup when ``warmup_steps`` is ``None``.
    min_lr_ratio
        Final learning rate of the cosine schedule as a fraction of ``lr``.
    step_gamma
        Per-epoch decay factor of the ``"step"`` schedule.
    **kwargs
        Passed to :class:`scvi.train.TrainingPlan` (e.g. ``compile=True``); ``loss_kwargs`` reach ``module.loss``.

    Examples
    --------
    Models use it in ``train``; its options are passed as ``plan_kwargs``:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, plan_kwargs={"lr": 5e-4, "lr_scheduler": "constant"}, enable_progress_bar=False)
    >>> type(model.trainer.lightning_module).__name__
    'MaskedModelingTrainingPlan'

    It also runs under a plain Lightning ``Trainer``:

    >>> import lightning.pytorch as pl
    >>> plan = cf.train.MaskedModelingTrainingPlan(model.module, lr=1e-3)
    >>> splitter = cf.train.BatchGroupedDataSplitter(model.adata_manager, batch_size=16)
    >>> trainer = pl.Trainer(
    ...     max_epochs=1,
    ...     accelerator="cpu",
    ...     logger=False,
    ...     enable_checkpointing=False,
    ...     enable_progress_bar=False,
    ...     enable_model_summary=False,
    ... )
    >>> trainer.fit(plan, splitter)
    >>> type(trainer.optimizers[0]).__name__
    'AdamW'
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        optimizer: Literal["AdamW", "Adam"] = "AdamW",
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        eps: float = 1e-8,
        betas: tuple[float, float] = (0.9, 0.999),
        lr_scheduler: Literal["warmup_cosine", "step", "constant"] = "warmup_cosine",
        warmup_steps: int | None = None,
        warmup_ratio: float = 0.05,
        min_lr_ratio: float = 0.05,
        step_gamma: float = 0.9,
        **kwargs,
    ):
        if optimizer not in ("AdamW", "Adam"):
            msg = f"`optimizer` must be 'AdamW' or 'Adam', got {optimizer!r}."
            raise ValueError(msg)
        if lr_scheduler not in ("warmup_cosine", "step", "constant"):
            msg = f"`lr_scheduler` must be 'warmup_cosine', 'step' or 'constant', got {lr_scheduler!r}."
            raise ValueError(msg)
        super().__init__(module, optimizer=optimizer, lr=lr, weight_decay=weight_decay, eps=eps, **kwargs)
        self.betas = tuple(betas)
        self.lr_scheduler = lr_scheduler
        self.warmup_steps = warmup_steps
        self.warmup_ratio = warmup_ratio
        self.min_lr_ratio = min_lr_ratio
        self.step_gamma = step_gamma

    def on_train_start(self) -> None:
        """Put the module in training mode.

        After inference (``module.eval()``) a second ``train`` call would otherwise run without dropout and with
        frozen batch-norm statistics.
        """
        self.module.train()

    def _optimizer_creator_fn(self, optimizer_cls):
        return lambda params: optimizer_cls(
            params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, betas=self.betas
        )

    def _total_steps(self) -> int:
        try:
            total = int(self.trainer.estimated_stepping_batches)
        except (AttributeError, RuntimeError):
            total = 0
        return max(total, 1)

    def _lr_lambda(self):
        total = self._total_steps()
        warmup = self.warmup_steps if self.warmup_steps is not None else int(self.warmup_ratio * total)
        warmup = max(0, min(warmup, total - 1))
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        kind, gamma, floor = self.lr_scheduler, self.step_gamma, self.min_lr_ratio

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            if kind == "warmup_cosine":
                return cosine_decay((step - warmup) / max(1, total - warmup), floor)
            if kind == "step":
                return gamma ** (step // steps_per_epoch)
            return 1.0

        return factor

    def configure_optimizers(self):
        """AdamW/Adam over trainable parameters with a per-step learning-rate schedule."""
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = self.get_optimizer_creator()(params)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, self._lr_lambda())
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        """Log the learning rate at the end of the epoch (``history["lr"]``)."""
        optimizer = self.optimizers(use_pl_optimizer=False)
        optimizer = optimizer[0] if isinstance(optimizer, list) else optimizer
        self.log("lr", float(optimizer.param_groups[0]["lr"]), on_step=False, on_epoch=True)

    def on_validation_epoch_start(self) -> None:
        """Reset the sums behind ``trivial_ratio_validation``."""
        self._signal_sums = [0.0, 0.0]

    def on_validation_epoch_end(self) -> None:
        """Log ``trivial_ratio_validation``: the epoch's pretext loss over its trivial predictor's loss.

        Below 1 the model predicts the held-out cells better than a predictor that knows each gene's statistics and
        nothing about the cell; at or above 1 it has not learned anything cell-specific yet.
        """
        pretext, trivial = getattr(self, "_signal_sums", (0.0, 0.0))
        if trivial > 0 and not self.trainer.sanity_checking:
            self.log(
                "trivial_ratio_validation",
                pretext / trivial,
                on_step=False,
                on_epoch=True,
                sync_dist=self.use_sync_dist,
            )

    # no_grad, not inference_mode: with DDP (`sync_dist`), Lightning reduces the logged values in place at the end
    # of the epoch, outside inference mode, which fails on inference tensors
    @torch.no_grad()
    def compute_and_log_metrics(self, loss_output: LossOutput, metrics, mode: str):
        """Log the mean per-cell loss and every scalar in ``extra_metrics`` as ``<name>_<mode>``.

        Modules that score a pretext task return ``pretext_loss`` and, in evaluation, ``trivial_loss`` (the loss of
        the per-gene trivial predictor of the same target, :class:`~cellformers.nn.TrivialBaseline`); their ratio
        over the validation epoch is logged as ``trivial_ratio_validation``.
        """
        n = loss_output.n_obs_minibatch
        self.log(
            f"reconstruction_loss_{mode}",
            loss_output.reconstruction_loss_sum / max(n, 1),
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=n,
            sync_dist=self.use_sync_dist,
        )
        extra = loss_output.extra_metrics or {}
        if mode == "validation" and "pretext_loss" in extra and "trivial_loss" in extra:
            sums = getattr(self, "_signal_sums", None)
            if sums is not None:
                sums[0] += float(extra["pretext_loss"]) * n
                sums[1] += float(extra["trivial_loss"]) * n
        for key, value in extra.items():
            if isinstance(value, torch.Tensor):
                if value.ndim != 0:
                    continue
                value = value.detach().float()
            self.log(
                f"{key}_{mode}",
                value,
                on_step=self.on_step,
                on_epoch=self.on_epoch,
                batch_size=n,
                sync_dist=self.use_sync_dist,
            )
