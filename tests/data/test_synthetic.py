from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from cellformers.data import GeneVocab, synthetic_counts, synthetic_gene_symbols


def test_shape_and_fields():
    adata = synthetic_counts(n_cells=300, n_genes=80, n_batches=3, n_labels=4)
    assert adata.shape == (300, 80)
    assert sparse.isspmatrix_csr(adata.X)
    assert adata.X.dtype == np.float32
    assert np.array_equal(adata.X.data, np.rint(adata.X.data))
    assert (adata.layers["counts"] != adata.X).nnz == 0
    assert list(adata.obs["batch"].cat.categories) == ["batch_0", "batch_1", "batch_2"]
    assert list(adata.obs["labels"].cat.categories) == [f"label_{k}" for k in range(4)]
    assert adata.obs_names[0] == "cell_0"
    assert list(adata.var_names) == synthetic_gene_symbols()[:80]
    assert adata.var_names.is_unique
    assert (np.asarray(adata.X.sum(1)).ravel() > 0).all()


def test_reproducible_and_dense():
    a = synthetic_counts(n_cells=50, n_genes=20, random_state=3)
    b = synthetic_counts(n_cells=50, n_genes=20, random_state=3, sparse=False)
    assert isinstance(b.X, np.ndarray)
    assert np.array_equal(a.X.toarray(), b.X)
    c = synthetic_counts(n_cells=50, n_genes=20, random_state=4)
    assert not np.array_equal(a.X.toarray(), c.X.toarray())


def test_labels_are_distinguishable():
    adata = synthetic_counts(n_cells=400, n_genes=100, n_labels=3)
    X = np.log1p(adata.X.toarray())
    means = np.stack([X[(adata.obs["labels"] == k).to_numpy()].mean(0) for k in adata.obs["labels"].cat.categories])
    assert np.abs(means[0] - means[1]).max() > 0.5


def test_gene_list():
    genes = synthetic_gene_symbols()
    assert len(genes) == 400
    assert len(set(genes)) == 400
    assert genes[:4] == ["CD3E", "CD3D", "CD4", "CD8A"]
    assert all(g == g.upper() for g in genes)


def test_genes_in_both_references(seeded_references):
    genes = synthetic_gene_symbols()
    for name in ("scfoundation-19264", "scgpt-default"):
        assert (GeneVocab.load(name).lookup(genes) >= 0).all()


@pytest.mark.parametrize("kw", [{"n_genes": 0}, {"n_genes": 401}, {"n_cells": 0}, {"n_labels": 0}])
def test_bad_arguments(kw):
    with pytest.raises(ValueError, match="must be"):
        synthetic_counts(**kw)
