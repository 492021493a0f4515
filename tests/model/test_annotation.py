from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cellformers import MissingKeyError
from cellformers.data import synthetic_counts
from cellformers.metrics import classification_metrics
from cellformers.model import CellTypeAnnotator, ScFormer, ScPaLM, XTrimoGene
from cellformers.model.base._annotator import read_labels, stratified_split
from cellformers.module import CellTypeClassifier

XTG_TINY = {
    "preset": "3M",
    "encoder_layers": 1,
    "encoder_heads": 2,
    "encoder_dim": 16,
    "encoder_ff": 32,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "decoder_dim": 8,
    "decoder_ff": 16,
}
SCF_TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16, "max_length": 32}
SCP_TINY = {
    "preset": "small",
    "n_hidden": 16,
    "n_layers": 1,
    "n_heads": 2,
    "n_intermediate": 32,
    "n_pathway_tokens": 8,
    "n_codes": 16,
    "n_value_hidden": 8,
    "n_gene_embedding": 8,
    "queue_size": 128,
    "n_pseudo_labels": 3,
    "refit_interval": 2,
}
TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "batch_size": 64}


def _data(n_cells=300, seed=0):
    """Synthetic counts where each of the 3 labels also expresses its own block of 15 genes (zero elsewhere)."""
    adata = synthetic_counts(n_cells=n_cells, n_genes=60, n_labels=3, sparse=False, random_state=seed)
    codes = adata.obs["labels"].cat.codes.to_numpy()
    x = adata.X
    for k in range(3):
        block = slice(15 * k, 15 * (k + 1))
        x[:, block] = np.where((codes == k)[:, None], x[:, block] + 3.0, 0.0)
    adata.X = x
    adata.layers["counts"] = x.copy()
    return adata


@pytest.fixture(scope="module")
def xtg():
    adata = _data()
    XTrimoGene.setup_anndata(adata)
    torch.manual_seed(0)
    model = XTrimoGene(adata, **XTG_TINY)
    model.train(max_epochs=2, precision="bf16-mixed", **TRAIN)
    return adata, model


# ------------------------------------------------------------------ split and metrics
def test_stratified_split_is_seeded_stratified_and_skips_missing():
    labels = np.array(["a"] * 50 + ["b"] * 30 + ["c"] * 10 + ["rare"] * 2 + [None] * 8, dtype=object)
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    again = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    other = stratified_split(labels, (0.8, 0.1, 0.1), seed=4)
    for k in parts:
        np.testing.assert_array_equal(parts[k], again[k])
    assert not np.array_equal(parts["test"], other["test"])
    allpos = np.concatenate(list(parts.values()))
    assert allpos.size == np.unique(allpos).size == 92  # disjoint, every labelled cell, no unlabelled one
    assert not np.isin(np.arange(92, 100), allpos).any()
    for cls, n_val in (("a", 5), ("b", 3), ("c", 1)):
        assert (labels[parts["validation"]] == cls).sum() == n_val
        assert (labels[parts["test"]] == cls).sum() == n_val
    assert (labels[parts["train"]] == "rare").sum() == 2  # too small to split: stays in training


@pytest.mark.parametrize("bad", [(0.5, 0.5), (0.8, 0.1, 0.2), (0.0, 0.5, 0.5), (1.1, -0.05, -0.05)])
def test_stratified_split_rejects_bad_fractions(bad):
    with pytest.raises(ValueError, match="split"):
        stratified_split(np.array(["a", "b"], dtype=object), bad)


def test_classification_metrics():
    m = classification_metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"])
    assert m["accuracy"] == pytest.approx(0.75)
    assert m["macro_precision"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)
    assert m["n_cells"] == 4
    assert np.isnan(classification_metrics([], [])["macro_f1"])


def test_classification_metrics_match_scikit_learn():
    from sklearn.metrics import f1_score, precision_score

    rng = np.random.default_rng(0)
    y_true = rng.choice(["a", "b", "c", "d"], size=200, p=[0.5, 0.3, 0.15, 0.05])
    y_pred = np.where(rng.random(200) < 0.7, y_true, rng.choice(["a", "b", "c", "e"], size=200))
    m = classification_metrics(y_true, y_pred)
    assert m["macro_f1"] == pytest.approx(f1_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["macro_precision"] == pytest.approx(precision_score(y_true, y_pred, average="macro", zero_division=0))
    assert m["accuracy"] == pytest.approx((y_true == y_pred).mean())


def test_read_labels_missing_and_bad_key():
    adata = _data(10)
    adata.obs["ct"] = pd.Categorical(["x", None] * 5, categories=["x", "unused"])
    labels = read_labels(adata, "ct")
    assert labels[0] == "x"
    assert labels[1] is None
    with pytest.raises(MissingKeyError, match="labels_key='nope'"):
        read_labels(adata, "nope")


def test_classifier_head_shapes_and_scaling():
    head = CellTypeClassifier(4, 3)
    z = torch.randn(10, 4) * 100 + 50
    head.fit_scaling(z)
    assert head((z - head.shift) * 0 + head.shift).shape == (10, 3)
    np.testing.assert_allclose(((z - head.shift) / head.scale).mean(0).numpy(), 0, atol=1e-4)
    assert CellTypeClassifier(4, 3, n_hidden=8)(z).shape == (10, 3)
    with pytest.raises(ValueError, match="n_classes"):
        CellTypeClassifier(4, 1)


# ------------------------------------------------------------------ fine-tuning
def test_frozen_annotator_learns_and_selects_on_validation(xtg):
    adata, model = xtg
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    ann = model.train_annotator("labels", freeze="encoder", max_epochs=40, seed=1)
    assert isinstance(ann, CellTypeAnnotator)
    assert model.annotator_ is ann
    assert ann.classes == ["label_0", "label_1", "label_2"]
    expected = stratified_split(read_labels(adata, "labels"), (0.8, 0.1, 0.1), 1)
    for k in expected:
        np.testing.assert_array_equal(ann.split[k], expected[k])
    hist = ann.history
    assert len(hist) == 40
    assert {"train_loss", "validation_loss", "validation_macro_f1"} <= set(hist.columns)
    best = hist["validation_macro_f1"].max()
    assert hist.loc[ann.best_epoch, "validation_macro_f1"] == best
    assert hist["train_loss"].iloc[-1] < hist["train_loss"].iloc[0]
    test = ann.metrics["test"]
    assert test["n_cells"] == expected["test"].size
    assert test["macro_f1"] > 0.9  # separable classes (chance is ~0.33)
    assert {"macro_f1", "macro_precision", "accuracy"} <= set(ann.metrics["validation"])
    for k, v in model.module.state_dict().items():  # frozen: the backbone is untouched
        torch.testing.assert_close(v, before[k])
    # predictions of the kept head reproduce the reported test score
    pred = model.predict_cell_types(indices=ann.split["test"])
    truth = adata.obs["labels"].astype(str).to_numpy()[ann.split["test"]]
    assert classification_metrics(truth, pred)["macro_f1"] == pytest.approx(test["macro_f1"])


def test_annotator_is_reproducible_and_soft_predictions(xtg):
    _, model = xtg
    a = model.train_annotator("labels", max_epochs=3, seed=5)
    pa = model.predict_cell_types(soft=True)
    b = model.train_annotator("labels", max_epochs=3, seed=5)
    pb = model.predict_cell_types(soft=True, batch_size=7)
    pd.testing.assert_frame_equal(pa, pb, atol=1e-5, rtol=0)
    pd.testing.assert_frame_equal(a.history, b.history)
    assert list(pa.columns) == a.classes
    np.testing.assert_allclose(pa.sum(1).to_numpy(), 1.0, atol=1e-5)
    assert (pa.index == model.adata.obs_names).all()


def test_nan_labels_and_unused_categories(xtg):
    adata, model = xtg
    data = adata.copy()
    ct = data.obs["labels"].astype(str).to_numpy().astype(object)
    ct[:40] = None
    data.obs["ct"] = pd.Categorical(ct, categories=["label_0", "label_1", "label_2", "never_seen"])
    ann = model.train_annotator("ct", data, max_epochs=2)
    assert ann.classes == ["label_0", "label_1", "label_2"]  # the empty category is not a class
    used = np.concatenate(list(ann.split.values()))
    assert not np.isin(np.arange(40), used).any()
    assert used.size == data.n_obs - 40
    assert ann.split_labels()[:40].tolist() == ["unlabeled"] * 40
    pred = model.predict_cell_types(data)
    assert pred.shape == (data.n_obs,)
    assert set(pred) <= set(ann.classes)


def test_bad_inputs(xtg, toy_model_cls):
    adata, model = xtg
    previous = model.annotator_
    with pytest.raises(MissingKeyError, match="labels_key='cell_type'"):
        model.train_annotator("cell_type")
    with pytest.raises(ValueError, match="freeze"):
        model.train_annotator("labels", freeze="decoder")
    with pytest.raises(ValueError, match="precision"):
        model.train_annotator("labels", precision="16-mixed")
    one = adata.copy()
    one.obs["one"] = "x"
    with pytest.raises(ValueError, match="at least two"):
        model.train_annotator("one", one)
    assert model.annotator_ is previous  # failed calls leave the fitted classifier alone

    toy_adata = _data(60)
    toy_model_cls.setup_anndata(toy_adata)
    toy = toy_model_cls(toy_adata)
    toy.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    with pytest.raises(NotImplementedError, match="cell_embedding"):
        toy.train_annotator("labels")
    with pytest.raises(ValueError, match="train_annotator"):
        toy.predict_cell_types()


def _fresh_xtg(adata):
    """A new one-epoch XTrimoGene on a copy of ``adata`` (tests that change the backbone do not share it)."""
    data = adata.copy()
    XTrimoGene.setup_anndata(data)
    torch.manual_seed(0)
    model = XTrimoGene(data, **XTG_TINY)
    model.train(max_epochs=1, **TRAIN)
    return model


def test_full_finetuning_updates_backbone_and_restores_flags(xtg):
    model = _fresh_xtg(xtg[0])
    flags = {n: p.requires_grad for n, p in model.module.named_parameters()}
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    ann = model.train_annotator(
        "labels", freeze="none", max_epochs=2, backbone_lr=1e-3, precision="bf16-mixed", warm_start=False
    )
    assert ann.params["freeze"] == "none"
    assert ann.params["backbone_lr"] == 1e-3
    changed = [k for k, v in model.module.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("encoder.") for k in changed)
    assert {n: p.requires_grad for n, p in model.module.named_parameters()} == flags
    assert np.isfinite(model.get_latent_representation()).all()


def test_annotation_runs_through_model_train_and_keeps_the_training_record(xtg, monkeypatch):
    from cellformers.model.base import CellformersModel

    model = _fresh_xtg(xtg[0])
    record = {k: v.copy() for k, v in model.history_.items()}
    train_idx, trainer = np.array(model.train_indices), model.trainer
    plans = []
    shared_train = CellformersModel.train

    def spy(self, *args, **kwargs):
        plans.append(type(kwargs.get("training_plan")).__name__)
        return shared_train(self, *args, **kwargs)

    monkeypatch.setattr(CellformersModel, "_shared_train", spy)
    model.train_annotator("labels", freeze="none", max_epochs=1, backbone_lr=1e-3, warm_start=True)
    assert plans == ["AnnotationTrainingPlan", "AnnotationTrainingPlan"]  # the head phase, then the full one
    assert model.history_.keys() == record.keys()
    for key, frame in record.items():
        pd.testing.assert_frame_equal(model.history_[key], frame)
    np.testing.assert_array_equal(model.train_indices, train_idx)
    assert model.trainer is trainer
    assert model.is_trained_
    assert not model.module.training


def test_train_with_a_training_plan_needs_its_data(xtg):
    _, model = xtg
    with pytest.raises(ValueError, match="datamodule="):
        model.train(max_epochs=1, training_plan=torch.nn.Module())


@pytest.mark.parametrize(("cls", "kwargs"), [(ScFormer, SCF_TINY), (ScPaLM, SCP_TINY)])
def test_other_models_finetune_frozen_and_full(cls, kwargs):
    adata = _data(200, seed=2)
    cls.setup_anndata(adata, batch_key="batch")
    model = cls(adata, **kwargs)
    model.train(max_epochs=1, **TRAIN)
    ann = model.train_annotator("labels", max_epochs=3)
    width = kwargs.get("d_model", kwargs.get("n_hidden"))
    assert ann.head.n_input == width
    assert np.isfinite(ann.history["validation_loss"]).all()
    flags = {n: p.requires_grad for n, p in model.module.named_parameters()}
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train_annotator("labels", freeze="none", max_epochs=1, backbone_lr=1e-2, warm_start=False)
    changed = [k for k, v in model.module.state_dict().items() if not torch.equal(v, before[k])]
    assert changed, "full fine-tuning did not reach the backbone"
    assert {n: p.requires_grad for n, p in model.module.named_parameters()} == flags
    assert model.predict_cell_types().shape == (adata.n_obs,)


def test_scpalm_needs_stage_two():
    adata = _data(100)
    ScPaLM.setup_anndata(adata)
    model = ScPaLM(adata, **SCP_TINY)
    model.train(max_epochs=1, stage=1, **TRAIN)
    with pytest.raises(ValueError, match="stage 2"):
        model.train_annotator("labels")


def test_annotator_survives_save_and_load(xtg, tmp_path):
    adata, model = xtg
    model.train_annotator("labels", max_epochs=2)
    expected = model.predict_cell_types(soft=True)
    model.save(tmp_path / "m", overwrite=True)
    loaded = XTrimoGene.load(tmp_path / "m", adata=adata)
    assert loaded.annotator_.classes == model.annotator_.classes
    pd.testing.assert_frame_equal(loaded.predict_cell_types(soft=True), expected, atol=1e-5, rtol=0)


def test_full_finetuning_warm_starts_from_the_frozen_head(xtg):
    """Full fine-tuning first fits the frozen head, then never keeps weights worse on validation than it."""
    model = _fresh_xtg(xtg[0])
    frozen = model.train_annotator("labels", max_epochs=50, seed=1)
    full = model.train_annotator("labels", freeze="none", max_epochs=2, backbone_lr=1e-3, seed=1)
    assert full.params["warm_start"] is True
    hist = full.history
    assert list(hist["phase"].unique()) == ["head", "full"]
    assert (hist["phase"] == "head").sum() == 50
    # the head phase is the frozen fit of the same seed
    np.testing.assert_allclose(
        hist.loc[hist["phase"] == "head", "validation_loss"].to_numpy(), frozen.history["validation_loss"].to_numpy()
    )
    kept = hist.loc[hist["epoch"] == full.best_epoch].iloc[0]
    assert kept["validation_macro_f1"] >= frozen.metrics["validation"]["macro_f1"] - 1e-9


def test_classification_metrics_support_and_supported_macro_f1():
    truth = ["a"] * 6 + ["b"] * 6 + ["c"] * 2
    pred = ["a"] * 6 + ["b"] * 5 + ["c"] + ["a", "a"]
    m = classification_metrics(truth, pred)
    assert m["per_class"]["c"]["support"] == 2
    assert m["n_classes_supported"] == 2
    f1 = {c: v["f1"] for c, v in m["per_class"].items()}
    assert m["macro_f1_supported"] == pytest.approx((f1["a"] + f1["b"]) / 2)
    assert m["macro_f1"] == pytest.approx(np.mean(list(f1.values())))
    assert classification_metrics(truth, pred, min_support=1)["n_classes_supported"] == 3
