"""``row_nnz``: expressed genes per cell for in-memory and backed matrices."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from cellformers._utils import row_nnz


@pytest.fixture
def dense():
    rng = np.random.default_rng(0)
    x = rng.poisson(0.7, size=(57, 23)).astype(np.float32)
    x[3] = 0  # an empty cell
    return x


@pytest.mark.parametrize("kind", ["dense", "csr", "csc", "backed_csr", "backed_csc", "backed_dense"])
def test_row_nnz(dense, kind, tmp_path):
    expected = np.count_nonzero(dense, axis=1)
    if kind.startswith("backed"):
        fmt = kind.split("_")[1]
        x = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[fmt](dense)
        path = tmp_path / f"{kind}.h5ad"
        ad.AnnData(x).write_h5ad(path)
        adata = ad.read_h5ad(path, backed="r")
        got = row_nnz(adata.X, chunk_size=10)
        adata.file.close()
    else:
        x = {"dense": dense, "csr": sparse.csr_matrix(dense), "csc": sparse.csc_matrix(dense)}[kind]
        got = row_nnz(x, chunk_size=10)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, expected)
