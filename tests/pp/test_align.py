"""cellformers.pp.align_to_reference: reorder, zero-fill, drop; sparse stays sparse; the input is never modified."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import cellformers as cf
from cellformers import GeneMappingError, MissingKeyError
from cellformers.data import synthetic_counts


@pytest.fixture
def adata():
    a = synthetic_counts(n_cells=30, n_genes=12, random_state=0)
    a.obsm["X_pca"] = np.arange(60, dtype=float).reshape(30, 2)
    a.uns["note"] = {"nested": [1, 2]}
    a.varm["loadings"] = np.ones((12, 2))
    return a


@pytest.mark.parametrize("dense", [False, True])
def test_reorder_fill_drop(adata, dense):
    if dense:
        adata.X = adata.X.toarray()
    genes = list(adata.var_names)
    ref = [genes[5], "NEW1", genes[0], genes[11], "NEW2"]  # 3 present, 2 new, 9 dropped
    before = adata.copy()
    out = cf.pp.align_to_reference(adata, ref, min_coverage=0.5)
    assert out is not adata
    assert out.var_names.tolist() == ref
    assert out.var["cellformers_present"].tolist() == [True, False, True, True, False]
    assert sparse.issparse(out.X) != dense
    assert sparse.issparse(out.layers["counts"])
    X = adata.X if dense else adata.X.toarray()
    got = out.X if dense else out.X.toarray()
    np.testing.assert_array_equal(got[:, 0], X[:, 5])
    np.testing.assert_array_equal(got[:, 2], X[:, 0])
    np.testing.assert_array_equal(got[:, 3], X[:, 11])
    assert not got[:, [1, 4]].any()
    assert out.X.dtype == adata.X.dtype
    np.testing.assert_array_equal(out.layers["counts"].toarray(), got)
    np.testing.assert_array_equal(out.obsm["X_pca"], adata.obsm["X_pca"])
    assert out.obs_names.tolist() == adata.obs_names.tolist()
    assert "loadings" not in out.varm
    report = out.uns["cellformers_alignment"]
    assert report["n_reference"] == 5
    assert report["n_present"] == 3
    assert report["coverage"] == pytest.approx(0.6)
    assert report["n_dropped"] == 9
    assert report["missing_examples"] == ["NEW1", "NEW2"]
    # the input is untouched, also through the copied uns
    out.uns["note"]["nested"].append(3)
    assert adata.uns["note"] == {"nested": [1, 2]}
    assert adata.var_names.tolist() == before.var_names.tolist()
    assert (adata.X != before.X).nnz == 0 if not dense else np.array_equal(adata.X, before.X)
    assert "cellformers_alignment" not in adata.uns


def test_gene_symbols_column(adata):
    adata.var["symbol"] = adata.var_names
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    ref = list(adata.var["symbol"][::-1])
    out = cf.pp.align_to_reference(adata, ref, gene_symbols="symbol")
    assert out.var_names.tolist() == ref
    np.testing.assert_array_equal(out.X.toarray(), adata.X.toarray()[:, ::-1])
    with pytest.raises(MissingKeyError, match="gene_symbols='nope'"):
        cf.pp.align_to_reference(adata, ref, gene_symbols="nope")


def test_low_coverage_and_bad_input(adata):
    with pytest.raises(GeneMappingError, match="Only 1 of the 4 reference genes"):
        cf.pp.align_to_reference(adata, [adata.var_names[0], "A", "B", "C"])
    with pytest.raises(ValueError, match="unique"):
        cf.pp.align_to_reference(adata, ["A", "A"])
    with pytest.raises(ValueError, match="empty"):
        cf.pp.align_to_reference(adata, [])
    with pytest.raises(ValueError, match="min_coverage"):
        cf.pp.align_to_reference(adata, list(adata.var_names), min_coverage=2)


def test_duplicated_input_genes_warn(adata):
    adata.var_names = [adata.var_names[0]] + list(adata.var_names[:-1])  # gene 0 twice
    with pytest.warns(UserWarning, match="first occurrence"):
        out = cf.pp.align_to_reference(adata, [adata.var_names[0]])
    np.testing.assert_array_equal(out.X.toarray()[:, 0], adata.X.toarray()[:, 0])


def test_scvi_ids_are_not_copied(adata):
    adata.uns["_scvi_uuid"] = "abc"
    out = cf.pp.align_to_reference(adata, list(adata.var_names))
    assert "_scvi_uuid" not in out.uns
