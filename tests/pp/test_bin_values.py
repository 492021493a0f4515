from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import cellformers as cf
from cellformers import InvalidExpressionError, MissingKeyError
from cellformers.data import bin_expression, synthetic_counts


@pytest.fixture
def adata():
    return synthetic_counts(n_cells=60, n_genes=50)


def test_writes_sparse_layer_and_params(adata):
    cf.pp.bin_values(adata, 11)
    binned = adata.layers["X_binned"]
    assert sparse.isspmatrix_csr(binned)
    assert binned.dtype == np.int32
    assert np.array_equal(binned.indices, adata.X.indices)
    assert binned.data.min() >= 1
    assert binned.max() == 10
    assert adata.uns["X_binned"]["params"] == {"n_bins": 11, "seed": 0, "tie_breaking": "counter_draw"}
    expected = bin_expression(adata.X, 11, cell_names=adata.obs_names)
    assert (binned != expected).nnz == 0


def test_dense_stays_dense():
    adata = synthetic_counts(n_cells=30, n_genes=20, sparse=False)
    cf.pp.bin_values(adata)
    assert isinstance(adata.layers["X_binned"], np.ndarray)
    assert np.array_equal(adata.layers["X_binned"] == 0, adata.X == 0)


def test_layer_key_added_copy(adata):
    adata.layers["lognorm"] = adata.X.copy()
    adata.layers["lognorm"].data = np.log1p(adata.layers["lognorm"].data)
    out = cf.pp.bin_values(adata, layer="lognorm", key_added="bins", copy=True)
    assert "bins" not in adata.layers
    assert out.uns["bins"]["params"]["layer"] == "lognorm"
    cf.pp.bin_values(adata)
    # binning only depends on the order of values within a cell
    assert (out.layers["bins"] != adata.layers["X_binned"]).nnz == 0


def test_chunk_size_and_cell_order_do_not_matter(adata):
    a = cf.pp.bin_values(adata, chunk_size=7, copy=True)
    b = cf.pp.bin_values(adata, chunk_size=1000, copy=True)
    assert (a.layers["X_binned"] != b.layers["X_binned"]).nnz == 0
    perm = np.random.default_rng(0).permutation(adata.n_obs)
    c = cf.pp.bin_values(adata[perm].copy(), copy=True)
    assert (c.layers["X_binned"] != a.layers["X_binned"][perm]).nnz == 0


def test_global_seed_changes_ties(adata):
    a = cf.pp.bin_values(adata, copy=True)
    cf.settings.seed = 7
    b = cf.pp.bin_values(adata, copy=True)
    assert b.uns["X_binned"]["params"]["seed"] == 7
    assert (a.layers["X_binned"] != b.layers["X_binned"]).nnz > 0


def test_backed(tmp_path, adata):
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    cf.pp.bin_values(backed, chunk_size=16)
    cf.pp.bin_values(adata)
    assert backed.isbacked
    assert (backed.layers["X_binned"] != adata.layers["X_binned"]).nnz == 0


def test_empty_cells_warn():
    X = sparse.csr_matrix(np.array([[0, 0, 0], [1, 2, 0]], dtype=np.float32))
    adata = ad.AnnData(X)
    with pytest.warns(UserWarning, match="1 of 2 cells have no non-zero values in adata.X"):
        cf.pp.bin_values(adata, 3)
    assert adata.layers["X_binned"].toarray().tolist() == [[0, 0, 0], [1, 2, 0]]


@pytest.mark.parametrize("to_sparse", [False, True])
@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (-2.0, "negative")])
def test_bad_values_leave_adata_unchanged(to_sparse, value, match):
    X = np.array([[1.0, 2.0], [value, 1.0]], dtype=np.float32)
    adata = ad.AnnData(sparse.csr_matrix(X) if to_sparse else X)
    with pytest.raises(InvalidExpressionError, match=match):
        cf.pp.bin_values(adata)
    assert "X_binned" not in adata.layers
    assert "X_binned" not in adata.uns


def test_missing_layer(adata):
    with pytest.raises(MissingKeyError, match="layer='counts_raw'"):
        cf.pp.bin_values(adata, layer="counts_raw")


def test_round_trip_h5ad(tmp_path, adata):
    cf.pp.bin_values(adata)
    adata.write_h5ad(tmp_path / "b.h5ad")
    back = ad.read_h5ad(tmp_path / "b.h5ad")
    assert (back.layers["X_binned"] != adata.layers["X_binned"]).nnz == 0
    assert back.uns["X_binned"]["params"]["n_bins"] == 51


def test_bin_values_average_ties():
    adata = cf.data.synthetic_counts(n_cells=20, n_genes=30, random_state=2)
    cf.pp.bin_values(adata, n_bins=11, tie_breaking="average", key_added="avg")
    assert adata.uns["avg"]["params"]["tie_breaking"] == "average"
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    binned = adata.layers["avg"].toarray() if hasattr(adata.layers["avg"], "toarray") else adata.layers["avg"]
    for x, row in zip(X, binned, strict=True):
        for v in np.unique(x[x > 0]):
            assert len(np.unique(row[x == v])) == 1
