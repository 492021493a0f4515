"""Drug-synergy arm (issue 19, xTrimoGene App. 8.3) on a synthetic task whose synergy depends on the cell line."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import cellformers as cf
from cellformers import MissingKeyError
from cellformers.downstream import SynergyMLP, summarize_synergy, synergy_benchmark, train_synergy_head


def _bulk_lines(n_lines: int = 10, n_genes: int = 24, seed: int = 0):
    """Bulk-like counts of cell lines; the first 6 genes are high in "sensitive" lines (sign +1), low in the others."""
    rng = np.random.default_rng(seed)
    sign = np.array([1, -1] * (n_lines // 2))
    rate = rng.gamma(2.0, 20.0, size=(n_lines, n_genes))
    rate[:, :6] *= np.where(sign[:, None] > 0, 8.0, 0.2)
    counts = rng.poisson(rate).astype(np.float32)
    adata = cf.data.synthetic_counts(n_cells=n_lines, n_genes=n_genes, random_state=seed)
    adata.X = counts
    adata.obs_names = [f"line{i}" for i in range(n_lines)]
    return adata, pd.Series(sign, index=adata.obs_names)


def _task(sign: pd.Series, n_drugs: int = 10, seed: int = 0):
    """Synergy of (a, b) in line c: sign(c) * w_a * w_b (+ noise); the sign is the lines' expression signature."""
    rng = np.random.default_rng(seed)
    feats = rng.normal(size=(n_drugs, 8))
    w = feats @ rng.normal(size=8) / np.sqrt(8)
    drugs = pd.DataFrame(feats, index=[f"drug{i}" for i in range(n_drugs)])
    rows = [
        (f"drug{i}", f"drug{j}", line, s * w[i] * w[j] + 0.05 * rng.normal())
        for i in range(n_drugs)
        for j in range(i + 1, n_drugs)
        for line, s in sign.items()
    ]
    return drugs, pd.DataFrame(rows, columns=["drug_a", "drug_b", "cell_line", "synergy"])


@pytest.fixture(scope="module")
def task():
    adata, sign = _bulk_lines()
    drugs, pairs = _task(sign)
    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(
        adata, encoder_layers=1, encoder_dim=16, encoder_heads=2, decoder_layers=1, decoder_dim=8
    )
    model.train(max_epochs=1, batch_size=10, enable_progress_bar=False)
    ctx = model.get_context_embedding(genes=list(adata.var_names[:8]))  # (lines, 8 genes, 8)
    expr = pd.DataFrame(np.log1p(adata.X / adata.X.sum(1, keepdims=True) * 1e4), index=adata.obs_names)
    emb = pd.DataFrame(ctx.reshape(ctx.shape[0], -1), index=adata.obs_names)
    return drugs, pairs, {"expression": expr, "xtrimogene_context": emb, "drug_only": None}


def test_synergy_mlp_shapes():
    head = SynergyMLP(n_drug=5, n_cell=7, n_hidden=4)
    assert head(torch.zeros(3, 5), torch.zeros(3, 5), torch.zeros(3, 7)).shape == (3,)
    drug_only = SynergyMLP(n_drug=5, n_cell=0, n_hidden=4)
    assert drug_only.cell is None
    assert drug_only(torch.zeros(3, 5), torch.zeros(3, 5)).shape == (3,)


def test_synergy_benchmark_embedding_arm_learns_the_cell_signature(task):
    drugs, pairs, arms = task
    res = synergy_benchmark(pairs, drugs, arms, target="synergy", test=0.25, n_seeds=5, max_epochs=40, n_hidden=32)
    assert len(res) == 15
    assert res.groupby("arm", sort=False)["seed"].apply(list).to_dict() == {a: list(range(5)) for a in arms}
    summary = summarize_synergy(res)
    assert list(summary.index) == list(arms)
    assert (summary["n_seeds"] == 5).all()
    assert (summary["pearson_sd"] >= 0).all()
    r = summary["pearson_mean"]
    # the sign of the synergy is the lines' signature: without the cell line no better than chance (measured
    # -0.45: a pair's held-out lines tend to have the sign its training lines lack)
    assert r["drug_only"] < 0.3
    assert r["expression"] > 0.6
    assert r["xtrimogene_context"] > 0.6
    assert summary.loc["xtrimogene_context", "mse_mean"] < summary.loc["drug_only", "mse_mean"]


def test_synergy_benchmark_classification_and_mask(task):
    drugs, pairs, arms = task
    pairs = pairs.assign(label=(pairs["synergy"] > 0).astype(int))
    test = np.zeros(len(pairs), dtype=bool)
    test[::4] = True
    res = synergy_benchmark(
        pairs, drugs, {"expression": arms["expression"]}, test=test, task="classification", n_seeds=2, max_epochs=30
    )
    assert {"auroc", "auprc", "accuracy"} <= set(res.columns)
    assert (res["n_test"] == test.sum()).all()
    assert res["auroc"].mean() > 0.7


def test_synergy_benchmark_errors(task):
    drugs, pairs, arms = task
    with pytest.raises(MissingKeyError, match="cell lines"):
        synergy_benchmark(pairs, drugs, {"x": arms["expression"].iloc[:3]}, target="synergy", n_seeds=1)
    with pytest.raises(MissingKeyError, match="no column 'label'"):
        synergy_benchmark(pairs, drugs, arms)
    with pytest.raises(ValueError, match="both training and test"):
        synergy_benchmark(pairs, drugs, arms, target="synergy", test=np.zeros(len(pairs), dtype=bool))


def test_train_synergy_head_is_seeded():
    rng = np.random.default_rng(1)
    a, b, c = rng.normal(size=(30, 3)), rng.normal(size=(30, 3)), rng.normal(size=(30, 2))
    y = a[:, 0] * c[:, 0]
    h1 = train_synergy_head(a, b, c, y, max_epochs=3, n_hidden=4, seed=7)
    h2 = train_synergy_head(a, b, c, y, max_epochs=3, n_hidden=4, seed=7)
    for p1, p2 in zip(h1.parameters(), h2.parameters(), strict=True):
        torch.testing.assert_close(p1, p2)
