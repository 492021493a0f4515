from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch

from cellformers import MissingKeyError, tl
from cellformers.data import synthetic_counts
from cellformers.model import XTrimoGene
from cellformers.model.base._annotator import read_labels, stratified_split

TINY = {
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


def _data(n_cells=240, seed=0):
    """Synthetic counts where each of the 3 labels also expresses its own block of 15 genes (zero elsewhere)."""
    adata = synthetic_counts(n_cells=n_cells, n_genes=60, n_labels=3, sparse=False, random_state=seed)
    codes = adata.obs["labels"].cat.codes.to_numpy()
    x = adata.X
    for k in range(3):
        block = slice(15 * k, 15 * (k + 1))
        x[:, block] = np.where((codes == k)[:, None], x[:, block] + 3.0, 0.0)
    adata.X = x
    adata.obs_names = [f"s{seed}_{i}" for i in range(n_cells)]
    adata.obs["cell_type"] = adata.obs["labels"].astype(str).str.replace("label_", "type_").astype("category")
    return adata


@pytest.fixture(scope="module")
def trained():
    adata = _data()
    XTrimoGene.setup_anndata(adata)
    torch.manual_seed(0)
    model = XTrimoGene(adata, **TINY)
    model.train(max_epochs=1, accelerator="cpu", batch_size=64, enable_progress_bar=False)
    return adata, model


def _snapshot(adata):
    return adata.obs.copy(), sorted(adata.obsm), sorted(adata.uns)


def test_annotate_writes_labels_probabilities_split_and_params(trained):
    adata, model = trained
    out = tl.annotate(adata, model, labels_key="cell_type", copy=True, max_epochs=30, seed=2)
    assert "xtrimogene_label" not in adata.obs
    assert "xtrimogene_label" not in adata.uns
    lab = out.obs["xtrimogene_label"]
    assert isinstance(lab.dtype, pd.CategoricalDtype)
    assert list(lab.cat.categories) == ["type_0", "type_1", "type_2"]
    probs = out.obsm["xtrimogene_label_probabilities"]
    assert isinstance(probs, pd.DataFrame)
    assert list(probs.columns) == ["type_0", "type_1", "type_2"]
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(probs.to_numpy().argmax(1), lab.cat.codes.to_numpy())
    np.testing.assert_allclose(out.obs["xtrimogene_label_confidence"], probs.max(1), atol=1e-6)
    split = out.obs["xtrimogene_label_split"]
    expected = stratified_split(read_labels(adata, "cell_type"), (0.8, 0.1, 0.1), 2)
    assert (split == "test").sum() == expected["test"].size
    np.testing.assert_array_equal(np.flatnonzero(split == "test"), expected["test"])
    entry = out.uns["xtrimogene_label"]
    assert entry["params"]["model"] == "XTrimoGene"
    assert entry["params"]["labels_key"] == "cell_type"
    assert entry["params"]["freeze"] == "encoder"
    assert entry["params"]["classes"] == ["type_0", "type_1", "type_2"]
    test = entry["metrics"]["test"]
    assert test["macro_f1"] > 0.9
    assert test["macro_precision"] > 0.9
    truth = adata.obs["cell_type"].astype(str).to_numpy()
    assert (lab.astype(str).to_numpy()[expected["test"]] == truth[expected["test"]]).mean() == test["accuracy"]


def test_annotate_writes_h5ad(trained, tmp_path):
    adata, model = trained
    out = tl.annotate(adata, model, labels_key="cell_type", key_added="ct_pred", copy=True, max_epochs=2)
    out.write_h5ad(tmp_path / "a.h5ad")
    back = ad.read_h5ad(tmp_path / "a.h5ad")
    np.testing.assert_allclose(back.obsm["ct_pred_probabilities"], out.obsm["ct_pred_probabilities"])
    assert back.uns["ct_pred"]["metrics"]["test"]["n_cells"] == out.uns["ct_pred"]["metrics"]["test"]["n_cells"]


def test_annotate_query_with_existing_classifier(trained):
    adata, model = trained
    model.train_annotator("cell_type", max_epochs=30, seed=0)
    query = _data(90, seed=7)
    query.obs["cell_type"] = query.obs["cell_type"].cat.add_categories(["new_type"])
    query.obs.loc[query.obs_names[:5], "cell_type"] = "new_type"  # a type the classifier never saw
    before = query.obs.columns.tolist()
    tl.annotate(query, model)
    assert not any(c.startswith("_scvi") for c in query.obs.columns)  # nothing registered into the caller's object
    assert query.obs.columns.tolist() == [*before, "xtrimogene_label", "xtrimogene_label_confidence"]
    assert set(query.obs["xtrimogene_label"].astype(str)) <= {"type_0", "type_1", "type_2"}
    m = query.uns["xtrimogene_label"]["metrics"]["query"]
    assert m["n_cells"] == 90
    assert 0.8 < m["accuracy"] <= 85 / 90  # the 5 unseen-type cells are necessarily wrong


def test_annotate_backed_and_chunked_match(trained, tmp_path):
    adata, model = trained
    model.train_annotator("cell_type", max_epochs=3)
    query = _data(70, seed=3)
    ref = tl.annotate(query, model, copy=True)
    path = tmp_path / "q.h5ad"
    query.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    tl.annotate(backed, model, chunk_size=16, batch_size=5)
    np.testing.assert_allclose(
        backed.obsm["xtrimogene_label_probabilities"].to_numpy(),
        ref.obsm["xtrimogene_label_probabilities"].to_numpy(),
        atol=1e-5,
    )
    backed.file.close()


def test_annotate_fine_tunes_on_another_anndata_without_registering_it(trained):
    _, model = trained
    other = _data(150, seed=11)
    other.obs.loc[other.obs_names[:20], "cell_type"] = np.nan
    tl.annotate(other, model, labels_key="cell_type", max_epochs=2)
    assert not any(c.startswith("_scvi") or c.startswith("_cellformers") for c in other.obs.columns)
    split = other.obs["xtrimogene_label_split"]
    assert (split[:20] == "unlabeled").all()
    assert (split[20:] != "unlabeled").all()
    assert other.obs["xtrimogene_label"].notna().all()  # unlabelled cells are annotated too


def test_annotate_errors_leave_adata_unchanged(trained, toy_model_cls):
    adata, model = trained
    query = _data(30, seed=5)
    snap = _snapshot(query)
    with pytest.raises(MissingKeyError, match="labels_key='nope'"):
        tl.annotate(query, model, labels_key="nope")
    with pytest.raises(TypeError, match="labels_key"):
        tl.annotate(query, model, max_epochs=3)
    with pytest.raises(ValueError, match="freeze"):
        tl.annotate(query, model, labels_key="cell_type", freeze="bad")
    toy_adata = _data(40)
    toy_model_cls.setup_anndata(toy_adata)
    toy = toy_model_cls(toy_adata)
    toy.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    with pytest.raises(ValueError, match="no cell-type classifier"):
        tl.annotate(query, toy)
    with pytest.raises(NotImplementedError):
        tl.annotate(query, toy, labels_key="cell_type")
    obs, obsm, uns = _snapshot(query)
    pd.testing.assert_frame_equal(obs, snap[0])
    assert (obsm, uns) == (snap[1], snap[2])


# ------------------------------------------------------------------ baselines
def _with_reps(n=300, seed=0):
    rng = np.random.default_rng(seed)
    adata = ad.AnnData(np.zeros((n, 1), dtype=np.float32))
    lab = rng.integers(0, 3, n)
    centers = rng.normal(scale=6.0, size=(3, 10))
    adata.obsm["X_pca_hvg"] = centers[lab] + rng.normal(size=(n, 10))
    adata.obsm["X_scvi"] = centers[lab][:, :5] + rng.normal(size=(n, 5))
    adata.obs["cell_type"] = pd.Categorical(np.array(["a", "b", "c"])[lab])
    return adata


def test_annotation_baselines_on_separable_data():
    adata = _with_reps()
    table = tl.annotation_baselines(adata, labels_key="cell_type", seed=1)
    assert list(table.index) == ["logreg_pca", "knn_scvi"]
    assert (table["macro_f1"] > 0.95).all()
    assert (table["macro_precision"] > 0.95).all()
    parts = stratified_split(read_labels(adata, "cell_type"), (0.8, 0.1, 0.1), 1)
    assert (table["n_test"] == parts["test"].size).all()
    assert (table["n_train"] == parts["train"].size).all()
    assert table.loc["logreg_pca", "selected"] in (0.01, 0.1, 1.0, 10.0)
    stored = adata.uns["cellformers_annotation_baselines"]["table"]
    assert list(stored["method"]) == ["logreg_pca", "knn_scvi"]


def test_annotation_baselines_reuse_a_model_split(trained):
    adata, model = trained
    ann = model.train_annotator("cell_type", max_epochs=2, seed=4)
    data = adata.copy()
    rng = np.random.default_rng(0)
    data.obsm["X_pca_hvg"] = rng.normal(size=(data.n_obs, 4))
    data.obsm["X_scvi"] = rng.normal(size=(data.n_obs, 4))
    table = tl.annotation_baselines(data, labels_key="cell_type", split=ann)
    assert (table["n_test"] == ann.split["test"].size).all()
    with pytest.raises(ValueError, match="trained on"):
        tl.annotation_baselines(data[:50].copy(), labels_key="cell_type", split=ann)


def test_annotation_baselines_errors():
    adata = _with_reps(60)
    del adata.obsm["X_scvi"]
    with pytest.raises(MissingKeyError, match="tl.baselines"):
        tl.annotation_baselines(adata, labels_key="cell_type")
    with pytest.raises(MissingKeyError, match="labels_key='x'"):
        tl.annotation_baselines(adata, labels_key="x", methods=["logreg_pca"])
    with pytest.raises(ValueError, match="methods"):
        tl.annotation_baselines(adata, labels_key="cell_type", methods=["svm"])
    with pytest.raises(ValueError, match="keys"):
        tl.annotation_baselines(adata, labels_key="cell_type", methods=["logreg_pca"], split={"train": [0]})
    assert "cellformers_annotation_baselines" not in adata.uns
