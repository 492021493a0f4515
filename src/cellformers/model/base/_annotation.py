"""Cell-type annotation by fine-tuning a classifier head on a model's cell embedding (shared by all models)."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from natsort import natsorted

from cellformers._exceptions import InvalidLabelsError
from cellformers._settings import settings
from cellformers._utils import resolve_precision
from cellformers._utils._validation import check_batch_size
from cellformers.metrics import classification_metrics
from cellformers.train._annotation_plan import class_probabilities

from ._annotator import SPLIT_NAMES, CellTypeAnnotator, check_fractions, read_labels, stratified_split

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from cellformers.module import CellTypeClassifier

logger = logging.getLogger(__name__)

Freeze = Literal["encoder", "none"]
SelectionMetric = Literal["macro_f1", "loss"]


def _check_training_precision(precision: str | None) -> None:
    if precision is None or str(precision) in ("auto", "32", "32-true", "bf16", "bf16-mixed", "bf16-true"):
        return
    msg = f"`precision` must be None, 'auto', '32' or 'bf16-mixed' for fine-tuning, got {precision!r}."
    raise ValueError(msg)


class AnnotationMixin:
    """Cell-type annotation by fine-tuning for :class:`~cellformers.model.CellformersModel`.

    A classifier head (:class:`~cellformers.module.CellTypeClassifier`) is trained on the differentiable cell
    embedding of the model's module (``module.cell_embedding``): xTrimoGene's max-pooled encoder outputs (App. 8.1),
    scFormer's ``<cls>`` output, scPaLM's ``h_C``.
    """

    @property
    def annotator_(self) -> CellTypeAnnotator | None:
        """The fitted cell-type classifier (set by :meth:`train_annotator`; ``None`` before)."""
        return getattr(self, "_annotator", None)

    @annotator_.setter
    def annotator_(self, value: CellTypeAnnotator | dict | None) -> None:
        # `load` sets the plain-data form written by `save` (see `_get_user_attributes`)
        self._annotator = CellTypeAnnotator.from_dict(value) if isinstance(value, dict) else value

    def _get_user_attributes(self):
        """scvi-tools' saved attributes, with the classifier as plain data.

        Model files are read back by a restricted unpickler that accepts no cellformers class but the vocabulary.
        """
        attributes = super()._get_user_attributes()
        return [(k, v.to_dict() if isinstance(v, CellTypeAnnotator) else v) for k, v in attributes]

    def train_annotator(
        self,
        labels_key: str,
        adata: AnnData | None = None,
        *,
        freeze: Freeze = "encoder",
        split: Sequence[float] = (0.8, 0.1, 0.1),
        max_epochs: int | None = None,
        lr: float = 1e-2,
        backbone_lr: float = 1e-4,
        weight_decay: float = 0.01,
        batch_size: int = 64,
        precision: str | None = None,
        seed: int | None = None,
        selection_metric: SelectionMetric = "macro_f1",
        early_stopping_patience: int | None = None,
        n_hidden: int | None = None,
        dropout_rate: float = 0.0,
        class_weight: Literal["balanced"] | None = None,
        warm_start: bool = True,
    ) -> CellTypeAnnotator:
        """Fine-tune a cell-type classifier on the model's cell embedding.

        The labelled cells are split (seeded, stratified, ``stratified_split``) into train / validation / test
        (8:1:1, xTrimoGene App. 8.1); the head is trained on the training cells with cross-entropy (AdamW, cosine
        decay of the learning rates; :class:`~cellformers.train.AnnotationTrainingPlan` run by a Lightning trainer
        with the precision and progress bar of :meth:`train`), evaluated on the validation cells after every epoch, and the weights of the
        best epoch are kept (model selection on validation). Macro-F1, macro-precision and accuracy on the test
        cells are in ``annotator.metrics["test"]``. Cells with a missing label (NaN) are in no part of the split;
        categories without any cell are ignored.

        With ``freeze="encoder"`` the backbone is frozen: its embeddings are computed once (evaluation mode, like
        ``get_latent_representation``) and only the head is trained, which is fast and leaves the model unchanged.
        With ``freeze="none"`` the backbone is fine-tuned with the head and **its weights are updated in place**
        (``warm_start=True``, the default: after the head was first fitted on the frozen embeddings with the frozen
        head's epoch budget and model selection, so the fine-tuning starts from a working head and is kept only
        where it beats it on validation)
        (to those of the best epoch), so the model's embeddings change; the backbone runs in evaluation mode (no
        dropout, no codebook or batch-norm statistic updates, deterministic gene subsampling), so training sees the
        same features as prediction.

        Parameters
        ----------
        labels_key
            Column of ``adata.obs`` with the cell types.
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        freeze
            ``"encoder"``: train the head only; ``"none"``: fine-tune backbone and head.
        split
            Fractions ``(train, validation, test)``.
        max_epochs
            Epochs; ``None``: 50 with a frozen encoder (the embeddings are computed once, so epochs are cheap), 10
            otherwise.
        lr
            Peak learning rate of the head (its input is standardized, see
            :class:`~cellformers.module.CellTypeClassifier`).
        backbone_lr
            Peak learning rate of the backbone with ``freeze="none"`` (``1e-4``, as scGPT's fine-tuning).
        weight_decay
            AdamW weight decay.
        batch_size
            Cells per minibatch (also of the embedding passes).
        precision
            ``"bf16-mixed"`` (or ``"bf16"``) for bfloat16 autocast, ``"32"`` for float32; ``None``/``"auto"``:
            :attr:`cellformers.settings.precision` (bf16 where the hardware has bf16 units).
        seed
            Seed of the split, the head's initialisation and the minibatch order; ``None`` uses
            ``cellformers.settings.seed``.
        selection_metric
            Validation metric of model selection: ``"macro_f1"`` (ties broken by the loss) or ``"loss"``.
        early_stopping_patience
            Stop after this many epochs without improvement; ``None`` runs all epochs.
        n_hidden
            Hidden width of the head; ``None`` for a linear head (App. 8.1).
        dropout_rate
            Dropout of the head.
        class_weight
            ``"balanced"`` weighs the loss of each class by ``n_cells / (n_classes · n_class_cells)``.
        warm_start
            With ``freeze="none"``: fit the head on the frozen embeddings first (50 epochs, model selection on
            validation), then fine-tune backbone and head from there for ``max_epochs``; the kept weights are the
            best on validation of both phases (the warm start included). ``False`` fine-tunes a fresh head.

        Returns
        -------
        The fitted :class:`~cellformers.model.CellTypeAnnotator`, also stored as ``model.annotator_``.

        Examples
        --------
        >>> annotator = model.train_annotator("cell_type", precision="bf16-mixed")  # doctest: +SKIP
        >>> annotator.metrics["test"]["macro_f1"]  # doctest: +SKIP
        >>> model.predict_cell_types(query)  # doctest: +SKIP
        """
        from cellformers.module import CellTypeClassifier

        if freeze not in ("encoder", "none"):
            msg = f"`freeze` must be 'encoder' or 'none', got {freeze!r}."
            raise ValueError(msg)
        if selection_metric not in ("macro_f1", "loss"):
            msg = f"`selection_metric` must be 'macro_f1' or 'loss', got {selection_metric!r}."
            raise ValueError(msg)
        if class_weight not in (None, "balanced"):
            msg = f"`class_weight` must be None or 'balanced', got {class_weight!r}."
            raise ValueError(msg)
        if batch_size < 1:
            msg = f"`batch_size` must be a positive integer, got {batch_size}."
            raise ValueError(msg)
        if early_stopping_patience is not None and early_stopping_patience < 1:
            msg = f"`early_stopping_patience` must be a positive integer or None, got {early_stopping_patience}."
            raise ValueError(msg)
        _check_training_precision(precision)
        fractions = check_fractions(split)
        frozen = freeze == "encoder"
        max_epochs = (50 if frozen else 10) if max_epochs is None else int(max_epochs)
        if max_epochs < 1:
            msg = f"`max_epochs` must be a positive integer, got {max_epochs}."
            raise ValueError(msg)
        lr, backbone_lr = float(lr), float(backbone_lr)
        if lr <= 0 or backbone_lr <= 0:
            msg = f"`lr` and `backbone_lr` must be positive, got {lr} and {backbone_lr}."
            raise ValueError(msg)
        check_batch_size(batch_size)
        seed = settings.seed if seed is None else int(seed)
        self._check_annotation_ready()

        # labels are read before the AnnData is validated (registration may write into a new AnnData)
        labels = read_labels(self.adata if adata is None else adata, labels_key)
        known = np.array([lab is not None for lab in labels], dtype=bool)
        classes = natsorted(set(labels[known].tolist()))
        if len(classes) < 2:
            msg = (
                f"`labels_key={labels_key!r}` has {len(classes)} distinct label(s) among the labelled cells; at least "
                "two cell types are needed to train a classifier."
            )
            raise InvalidLabelsError(msg)
        code_of = {c: i for i, c in enumerate(classes)}
        y_all = np.full(labels.shape[0], -1, dtype=np.int64)
        y_all[known] = [code_of[lab] for lab in labels[known]]
        parts = stratified_split(labels, fractions, seed)
        train_idx, val_idx, test_idx = (parts[name] for name in SPLIT_NAMES)
        adata = self._validate_anndata(adata)
        module = self.module
        if not callable(getattr(module, "cell_embedding", None)):
            msg = f"{type(module).__name__} has no `cell_embedding`; it cannot be fine-tuned with a classifier head."
            raise NotImplementedError(msg)

        t0 = time.perf_counter()
        device = self.device
        weights = None
        if class_weight == "balanced":
            counts = np.bincount(y_all[train_idx], minlength=len(classes)).astype(np.float64)
            w = np.where(counts > 0, counts.sum() / (len(classes) * np.maximum(counts, 1)), 0.0)
            weights = torch.as_tensor(w, dtype=torch.float32, device=device)

        features = None
        labelled = np.sort(np.concatenate([train_idx, val_idx, test_idx]))
        warm = warm_start and not frozen
        if frozen or warm:
            emb = self._predict_batches(module.cell_embedding, adata, labelled, batch_size, precision)
            features = torch.zeros(labels.shape[0], emb.shape[1], dtype=torch.float32)
            features[torch.from_numpy(labelled)] = torch.from_numpy(emb)
            initial = features[torch.from_numpy(train_idx)]
        else:  # the pre-trained embeddings of the training cells, for the head's input standardization
            initial = torch.from_numpy(
                self._predict_batches(module.cell_embedding, adata, train_idx, batch_size, precision)
            )

        devices = [] if device.type == "cpu" else None
        fit = {
            "adata": adata,
            "y_all": y_all,
            "parts": (train_idx, val_idx),
            "lr": (lr, backbone_lr),
            "weight_decay": weight_decay,
            "batch_size": batch_size,
            "precision": precision,
            "seed": seed,
            "selection_metric": selection_metric,
            "patience": early_stopping_patience,
            "class_weights": weights,
        }
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            head = CellTypeClassifier(initial.shape[1], len(classes), n_hidden=n_hidden, dropout_rate=dropout_rate)
            head.fit_scaling(initial)
            head.to(device)
            if warm:  # phase 1: the frozen head, with the frozen head's budget and model selection
                head_best, history = self._fit_head(head, features=features, max_epochs=50, **fit)
                history.insert(0, "phase", "head")
                features = None
            best_epoch, phase_history = self._fit_head(
                head, features=features, max_epochs=max_epochs, select_start=warm, **fit
            )
            if warm:
                phase_history.insert(0, "phase", "full")
                offset = int(history["epoch"].max()) + 1
                phase_history["epoch"] += offset
                # epoch -1 of phase 2 is the warm start itself: then the head phase's best epoch is kept
                best_epoch = best_epoch + offset if best_epoch >= 0 else head_best
                history = pd.concat([history, phase_history], ignore_index=True)
            else:
                history = phase_history
        head.eval()
        metrics = {}
        for name, idx in (("validation", val_idx), ("test", test_idx)):
            if idx.size:
                probs = self._annotator_probabilities(adata, idx, batch_size, precision, features, head)
                pred = np.asarray(classes, dtype=object)[probs.argmax(1)]
                metrics[name] = classification_metrics(labels[idx], pred)
        annotator = CellTypeAnnotator(
            head=head,
            classes=list(classes),
            labels_key=labels_key,
            freeze=freeze,
            split={name: parts[name] for name in SPLIT_NAMES},
            n_obs=int(labels.shape[0]),
            best_epoch=best_epoch,
            history=history,
            metrics=metrics,
            train_time_s=time.perf_counter() - t0,
            params={
                "labels_key": labels_key,
                "freeze": freeze,
                "split": list(fractions),
                "max_epochs": max_epochs,
                "epochs_run": len(history),
                "lr": lr,
                "backbone_lr": backbone_lr if not frozen else 0.0,
                "weight_decay": float(weight_decay),
                "batch_size": int(batch_size),
                "precision": str(resolve_precision(precision, device, training=False)),
                "seed": seed,
                "selection_metric": selection_metric,
                "n_hidden": 0 if n_hidden is None else int(n_hidden),
                "dropout_rate": float(dropout_rate),
                "class_weight": class_weight or "none",
                "warm_start": bool(warm),
            },
        )
        self.annotator_ = annotator
        test = metrics.get("test")
        if test:
            logger.info(
                f"annotation head ({freeze=}): best epoch {best_epoch}, test macro-F1 {test['macro_f1']:.3f}, "
                f"macro-precision {test['macro_precision']:.3f} ({test['n_cells']} cells)"
            )
        return annotator

    def _check_annotation_ready(self) -> None:
        """Raise when the backbone cannot be fine-tuned yet (untrained); models with stages override it."""
        self._check_if_trained(warn=False)

    # ------------------------------------------------------------------ training
    def _fit_head(
        self,
        head: CellTypeClassifier,
        *,
        adata: AnnData,
        features: torch.Tensor | None,
        y_all: np.ndarray,
        parts: tuple[np.ndarray, np.ndarray],
        max_epochs: int,
        lr: tuple[float, float],
        weight_decay: float,
        batch_size: int,
        precision: str | None,
        seed: int,
        selection_metric: str,
        patience: int | None,
        class_weights: torch.Tensor | None,
        select_start: bool = False,
    ) -> tuple[int, pd.DataFrame]:
        """Train ``head`` (and the backbone when ``features`` is None) with :class:`~cellformers.train.AnnotationTrainingPlan`.

        The plan runs through ``model.train`` (``training_plan=``), so it gets its precision, progress bar and
        SIGTERM handling, and leaves the backbone's ``history_`` alone; the best epoch's weights are restored.
        Returns the kept epoch and the per-epoch history.
        """
        from torch.utils.data import DataLoader

        from cellformers.train import AnnotationTrainingPlan
        from cellformers.train._annotation_plan import LabelledCells, LabelledLoaders, SeededBatchSampler

        train_idx, val_idx = parts
        module = self.module
        device = self.device
        frozen = features is not None
        if frozen:
            cells = LabelledCells(features, y_all)
            # the batching of prediction from cached embeddings, so validation scores equal the kept head's metrics
            val_order, val_batch = val_idx, 4096
        else:
            cells = LabelledCells(self.get_anndata_manager(adata, required=True).create_torch_dataset(), y_all)
            val_order, val_batch = self._inference_order(adata, val_idx, batch_size), batch_size
        train_dl = DataLoader(cells, sampler=SeededBatchSampler(train_idx, batch_size, seed), batch_size=None)
        val_dl = None
        if val_idx.size:
            val_batches = [val_order[i : i + val_batch] for i in range(0, val_order.size, val_batch)]
            val_dl = DataLoader(cells, sampler=val_batches, batch_size=None)
        plan = AnnotationTrainingPlan(
            head,
            None if frozen else module,
            lr=lr[0],
            backbone_lr=lr[1],
            weight_decay=weight_decay,
            class_weights=class_weights,
            selection_metric=selection_metric,
            early_stopping_patience=patience,
            select_start=select_start,
        )
        accelerator, devices = _lightning_device(device)
        grad_flags = {p: p.requires_grad for p in module.parameters()}
        try:
            if not frozen:
                for p in module.parameters():
                    p.requires_grad_(True)
            with warnings.catch_warnings():
                # the fine-tuned backbone trains in evaluation mode on purpose (see `train_annotator`)
                warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
                # the shared `train` of every model (not a model's own override, which adds its pretext options)
                self._shared_train(
                    max_epochs,
                    training_plan=plan,
                    datamodule=LabelledLoaders(train_dl, val_dl),
                    accelerator=accelerator,
                    devices=devices,
                    precision=_lightning_precision(precision, device),
                    gradient_clip_val=1.0,
                    check_val_every_n_epoch=1 if val_dl is not None else None,
                    # the sanity check over all validation batches scores the starting weights (candidate epoch -1)
                    num_sanity_val_steps=-1 if select_start and val_dl is not None else 0,
                    log_every_n_steps=1,
                    enable_checkpointing=False,
                )
        finally:
            for p, flag in grad_flags.items():
                p.requires_grad_(flag)
            # Lightning moves the trained plan to the CPU when it tears down an accelerator
            module.to(device)
            head.to(device)
        return plan.best_epoch, plan.history

    def _annotator_probabilities(
        self,
        adata: AnnData,
        indices: np.ndarray,
        batch_size: int | None,
        precision: str | None,
        features: torch.Tensor | None = None,
        head: torch.nn.Module | None = None,
    ) -> np.ndarray:
        """Class probabilities ``(len(indices), n_classes)`` from cached features or a forward pass."""
        head = self.annotator_.head if head is None else head
        was_training = head.training
        head.eval()
        try:
            if features is not None:
                with torch.inference_mode():
                    logits = torch.cat(
                        [
                            head(features[indices[i : i + 4096]].to(self.device)).float().cpu()
                            for i in range(0, indices.size, 4096)
                        ]
                    ).numpy()
            else:
                logits = self._predict_batches(
                    lambda t: head(self.module.cell_embedding(t)), adata, indices, batch_size, precision
                )
        finally:
            head.train(was_training)
        return class_probabilities(logits, head.n_classes)

    # ------------------------------------------------------------------ prediction
    def predict_cell_types(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        soft: bool = False,
        precision: str | None = None,
    ) -> np.ndarray | pd.DataFrame:
        """Cell types predicted by the fine-tuned classifier (:meth:`train_annotator`).

        Parameters
        ----------
        adata
            AnnData set up like the training data (genes aligned to the model's); ``None`` uses the model's.
        indices
            Cells to predict; ``None`` for all.
        batch_size
            Minibatch size.
        soft
            Return the class probabilities instead of the labels.
        precision
            ``"bf16"`` for autocast, ``None`` for float32.

        Returns
        -------
        Array of predicted labels (``str``), or with ``soft=True`` a DataFrame of probabilities (cells × classes,
        indexed by cell name). Only the classes seen in training can be predicted.
        """
        if self.annotator_ is None:
            msg = "The model has no cell-type classifier: call `model.train_annotator(labels_key=...)` first."
            raise ValueError(msg)
        ann = self.annotator_
        check_batch_size(batch_size)  # before the AnnData is set up: a bad argument writes nothing
        ann.head.to(self.device)
        adata = self._validate_anndata(adata)
        idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices, dtype=np.int64)
        probs = self._annotator_probabilities(adata, idx, batch_size, precision)
        if soft:
            return pd.DataFrame(probs, index=adata.obs_names[idx], columns=pd.Index(ann.classes))
        return np.asarray(ann.classes, dtype=object)[probs.argmax(1)]


def _lightning_device(device: torch.device) -> tuple[str, int | list[int]]:
    """Lightning's ``accelerator`` and ``devices`` for the device the model is on."""
    if device.type == "cuda":
        return "gpu", [torch.cuda.current_device() if device.index is None else device.index]
    return device.type, 1


def _lightning_precision(precision: str | None, device: torch.device) -> str:
    """Lightning's precision for fine-tuning: ``"bf16-mixed"`` (autocast; the weights stay float32) or ``"32-true"``.

    ``None``/``"auto"`` resolve as in ``model.train`` (:func:`cellformers.train.resolve_precision`).
    """
    return "bf16-mixed" if str(resolve_precision(precision, device)).startswith("bf16") else "32-true"
