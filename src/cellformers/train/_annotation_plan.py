"""Training plan of cell-type annotation: a classifier head on a model's cell embedding, with model selection."""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Literal

import lightning.pytorch as pl
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Sampler

from cellformers.metrics import classification_metrics

from ._plan import cosine_decay

if TYPE_CHECKING:
    from collections.abc import Iterator

    from torch import nn
    from torch.utils.data import DataLoader

logger = logging.getLogger(__name__)

__all__ = ["AnnotationTrainingPlan", "LabelledCells", "LabelledLoaders", "SeededBatchSampler", "class_probabilities"]

#: Batch key of the precomputed cell embeddings (frozen backbone).
FEATURES_KEY = "features"
#: Batch key of the integer cell-type codes.
LABELS_KEY = "cell_type"


def class_probabilities(logits: np.ndarray, n_classes: int) -> np.ndarray:
    """Softmax of ``logits`` in float64, returned as float32 ``(n_cells, n_classes)``.

    Validation (model selection) and prediction both go through this, so the history's validation scores and the
    metrics of the kept head are computed the same way.
    """
    logits = np.asarray(logits, dtype=np.float64).reshape(-1, n_classes)
    logits = logits - logits.max(1, keepdims=True)
    p = np.exp(logits)
    return (p / p.sum(1, keepdims=True)).astype(np.float32)


class SeededBatchSampler(Sampler[np.ndarray]):
    """Minibatches of ``positions`` in a new seeded order every epoch, each minibatch in ascending order.

    One generator is drawn from for the whole training, so epoch ``e`` of two trainings with the same seed sees the
    same minibatches whatever the global torch state. The ascending order within a minibatch is what backed
    AnnData (h5py) requires.

    Parameters
    ----------
    positions
        Dataset positions to draw from.
    batch_size
        Positions per minibatch (the last one may be smaller).
    seed
        Seed of the generator.

    Examples
    --------
    >>> from cellformers.train._annotation_plan import SeededBatchSampler
    >>> sampler = SeededBatchSampler([0, 1, 2, 3, 4], batch_size=2, seed=0)
    >>> len(sampler), sorted(int(i) for batch in sampler for i in batch)
    (3, [0, 1, 2, 3, 4])
    """

    def __init__(self, positions: np.ndarray, batch_size: int, seed: int):
        self.positions = np.asarray(positions, dtype=np.int64)
        self.batch_size = int(batch_size)
        self._rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 7207])

    def __len__(self) -> int:
        return -(-self.positions.size // self.batch_size)

    def __iter__(self) -> Iterator[np.ndarray]:
        order = self.positions[self._rng.permutation(self.positions.size)]
        for i in range(0, order.size, self.batch_size):
            yield np.sort(order[i : i + self.batch_size])


class LabelledCells(Dataset):
    """Minibatches of cells with their cell-type codes, indexed by arrays of cell positions.

    Parameters
    ----------
    cells
        Either a tensor of precomputed cell embeddings ``(n_cells, d)`` (frozen backbone: batches hold them under
        ``"features"``), or scvi-tools' :class:`~scvi.data.AnnTorchDataset` of the model's registered fields
        (fine-tuned backbone: batches hold those tensors).
    labels
        Cell-type code of each cell (``-1`` for unlabelled cells, which the caller never samples).
    """

    def __init__(self, cells: torch.Tensor | Dataset, labels: np.ndarray):
        self.cells = cells
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __getitem__(self, positions: np.ndarray) -> dict[str, torch.Tensor]:
        positions = np.asarray(positions, dtype=np.int64)
        if isinstance(self.cells, torch.Tensor):
            batch = {FEATURES_KEY: self.cells[torch.from_numpy(positions)]}
        else:  # scvi-tools' dataset returns NumPy arrays of the registered fields
            batch = {k: torch.as_tensor(v) for k, v in self.cells[positions].items()}
        batch[LABELS_KEY] = self.labels[torch.from_numpy(positions)]
        return batch


class LabelledLoaders(pl.LightningDataModule):
    """The training and (optional) validation loaders of an annotation run, as the data module ``model.train`` takes.

    Parameters
    ----------
    train
        Loader of the training minibatches.
    validation
        Loader of the validation minibatches, or ``None`` (no validation: the run is given
        ``check_val_every_n_epoch=None`` and the loader is empty).
    """

    def __init__(self, train: DataLoader, validation: DataLoader | None = None):
        super().__init__()
        self._train, self._validation = train, validation

    def train_dataloader(self) -> DataLoader:
        return self._train

    def val_dataloader(self) -> DataLoader | list:
        return [] if self._validation is None else self._validation


class AnnotationTrainingPlan(pl.LightningModule):
    """Lightning training plan of a cell-type classifier head, modelled on :class:`scvi.train.ClassifierTrainingPlan`.

    The head (:class:`~cellformers.module.CellTypeClassifier`) is trained with cross-entropy on precomputed cell
    embeddings (frozen backbone) or on the backbone's differentiable ``cell_embedding`` (fine-tuned backbone, which
    then stays in evaluation mode: no dropout, no statistic updates, so training sees the features prediction
    sees). AdamW over the head (``lr``) and the backbone (``backbone_lr``), both decayed by a per-step cosine to
    ``min_lr_ratio`` of their peak. After every validation epoch the head is scored on the validation cells and the
    weights of the best epoch are kept (restored when training ends); ``early_stopping_patience`` stops training
    after that many epochs without improvement.

    Parameters
    ----------
    head
        The classifier head.
    backbone
        The model's module to fine-tune with the head (it needs a ``cell_embedding``); ``None`` trains the head on
        the ``"features"`` of the batches.
    lr
        Peak learning rate of the head.
    backbone_lr
        Peak learning rate of the backbone.
    weight_decay
        AdamW weight decay.
    min_lr_ratio
        Final learning rate of the cosine schedule, as a fraction of the peak.
    class_weights
        Per-class weights of the cross-entropy (``None``: unweighted).
    selection_metric
        ``"macro_f1"`` (ties broken by the loss) or ``"loss"`` (ties broken by macro-F1), on the validation cells.
    early_stopping_patience
        Stop after this many validation epochs without improvement; ``None`` runs all epochs.
    select_start
        Also score the weights training starts from (Lightning's sanity check over all validation batches), as
        candidate epoch ``-1``: a warm-started head is then kept unless training beats it on validation.

    Examples
    --------
    >>> import lightning.pytorch as pl
    >>> import numpy as np
    >>> import torch
    >>> from torch.utils.data import DataLoader
    >>> import cellformers as cf
    >>> from cellformers.train._annotation_plan import LabelledCells, SeededBatchSampler
    >>> y = np.repeat([0, 1], 20)
    >>> x = torch.randn(40, 4) + 3 * torch.from_numpy(y)[:, None]
    >>> cells = LabelledCells(x, y)
    >>> train = DataLoader(cells, sampler=SeededBatchSampler(np.arange(0, 40, 2), 8, seed=0), batch_size=None)
    >>> val = DataLoader(cells, sampler=[np.arange(1, 40, 2)], batch_size=None)
    >>> plan = cf.train.AnnotationTrainingPlan(cf.module.CellTypeClassifier(4, 2), lr=0.1)
    >>> trainer = pl.Trainer(
    ...     max_epochs=5,
    ...     accelerator="cpu",
    ...     logger=False,
    ...     enable_checkpointing=False,
    ...     enable_progress_bar=False,
    ...     enable_model_summary=False,
    ... )
    >>> trainer.fit(plan, train, val)
    >>> list(plan.history.columns)
    ['epoch', 'train_loss', 'validation_loss', 'validation_macro_f1', 'validation_accuracy']
    >>> bool(plan.history.loc[plan.best_epoch, "validation_macro_f1"] == plan.history["validation_macro_f1"].max())
    True
    """

    def __init__(
        self,
        head: nn.Module,
        backbone: nn.Module | None = None,
        *,
        lr: float = 1e-2,
        backbone_lr: float = 1e-4,
        weight_decay: float = 0.01,
        min_lr_ratio: float = 0.05,
        class_weights: torch.Tensor | None = None,
        selection_metric: Literal["macro_f1", "loss"] = "macro_f1",
        early_stopping_patience: int | None = None,
        select_start: bool = False,
    ):
        if selection_metric not in ("macro_f1", "loss"):
            msg = f"`selection_metric` must be 'macro_f1' or 'loss', got {selection_metric!r}."
            raise ValueError(msg)
        if backbone is not None and not callable(getattr(backbone, "cell_embedding", None)):
            msg = f"{type(backbone).__name__} has no `cell_embedding`; it cannot be fine-tuned with a classifier head."
            raise NotImplementedError(msg)
        super().__init__()
        self.head = head
        self.backbone = backbone
        self.lr, self.backbone_lr = float(lr), float(backbone_lr)
        self.weight_decay = float(weight_decay)
        self.min_lr_ratio = float(min_lr_ratio)
        self.register_buffer("class_weights", None if class_weights is None else torch.as_tensor(class_weights))
        self.selection_metric = selection_metric
        self.patience = early_stopping_patience
        self.select_start = bool(select_start)
        #: Epoch (0-based; ``-1``: the starting weights) whose weights are kept.
        self.best_epoch = 0
        self._rows: list[dict[str, float]] = []
        self._best: tuple[float, float] | None = None
        self._best_state: dict[str, dict[str, torch.Tensor]] | None = None
        self._stale = 0
        self._outputs: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._validation: dict[str, float] | None = None
        self._loss_sum = torch.zeros((), dtype=torch.float64)
        self._n_cells = 0

    @property
    def history(self) -> pd.DataFrame:
        """One row per epoch: ``epoch``, ``train_loss`` and, with validation cells, ``validation_loss``,
        ``validation_macro_f1`` and ``validation_accuracy``.

        Kept in float64 by the plan: Lightning's logged values are float32, and model selection compares them with
        metrics computed in float64.
        """  # noqa: D205
        return pd.DataFrame(self._rows)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits ``(n_cells, n_classes)`` of the cells of ``batch``."""
        if self.backbone is None:
            return self.head(batch[FEATURES_KEY])
        return self.head(self.backbone.cell_embedding(batch))

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        """Head in training mode, backbone in evaluation mode; reset the epoch's loss sum."""
        self.head.train()
        if self.backbone is not None:
            self.backbone.eval()
        self._loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        self._n_cells = 0
        self._validation = None

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Cross-entropy of the head's logits (in float32 whatever the autocast)."""
        y = batch[LABELS_KEY]
        loss = F.cross_entropy(self(batch).float(), y, weight=self.class_weights)
        n = int(y.shape[0])
        self._loss_sum = self._loss_sum + loss.detach().double() * n
        self._n_cells += n
        self.log("train_loss", loss.detach(), on_step=False, on_epoch=True, prog_bar=True, batch_size=n)
        return loss

    def configure_optimizers(self):
        """AdamW over the head and the backbone (two learning rates), per-step cosine decay of both."""
        groups = [{"params": list(self.head.parameters()), "lr": self.lr}]
        if self.backbone is not None:
            groups.append({"params": list(self.backbone.parameters()), "lr": self.backbone_lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        total = max(1, int(self.trainer.estimated_stepping_batches))
        floor = self.min_lr_ratio
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: cosine_decay(step / total, floor))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_train_epoch_end(self) -> None:
        """Record the epoch's row, select on validation and stop early after ``early_stopping_patience`` epochs."""
        epoch = int(self.current_epoch)
        row = {"epoch": epoch, "train_loss": float(self._loss_sum) / max(1, self._n_cells)}
        if self._validation is None:
            self.best_epoch = epoch  # no validation: the last epoch is kept
        else:
            row.update(self._validation)
            if self._consider(row, epoch):
                self._stale = 0
            else:
                self._stale += 1
            logger.debug(
                f"annotation epoch {epoch}: train loss {row['train_loss']:.4f}, validation loss "
                f"{row['validation_loss']:.4f}, macro-F1 {row['validation_macro_f1']:.3f}"
            )
        self._rows.append(row)
        if self.patience is not None and self._stale >= self.patience:
            logger.info(f"annotation: early stop after epoch {epoch} (best epoch {self.best_epoch})")
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        """Restore the weights of the best epoch."""
        if self._best_state is not None:
            self.head.load_state_dict(self._best_state["head"])
            if "backbone" in self._best_state:
                self.backbone.load_state_dict(self._best_state["backbone"])
        if self._best is None:
            logger.warning("annotation: no validation cells, so the last epoch is kept (no model selection)")

    # ------------------------------------------------------------------ validation and model selection
    def on_validation_epoch_start(self) -> None:
        """Reset the collected logits."""
        self._outputs = []

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Collect the logits of the validation cells."""
        if self.backbone is None:
            # the head alone on cached embeddings runs in float32, as prediction from the same embeddings does
            with torch.autocast(self.device.type, enabled=False):
                logits = self.head(batch[FEATURES_KEY].float())
        else:
            logits = self(batch)
        self._outputs.append((logits.detach().float().cpu(), batch[LABELS_KEY].cpu()))

    def on_validation_epoch_end(self) -> None:
        """Score the epoch: validation loss, macro-F1 and accuracy (``-1``: the starting weights)."""
        if not self._outputs:
            return
        logits = torch.cat([o[0] for o in self._outputs]).numpy()
        y = torch.cat([o[1] for o in self._outputs]).numpy()
        self._outputs = []
        probs = class_probabilities(logits, self.head.n_classes)
        p_true = np.clip(probs[np.arange(y.size), y], 1e-12, None)
        m = classification_metrics(y.astype(str), probs.argmax(1).astype(str))
        scores = {
            "validation_loss": float(-np.log(p_true).mean()),
            "validation_macro_f1": m["macro_f1"],
            "validation_accuracy": m["accuracy"],
        }
        if self.trainer.sanity_checking:  # Lightning logs nothing here; the start weights are candidate -1
            if self.select_start:
                self._consider(scores, -1)
            return
        self._validation = scores
        for key, value in scores.items():
            self.log(key, value, on_epoch=True, prog_bar=key == "validation_macro_f1")

    def _score(self, scores: dict[str, float]) -> tuple[float, float]:
        if self.selection_metric == "macro_f1":
            return (-scores["validation_macro_f1"], scores["validation_loss"])
        return (scores["validation_loss"], -scores["validation_macro_f1"])

    def _consider(self, scores: dict[str, float], epoch: int) -> bool:
        """Keep the current weights when they beat the best so far; return whether they did."""
        score = self._score(scores)
        if self._best is not None and not score < self._best:
            return False
        self._best, self.best_epoch = score, epoch
        state = {"head": copy.deepcopy({k: v.detach().cpu() for k, v in self.head.state_dict().items()})}
        if self.backbone is not None:
            state["backbone"] = {k: v.detach().cpu().clone() for k, v in self.backbone.state_dict().items()}
        self._best_state = state
        return True
