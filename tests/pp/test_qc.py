from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import cellformers as cf
from cellformers import InvalidExpressionError, MissingKeyError, NotCountsError
from cellformers.data import synthetic_counts


def _counts_adata(n_expr: list[int], n_genes: int = 12, dense: bool = False):
    """Cells with exactly ``n_expr[i]`` expressed genes."""
    X = np.zeros((len(n_expr), n_genes), dtype=np.float32)
    for i, k in enumerate(n_expr):
        X[i, :k] = np.arange(1, k + 1)
    return ad.AnnData(X if dense else sparse.csr_matrix(X))


# ---------------------------------------------------------------- filter_cells_by_genes
@pytest.mark.parametrize("dense", [False, True])
def test_filter_at_least(dense):
    adata = _counts_adata([3, 4, 5, 0, 10], dense=dense)
    cf.pp.filter_cells_by_genes(adata, min_genes=4)
    assert adata.n_obs == 3
    assert list(adata.obs_names) == ["1", "2", "4"]
    assert adata.obs["n_genes"].tolist() == [4, 5, 10]


def test_filter_default_is_200():
    adata = _counts_adata([199, 200, 201], n_genes=250)
    cf.pp.filter_cells_by_genes(adata)
    assert adata.obs["n_genes"].tolist() == [200, 201]


@pytest.mark.parametrize("min_genes", [0, 5, 12, 20])
def test_filter_matches_scanpy(min_genes):
    adata = synthetic_counts(n_cells=200, n_genes=30)
    ours = adata.copy()
    cf.pp.filter_cells_by_genes(ours, min_genes=min_genes)
    theirs = adata.copy()
    sc.pp.filter_cells(theirs, min_genes=min_genes)
    assert list(ours.obs_names) == list(theirs.obs_names)
    np.testing.assert_array_equal(ours.obs["n_genes"].to_numpy(), theirs.obs["n_genes"].to_numpy())
    keep, n_genes = cf.pp.filter_cells_by_genes(adata, min_genes=min_genes, inplace=False)
    keep_sc, n_genes_sc = sc.pp.filter_cells(adata, min_genes=min_genes, inplace=False)
    np.testing.assert_array_equal(keep, keep_sc)
    np.testing.assert_array_equal(n_genes, n_genes_sc)


def test_filter_not_inplace_and_copy():
    adata = _counts_adata([3, 4, 5])
    keep, n_genes = cf.pp.filter_cells_by_genes(adata, min_genes=4, inplace=False)
    assert keep.tolist() == [False, True, True]
    assert n_genes.tolist() == [3, 4, 5]
    assert adata.n_obs == 3
    out = cf.pp.filter_cells_by_genes(adata, min_genes=4, key_added="n_expr", copy=True)
    assert out.n_obs == 2
    assert out.obs["n_expr"].tolist() == [4, 5]
    assert adata.n_obs == 3
    assert "n_expr" not in adata.obs


def test_filter_ignores_explicit_zeros_and_uses_layer():
    adata = _counts_adata([5, 5])
    adata.X.data[:2] = 0.0  # stored zeros in the first cell
    keep, n_genes = cf.pp.filter_cells_by_genes(adata, min_genes=3, inplace=False)
    assert n_genes.tolist() == [3, 5]
    adata.layers["other"] = sparse.csr_matrix(adata.shape, dtype=np.float32)
    _, n_layer = cf.pp.filter_cells_by_genes(adata, min_genes=0, layer="other", inplace=False)
    assert n_layer.tolist() == [0, 0]


def test_filter_backed(tmp_path):
    _counts_adata([3, 4, 5]).write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    with pytest.raises(ValueError, match="inplace=False"):
        cf.pp.filter_cells_by_genes(backed, min_genes=4)
    keep, _ = cf.pp.filter_cells_by_genes(backed, min_genes=4, inplace=False)
    assert keep.tolist() == [False, True, True]
    out = cf.pp.filter_cells_by_genes(backed, min_genes=4, copy=True)
    assert not out.isbacked
    assert out.n_obs == 2


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (-1.0, "negative")])
def test_filter_bad_values(value, match):
    adata = _counts_adata([3, 4])
    adata.X.data[0] = value
    with pytest.raises(InvalidExpressionError, match=match):
        cf.pp.filter_cells_by_genes(adata, min_genes=1)
    assert adata.n_obs == 2


@pytest.mark.parametrize("min_genes", [-1, 2.5, True])
def test_filter_bad_min_genes(min_genes):
    with pytest.raises(ValueError, match="min_genes"):
        cf.pp.filter_cells_by_genes(_counts_adata([3]), min_genes=min_genes)


def test_filter_missing_layer():
    with pytest.raises(MissingKeyError, match="layer='nope'"):
        cf.pp.filter_cells_by_genes(_counts_adata([3]), layer="nope")


# ---------------------------------------------------------------- counts_from_normalized
@pytest.fixture
def counts():
    return synthetic_counts(n_cells=120, n_genes=80)


@pytest.mark.parametrize("dense", [False, True])
def test_recover_from_log1p(counts, dense):
    adata = counts.copy()
    if dense:
        adata.X = adata.X.toarray()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    cf.pp.counts_from_normalized(adata)
    got = adata.layers["counts"]
    assert sparse.issparse(got) != dense
    got = got if dense else got.toarray()
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, counts.X.toarray())
    assert adata.uns["counts_from_normalized"] == {
        "params": {"log_base": "e", "key_added": "counts"},
        "n_inexact_cells": 0,
    }


def test_recover_from_log2_cpm_and_plain(counts):
    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e6)
    adata.layers["cpm"] = adata.X.copy()
    adata.layers["log2cpm"] = adata.X.copy()
    adata.layers["log2cpm"].data = np.log2(adata.layers["log2cpm"].data + 1)
    cf.pp.counts_from_normalized(adata, layer="log2cpm", key_added="c2")
    assert adata.uns["counts_from_normalized"]["params"]["log_base"] == "2"
    cf.pp.counts_from_normalized(adata, layer="cpm", key_added="c0")
    assert adata.uns["counts_from_normalized"]["params"]["log_base"] == "none"
    cf.pp.counts_from_normalized(adata, layer="log2cpm", log_base=2, key_added="c2b")
    for key in ("c2", "c0", "c2b"):
        np.testing.assert_allclose(adata.layers[key].toarray(), counts.X.toarray())


def test_copy(counts):
    adata = counts.copy()
    sc.pp.normalize_total(adata)
    out = cf.pp.counts_from_normalized(adata, log_base=None, copy=True)
    assert "counts" in out.layers
    assert "counts_from_normalized" not in adata.uns


def test_refuses_counts(counts):
    with pytest.raises(InvalidExpressionError, match="already holds integer counts"):
        cf.pp.counts_from_normalized(counts)


def test_wrong_base_or_garbage(counts):
    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    with pytest.raises(InvalidExpressionError, match="Could not recover integer counts"):
        cf.pp.counts_from_normalized(adata, log_base=10)
    rng = np.random.default_rng(0)
    noisy = ad.AnnData(sparse.random(50, 40, density=0.5, format="csr", dtype=np.float32, rng=rng) * 3)
    with pytest.raises(InvalidExpressionError, match="Could not recover integer counts"):
        cf.pp.counts_from_normalized(noisy)
    with pytest.raises(ValueError, match="log_base"):
        cf.pp.counts_from_normalized(adata, log_base=0.5)


def test_inexact_cells_warn(counts):
    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    X = adata.X.toarray()
    X[0] = 0.0
    X[0, :2] = [2.0, 3.0]  # ratio 1.5 after dividing by the cell's smallest value
    adata.X = sparse.csr_matrix(X)
    with pytest.warns(UserWarning, match="1 of 120 cells did not give integer counts"):
        cf.pp.counts_from_normalized(adata, log_base=None)
    assert adata.uns["counts_from_normalized"]["n_inexact_cells"] == 1


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (-1.0, "negative")])
def test_counts_from_normalized_bad_values(counts, value, match):
    adata = counts.copy()
    sc.pp.normalize_total(adata)
    adata.X.data[3] = value
    with pytest.raises(InvalidExpressionError, match=match):
        cf.pp.counts_from_normalized(adata)
    assert "counts" in adata.layers  # the synthetic data's own layer, untouched
    assert "counts_from_normalized" not in adata.uns


def test_counts_from_normalized_backed(tmp_path, counts):
    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    del adata.layers["counts"]
    adata.write_h5ad(tmp_path / "n.h5ad")
    backed = ad.read_h5ad(tmp_path / "n.h5ad", backed="r")
    cf.pp.counts_from_normalized(backed)
    np.testing.assert_array_equal(backed.layers["counts"].toarray(), counts.X.toarray())


# ---------------------------------------------------------------- check_counts
def test_check_counts(counts):
    cf.pp.check_counts(counts)
    cf.pp.check_counts(counts, layer="counts")
    adata = counts.copy()
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(NotCountsError, match="counts_from_normalized"):
        cf.pp.check_counts(adata)
    adata.X.data[0] = -1
    with pytest.raises(InvalidExpressionError, match="negative"):
        cf.pp.check_counts(adata)
    with pytest.raises(MissingKeyError, match="layer='raw'"):
        cf.pp.check_counts(adata, layer="raw")


def test_check_counts_rejects_cpm_scale_values(counts):
    # every CPM value is in the thousands, where a purely relative tolerance would call anything an integer
    adata = counts.copy()
    sc.pp.normalize_total(adata, target_sum=1e6)
    with pytest.raises(NotCountsError):
        cf.pp.check_counts(adata)
