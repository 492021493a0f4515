"""The cell-type annotation training plan (issue 17, item 1): loss, model selection, early stopping, precision."""

from __future__ import annotations

import logging

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

import cellformers as cf
from cellformers.model.base._annotation import _lightning_precision
from cellformers.module import CellTypeClassifier
from cellformers.train import AnnotationTrainingPlan
from cellformers.train._annotation_plan import LabelledCells, SeededBatchSampler


def _cells(n=120, d=6, seed=0):
    """Three separable classes of embeddings; even positions train, odd positions validate."""
    g = torch.Generator().manual_seed(seed)
    y = np.arange(n) % 3
    x = torch.randn(n, d, generator=g) + 4.0 * torch.nn.functional.one_hot(torch.from_numpy(y), d).float()
    return LabelledCells(x, y), np.arange(0, n, 2), np.arange(1, n, 2)


def _fit(plan, cells, train_idx, val_idx=None, *, max_epochs=8, precision="32-true", sanity=0):
    trainer = pl.Trainer(
        max_epochs=max_epochs,
        accelerator="cpu",
        precision=precision,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=sanity,
    )
    train = DataLoader(cells, sampler=SeededBatchSampler(train_idx, 16, seed=0), batch_size=None)
    val = None if val_idx is None else DataLoader(cells, sampler=[val_idx], batch_size=None)
    trainer.fit(plan, train, val)
    return trainer


def _val_loss(head, cells, val_idx):
    batch = cells[val_idx]
    head.eval()
    with torch.no_grad():
        return float(nn.functional.cross_entropy(head(batch["features"]).double(), batch["cell_type"]))


def test_plan_lowers_its_loss_and_keeps_the_best_epoch():
    torch.manual_seed(0)
    cells, train_idx, val_idx = _cells()
    plan = AnnotationTrainingPlan(CellTypeClassifier(6, 3), lr=0.05, selection_metric="loss")
    _fit(plan, cells, train_idx, val_idx, max_epochs=10)
    hist = plan.history
    assert list(hist.columns) == [
        "epoch",
        "train_loss",
        "validation_loss",
        "validation_macro_f1",
        "validation_accuracy",
    ]
    assert hist["epoch"].tolist() == list(range(10))
    assert hist["train_loss"].dtype == np.float64
    assert hist["train_loss"].iloc[-1] < 0.5 * hist["train_loss"].iloc[0]
    assert hist["validation_macro_f1"].iloc[-1] > 0.9
    # the head holds the weights of the epoch with the lowest validation loss
    assert plan.best_epoch == int(hist["validation_loss"].idxmin())
    assert _val_loss(plan.head, cells, val_idx) == pytest.approx(hist["validation_loss"].min(), rel=1e-4)


def test_plan_stops_early_and_scores_the_start_weights():
    cells, train_idx, val_idx = _cells()
    # a learning rate too small to change any score: no epoch improves on the starting weights (epoch -1)
    plan = AnnotationTrainingPlan(
        CellTypeClassifier(6, 3), lr=1e-12, early_stopping_patience=2, select_start=True, selection_metric="loss"
    )
    start = {k: v.clone() for k, v in plan.head.state_dict().items()}
    _fit(plan, cells, train_idx, val_idx, max_epochs=20, sanity=-1)
    assert len(plan.history) == 2  # stopped after two epochs without improvement
    assert plan.best_epoch == -1
    for k, v in plan.head.state_dict().items():
        torch.testing.assert_close(v, start[k])


def test_plan_without_validation_keeps_the_last_epoch(caplog):
    cells, train_idx, _ = _cells()
    plan = AnnotationTrainingPlan(CellTypeClassifier(6, 3), lr=0.05)
    log = logging.getLogger("cellformers")  # the package logger does not propagate to the root logger
    log.addHandler(caplog.handler)
    try:
        _fit(plan, cells, train_idx, max_epochs=3)
    finally:
        log.removeHandler(caplog.handler)
    assert list(plan.history.columns) == ["epoch", "train_loss"]
    assert plan.best_epoch == 2
    assert "no validation cells" in caplog.text


def test_plan_trains_under_autocast_and_validates_cached_embeddings_in_float32():
    cells, train_idx, val_idx = _cells()
    head = CellTypeClassifier(6, 3)
    calls = []  # (training, dtype of the linear layer's output): the head itself always returns float32
    head.net[-1].register_forward_hook(lambda module, args, out: calls.append((module.training, out.dtype)))
    _fit(AnnotationTrainingPlan(head, lr=0.05), cells, train_idx, val_idx, max_epochs=1, precision="bf16-mixed")
    assert {dtype for training, dtype in calls if training} == {torch.bfloat16}
    assert {dtype for training, dtype in calls if not training} == {torch.float32}


class _Backbone(nn.Module):
    """A backbone with dropout whose ``cell_embedding`` records its training mode."""

    def __init__(self):
        super().__init__()
        self.linear, self.dropout, self.modes = nn.Linear(6, 4), nn.Dropout(0.5), []

    def cell_embedding(self, tensors):
        self.modes.append(self.training)
        return self.dropout(self.linear(tensors["features"]))


def test_plan_fine_tunes_a_backbone_in_evaluation_mode():
    cells, train_idx, val_idx = _cells()
    backbone = _Backbone()
    before = backbone.linear.weight.detach().clone()
    plan = AnnotationTrainingPlan(CellTypeClassifier(4, 3), backbone, lr=0.05, backbone_lr=0.05)
    _fit(plan, cells, train_idx, val_idx, max_epochs=2)
    assert backbone.modes
    assert not any(backbone.modes)
    assert not torch.equal(backbone.linear.weight, before)
    with pytest.raises(NotImplementedError, match="cell_embedding"):
        AnnotationTrainingPlan(CellTypeClassifier(4, 3), nn.Linear(6, 4))
    with pytest.raises(ValueError, match="selection_metric"):
        AnnotationTrainingPlan(CellTypeClassifier(4, 3), selection_metric="accuracy")


def test_seeded_batch_sampler():
    positions = np.arange(10, 33)
    a, b = SeededBatchSampler(positions, 5, seed=3), SeededBatchSampler(positions, 5, seed=3)
    epochs_a, epochs_b = [list(a) for _ in range(2)], [list(b) for _ in range(2)]
    for batches_a, batches_b in zip(epochs_a, epochs_b, strict=True):
        assert len(batches_a) == len(a) == 5
        np.testing.assert_array_equal(np.concatenate(batches_a), np.concatenate(batches_b))
        np.testing.assert_array_equal(np.sort(np.concatenate(batches_a)), positions)
        assert all((np.diff(batch) > 0).all() for batch in batches_a)
    assert not np.array_equal(np.concatenate(epochs_a[0]), np.concatenate(epochs_a[1]))


@pytest.mark.parametrize(
    ("precision", "setting", "expected"),
    [
        (None, "32", "32-true"),
        (None, "bf16-mixed", "bf16-mixed"),
        ("bf16", "32", "bf16-mixed"),
        ("32", "auto", "32-true"),
    ],
)
def test_lightning_precision_follows_settings(monkeypatch, precision, setting, expected):
    monkeypatch.setattr(cf.settings, "precision", setting)
    assert _lightning_precision(precision, torch.device("cpu")) == expected


def test_train_annotator_runs_the_plan_under_the_settings(monkeypatch):
    """train_annotator runs through scvi-tools' runner with model.train's precision and progress bar; history is the plan's."""
    import scvi.train

    adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    seen = []

    class Trainer(scvi.train.Trainer):
        def __init__(self, **kwargs):
            seen.append(kwargs)
            super().__init__(**kwargs)

        def fit(self, model, *args, **kwargs):
            seen[-1]["plan"] = model
            super().fit(model, *args, **kwargs)

    monkeypatch.setattr(scvi.train.TrainRunner, "_trainer_cls", Trainer)
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    ann = model.train_annotator("labels", max_epochs=2)
    assert seen[0]["precision"] == "32-true"  # the tests' settings.precision
    assert seen[0]["enable_progress_bar"] is False
    assert isinstance(seen[0]["plan"], AnnotationTrainingPlan)
    assert ann.history.equals(seen[0]["plan"].history)
    model.train_annotator("labels", max_epochs=1, precision="bf16-mixed")
    assert seen[1]["precision"] == "bf16-mixed"
