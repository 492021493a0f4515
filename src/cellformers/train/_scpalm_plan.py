"""Two-stage training plan of scPaLM: stage-specific learning rate and freezing."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from ._plan import MaskedModelingTrainingPlan

if TYPE_CHECKING:
    from scvi.module.base import BaseModuleClass

#: AdamW learning rates of appendix B.1: stage 1 (pathway encoder and quantizer), stage 2 (cell aggregation).
SCPALM_STAGE_LR = {1: 1e-3, 2: 5e-4}


class ScPaLMTrainingPlan(MaskedModelingTrainingPlan):
    """Training plan for one stage of :class:`~cellformers.model.ScPaLM` (scPaLM :cite:p:`scPaLM`, appendix B.1).

    Puts the module in the given stage with :meth:`~cellformers.module.ScPaLMModule.set_stage`: in stage 2 the
    embedding, pathway encoder, quantizer and stage-1 decoder are frozen (no gradient, eval mode) and only the cell
    token, mask token, cell encoder and cell decoder are optimised. The optimiser (AdamW) only sees trainable
    parameters.

    Parameters
    ----------
    module
        A :class:`~cellformers.module.ScPaLMModule`.
    stage
        ``1`` (genetic pathway learning) or ``2`` (cell information aggregation).
    lr
        Learning rate; ``None`` uses the paper's: ``1e-3`` in stage 1, ``5e-4`` in stage 2.
    lr_scheduler
        ``"constant"`` (default: appendix B.1 gives a fixed learning rate and no schedule), ``"warmup_cosine"`` or
        ``"step"`` (see :class:`~cellformers.train.MaskedModelingTrainingPlan`).
    warmup_steps
        Linear warmup steps (``None``: ``warmup_ratio`` of the steps).
    **kwargs
        Passed to :class:`~cellformers.train.MaskedModelingTrainingPlan` (schedule, weight decay, …).

    Examples
    --------
    ``ScPaLM.train`` runs one plan per stage:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScPaLM.setup_anndata(adata)
    >>> model = cf.model.ScPaLM(adata, preset="tiny")
    >>> model.train(stage=1, max_epochs=1, enable_progress_bar=False)
    >>> n_params = sum(1 for p in model.module.parameters())
    >>> plan = cf.train.ScPaLMTrainingPlan(model.module, stage=2)  # freezes the stage-1 parts
    >>> model.module.stage, sum(p.requires_grad for p in model.module.parameters()) < n_params
    (2, True)
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        stage: Literal[1, 2] = 1,
        lr: float | None = None,
        lr_scheduler: Literal["constant", "warmup_cosine", "step"] = "constant",
        warmup_steps: int | None = 0,
        **kwargs,
    ):
        if stage not in (1, 2):
            msg = f"`stage` must be 1 or 2, got {stage!r}."
            raise ValueError(msg)
        if stage == 2 and not bool(module.trained_stages[0]):
            msg = "Stage 2 needs a trained stage 1 (its encoder and quantizer are frozen); run `train(stage=1)` first."
            raise ValueError(msg)
        module.set_stage(stage)
        super().__init__(
            module,
            lr=SCPALM_STAGE_LR[stage] if lr is None else lr,
            lr_scheduler=lr_scheduler,
            warmup_steps=warmup_steps,
            **kwargs,
        )
        self.stage = stage

    def on_train_start(self) -> None:
        """Put the module in this plan's stage and in training mode; set the quantizer's warm-up (``vq_warmup``).

        Lightning (>= 2.2) keeps the train/eval mode modules have when ``fit`` starts, and scvi-tools leaves a
        trained module in eval mode, so a second ``train`` call would otherwise run in eval mode.
        """
        super().on_train_start()
        self.module.set_stage(self.stage)
        self.module.train()
        vq = self.module.quantizer
        if self.stage == 1 and getattr(self.module, "vq_warmup", 0) > 0 and not bool(vq.initialized):
            # warm-up without quantization for a fraction of this training's steps, then k-means codebook
            total = int(self.trainer.estimated_stepping_batches)
            vq.warmup_steps = int(vq.n_calls) + max(1, round(self.module.vq_warmup * total))

    def on_train_end(self) -> None:
        """Record that this stage has been trained."""
        super().on_train_end()
        vq = self.module.quantizer
        if self.stage == 1 and not bool(vq.initialized):  # stopped during the warm-up: initialise the codebook now
            vq._kmeans_init()
        self.module.trained_stages[self.stage - 1] = True
