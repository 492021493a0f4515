from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

from cellformers import InvalidExpressionError, MissingKeyError, NotCountsError
from cellformers._utils import check_counts, check_key, get_matrix, iter_row_chunks, looks_like_counts


@pytest.fixture(params=["dense", "csr", "csc"])
def fmt(request):
    return request.param


def _as(fmt, X):
    return {"dense": np.asarray, "csr": sparse.csr_matrix, "csc": sparse.csc_matrix}[fmt](X)


def test_counts_pass(fmt):
    X = np.random.default_rng(0).poisson(2, (20, 10)).astype(np.float32)
    check_counts(_as(fmt, X))


def test_lognormalized_rejected_with_fix(fmt):
    X = np.log1p(np.random.default_rng(0).poisson(2, (20, 10)) * 1.37).astype(np.float32)
    with pytest.raises(NotCountsError, match="counts_from_normalized"):
        check_counts(_as(fmt, X), layer="lognorm")


@pytest.mark.parametrize(("value", "match"), [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")])
def test_bad_values(fmt, value, match):
    X = np.ones((5, 4), dtype=np.float32)
    X[2, 1] = value
    with pytest.raises(InvalidExpressionError, match=match):
        check_counts(_as(fmt, X))


def test_float32_recovered_counts_tolerated():
    # counts recovered from float32 log values deviate ~1e-3 relative at high counts
    X = np.array([[1.0, 2.0, 850.11, 0.0]], dtype=np.float32)
    assert looks_like_counts(X)
    assert not looks_like_counts(np.array([[0.69, 1.1]]))


def test_check_key_names_argument():
    adata = ad.AnnData(np.ones((3, 2), dtype=np.float32))
    with pytest.raises(MissingKeyError, match=r"`layer='counts'` is not a key of `adata.layers`"):
        get_matrix(adata, "counts")
    with pytest.raises(MissingKeyError, match="batch_key"):
        check_key(adata, "obs", "donor", arg="batch_key")


def test_iter_row_chunks_backed(tmp_path):
    X = sparse.random(37, 11, density=0.3, format="csr", dtype=np.float32, random_state=0)
    path = tmp_path / "a.h5ad"
    ad.AnnData(X).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    blocks = [b for _, _, b in iter_row_chunks(backed.X, chunk_size=10, dense=True)]
    np.testing.assert_allclose(np.vstack(blocks), X.toarray())
    assert not looks_like_counts(backed.X)  # uniform floats are not counts
    backed.file.close()
