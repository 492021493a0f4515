"""Annotation and label transfer on the real datasets of ``shared/data`` (skipped when they are absent)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch

from cellformers import tl
from cellformers.data import GeneVocab
from cellformers.model import XTrimoGene

TINY = {
    "preset": "3M",
    "encoder_layers": 1,
    "encoder_heads": 2,
    "encoder_dim": 32,
    "encoder_ff": 64,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "decoder_dim": 16,
    "decoder_ff": 32,
}
TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "batch_size": 64}


def _pbmc_subset(shared_data_dir, per_class: int = 45) -> ad.AnnData:
    """Up to ``per_class`` cells of each pbmc3k type (all of the rare ones), tutorial HVGs only."""
    adata = ad.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad")
    rng = np.random.default_rng(0)
    keep = np.concatenate(
        [
            rng.permutation(np.flatnonzero((adata.obs["cell_type"] == ct).to_numpy()))[:per_class]
            for ct in adata.obs["cell_type"].cat.categories
        ]
    )
    return adata[np.sort(keep), adata.var["highly_variable"].to_numpy()].copy()


def test_annotate_pbmc3k_beats_chance_and_matches_baseline_split(shared_data_dir):
    adata = _pbmc_subset(shared_data_dir)
    XTrimoGene.setup_anndata(adata)
    torch.manual_seed(0)
    model = XTrimoGene(adata, vocab=GeneVocab.from_adata(adata), **TINY)
    model.train(max_epochs=1, precision="bf16-mixed", **TRAIN)
    tl.annotate(adata, model, labels_key="cell_type", precision="bf16-mixed", max_epochs=30)
    test = adata.uns["xtrimogene_label"]["metrics"]["test"]
    n_classes = adata.obs["cell_type"].nunique()
    assert test["n_cells"] == (adata.obs["xtrimogene_label_split"] == "test").sum()
    # 8 types, at most 45 cells each (the most common type is 15% of the cells): a head on a one-epoch encoder is
    # far above chance but not near the baseline
    assert test["accuracy"] > 0.35
    assert test["macro_f1"] > 2.0 / n_classes
    # the tutorial's PCA stands in for X_pca_hvg: the baseline runs on exactly the model's split
    table = tl.annotation_baselines(
        adata, labels_key="cell_type", split=model.annotator_, methods=["logreg_pca"], use_rep={"logreg_pca": "X_pca"}
    )
    assert table.loc["logreg_pca", "n_test"] == test["n_cells"]
    assert table.loc["logreg_pca", "accuracy"] > 0.7  # ~36 test cells: one cell is 3 points


@pytest.mark.slow
def test_transfer_between_pancreas_donors(shared_data_dir):
    import scanpy as sc

    adata = ad.read_h5ad(shared_data_dir / "pancreas_baron_human.h5ad")
    ref_mask = (adata.obs["batch"] == "human3").to_numpy()
    ref, query = adata[ref_mask].copy(), adata[~ref_mask].copy()
    hv = ref.copy()
    sc.pp.filter_genes(hv, min_cells=3)
    sc.pp.normalize_total(hv, target_sum=1e4)
    sc.pp.log1p(hv)
    sc.pp.highly_variable_genes(hv, n_top_genes=1000)
    vocab = GeneVocab(list(hv.var_names[hv.var["highly_variable"].to_numpy()]), name="ref-hvg")
    XTrimoGene.setup_anndata(ref)
    torch.manual_seed(0)
    model = XTrimoGene(ref, vocab=vocab, **TINY)
    model.train(max_epochs=3, precision="bf16-mixed", **TRAIN)
    tl.embed(ref, model, key_added="X_model")
    tl.embed(query, model, key_added="X_model")
    tl.transfer_labels(query, ref, labels_key="cell_type", use_rep="X_model")
    truth = query.obs["cell_type"].astype(str).to_numpy()
    pred = query.obs["cell_type_transferred"].astype(str).to_numpy()
    assert (pred == truth).mean() > 0.8
    model.train_annotator("cell_type", split=(0.9, 0.1, 0.0), max_epochs=30)
    tl.annotate(query, model)
    assert query.uns["xtrimogene_label"]["metrics"]["query"]["accuracy"] > 0.8
