from __future__ import annotations

import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import sparse

import cellformers
from cellformers import InvalidExpressionError
from cellformers.data import bin_expression


def _bin(X, n_bins=51, names=None, **kw):
    names = [f"c{i}" for i in range(X.shape[0])] if names is None else names
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # empty cells
        return bin_expression(X, n_bins, cell_names=names, **kw)


def test_example_without_ties():
    X = np.array([[0, 1, 5, 3, 2], [4, 0, 0, 0, 0]])
    assert _bin(X, 5, ["a", "b"]).tolist() == [[0, 1, 4, 3, 2], [4, 0, 0, 0, 0]]


def test_equal_frequency_many_values():
    rng = np.random.default_rng(0)
    X = rng.random((3, 1000)) + 0.1  # no ties: exactly 20 values per bin
    out = _bin(X, 51)
    for row in out:
        assert np.bincount(row, minlength=51)[1:].tolist() == [20] * 50


def test_ties_are_spread_but_reproducible():
    X = np.ones((1, 100))
    out = _bin(X, 11)
    assert sorted(np.bincount(out[0])[1:]) == [10] * 10  # equal frequency even when all values tie
    assert np.array_equal(out, _bin(X, 11))
    other = _bin(X, 11, ["another_cell"])
    assert not np.array_equal(out, other)  # the cell name seeds the tie order
    cellformers.settings.seed = 1
    assert not np.array_equal(out, _bin(X, 11))


def test_seed_argument_overrides_settings():
    X = np.ones((1, 50))
    assert np.array_equal(_bin(X, 11, seed=3), _bin(X, 11, seed=3))
    assert not np.array_equal(_bin(X, 11, seed=3), _bin(X, 11, seed=4))


def test_sparse_in_sparse_out_and_explicit_zeros():
    X = sparse.csr_matrix(np.array([[0.0, 2.0, 1.0], [3.0, 0.0, 0.0]], dtype=np.float32))
    X.data[X.data == 1.0] = 0.0  # an explicit stored zero
    out = _bin(X, 3)
    assert sparse.isspmatrix_csr(out)
    assert out.dtype == np.int32
    assert out.toarray().tolist() == [[0, 2, 0], [2, 0, 0]]
    assert out.nnz == 2


def test_csc_and_int_input():
    X = np.array([[0, 3, 1], [2, 2, 0]])
    assert np.array_equal(_bin(sparse.csc_matrix(X), 3).toarray(), _bin(X, 3))


def test_empty_cells_warn():
    X = np.array([[0.0, 0.0], [1.0, 2.0]])
    with pytest.warns(UserWarning, match="1 of 2 cells have no non-zero values"):
        out = bin_expression(X, 3, cell_names=["a", "b"])
    assert out.tolist() == [[0, 0], [1, 2]]


def test_few_values_spread_over_range():
    out = _bin(np.array([[1.0, 2.0, 0.0]]), 51)
    assert out.tolist() == [[25, 50, 0]]  # the top value of a cell always gets the top bin


@pytest.mark.parametrize(
    ("value", "match"),
    [(np.nan, "NaN"), (np.inf, "infinite"), (-1.0, "negative")],
)
@pytest.mark.parametrize("to_sparse", [False, True])
def test_bad_values(value, match, to_sparse):
    X = np.array([[1.0, 2.0], [value, 1.0]])
    with pytest.raises(InvalidExpressionError, match=match):
        _bin(sparse.csr_matrix(X) if to_sparse else X)


@pytest.mark.parametrize("n_bins", [1, 0, 2.5, "51", True])
def test_bad_n_bins(n_bins):
    with pytest.raises(ValueError, match="n_bins"):
        _bin(np.ones((1, 2)), n_bins)


def test_bad_shapes():
    with pytest.raises(ValueError, match="cell_names"):
        bin_expression(np.ones((2, 2)), cell_names=["a"])
    with pytest.raises(ValueError, match="2-d"):
        bin_expression(np.ones(3), cell_names=["a", "b", "c"])


def test_zero_cells():
    out = _bin(sparse.csr_matrix((0, 4), dtype=np.float32), 5, [])
    assert out.shape == (0, 4)


# ---------------------------------------------------------------- property tests
@st.composite
def _matrices(draw):
    n_cells = draw(st.integers(1, 8))
    n_genes = draw(st.integers(1, 15))
    # few distinct small values: heavy ties, like counts
    X = draw(arrays(np.float32, (n_cells, n_genes), elements=st.sampled_from([0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 7.5])))
    n_bins = draw(st.integers(2, 12))
    return X, n_bins


@settings(max_examples=50, deadline=None)
@given(_matrices(), st.integers(1, 9), st.randoms(use_true_random=False))
def test_binning_properties(case, chunk_size, rnd):
    X, n_bins = case
    names = [f"cell_{i}" for i in range(X.shape[0])]
    out = _bin(X, n_bins, names)
    B = n_bins - 1

    # zeros -> 0, non-zeros -> 1..B
    assert np.array_equal(out == 0, X == 0)
    assert out[X > 0].min(initial=B) >= 1
    assert out.max(initial=0) <= B

    for x, b in zip(X, out, strict=True):
        nz = x > 0
        m = int(nz.sum())
        if m == 0:
            continue
        # monotone: a larger value never gets a smaller bin
        xs, bs = x[nz], b[nz]
        assert all(bs[i] <= bs[j] for i in range(m) for j in range(m) if xs[i] < xs[j])
        # equal frequency: bins of consecutive ranks; the top value gets B
        assert bs.max() == B
        if m >= B:
            counts = np.bincount(bs, minlength=B + 1)[1:]
            assert counts.max() - counts.min() <= 1

    # chunking does not matter
    assert np.array_equal(_bin(X, n_bins, names, chunk_size=chunk_size), out)
    # cell order does not matter
    perm = list(range(X.shape[0]))
    rnd.shuffle(perm)
    assert np.array_equal(_bin(X[perm], n_bins, [names[i] for i in perm]), out[perm])
    # other cells do not matter
    assert np.array_equal(_bin(X[:1], n_bins, names[:1]), out[:1])
    # sparse and dense agree
    assert np.array_equal(_bin(sparse.csr_matrix(X), n_bins, names).toarray(), out)
    # invariant to per-cell scaling and monotone transforms (log1p of normalized values)
    scaled = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4).astype(np.float32)
    assert np.array_equal(_bin(scaled, n_bins, names), out)


# ---------------------------------------------------------------- the torch definition
def test_bin_cells_is_the_definition_of_bin_expression():
    import torch

    from cellformers._utils import registered_cell_seeds
    from cellformers.data._binning import bin_cells

    rng = np.random.default_rng(3)
    X = rng.poisson(0.7, size=(12, 80)).astype(np.float32)  # heavy ties
    names = [f"cell{i}" for i in range(12)]
    seeds = torch.as_tensor(registered_cell_seeds(names))
    got = bin_cells(torch.as_tensor(X), seeds, 11)
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), _bin(X, 11, names))
    # rows of non-zeros with their columns (the sparse path) give the same bins
    cols = torch.as_tensor(np.argsort(X == 0, axis=1, kind="stable"))
    vals = torch.gather(torch.as_tensor(X), 1, cols)
    packed = bin_cells(vals, seeds, 11, positions=cols)
    np.testing.assert_array_equal(torch.gather(got, 1, cols).numpy(), packed.numpy())


def test_bin_cells_orders_ties_by_the_cell_draw_then_the_column():
    import torch

    from cellformers._utils import counter_uniform
    from cellformers.data._binning import BINNING_SALT, bin_cells

    x = torch.ones(1, 6)
    seed = torch.tensor([42])
    u = counter_uniform(seed, 6, salt=BINNING_SALT)[0]
    rank = torch.argsort(torch.argsort(u, stable=True), stable=True)
    assert bin_cells(x, seed, 7)[0].tolist() == (rank + 1).tolist()  # 6 tied values over 6 bins: the draw's order
    # equal draws fall back to the column: 24-bit draws collide at tens of thousands of genes
    n = 5000
    big = bin_cells(torch.ones(1, n), seed, n + 1)[0]
    u = counter_uniform(seed, n, salt=BINNING_SALT)[0]
    order = np.lexsort((np.arange(n), u.numpy()))
    assert big[torch.as_tensor(order)].tolist() == list(range(1, n + 1))


def test_average_ties_share_the_bin_of_their_mean_rank():
    from scipy.stats import rankdata

    rng = np.random.default_rng(3)
    X = rng.poisson(1.2, size=(30, 80)).astype(np.float32)  # many tied 1s and 2s
    X[:, :5] += rng.poisson(15, size=(30, 5))
    out = _bin(X, 11, ties="average")
    for x, row in zip(X, out, strict=True):
        nz = x > 0
        m = nz.sum()
        mid = rankdata(x[nz], method="average")  # 1-based mean rank of each tie group
        np.testing.assert_array_equal(row[nz], np.ceil(mid * 10 / m - 1e-9).astype(int))
        assert (row[~nz] == 0).all()
        for v in np.unique(x[nz]):  # equal values, one bin; larger values never a smaller bin
            assert len(np.unique(row[x == v])) == 1
        order = np.argsort(x[nz], kind="stable")
        assert (np.diff(row[nz][order]) >= 0).all()
    # without ties "average" and "draw" agree
    Y = rng.random((4, 50)) + 0.1
    np.testing.assert_array_equal(_bin(Y, 11, ties="average"), _bin(Y, 11))


def test_average_ties_sparse_equals_dense():
    rng = np.random.default_rng(4)
    X = rng.poisson(0.8, size=(12, 40)).astype(np.float32)
    dense = _bin(X, 7, ties="average")
    np.testing.assert_array_equal(_bin(sparse.csr_matrix(X), 7, ties="average").toarray(), dense)


def test_redraw_changes_the_order_of_ties_only():
    import torch

    from cellformers.data._binning import bin_cells

    x = torch.tensor([[0.0, 1, 1, 1, 1, 1, 1, 2, 7, 3, 1, 1]])
    seeds = torch.tensor([5])
    torch.manual_seed(0)
    draws = {tuple(bin_cells(x, seeds, 6, ties="redraw")[0].tolist()) for _ in range(20)}
    assert len(draws) > 1  # a new order of the tied 1s at each call
    fixed = bin_cells(x, seeds, 6)
    for d in draws:  # untied values keep their bin; ties keep their multiset of bins
        d = np.array(d)
        assert (d[[0, 7, 8, 9]] == fixed[0, [0, 7, 8, 9]].numpy()).all()
        assert sorted(d[x[0].numpy() == 1]) == sorted(fixed[0][x[0] == 1].tolist())
    assert torch.equal(bin_cells(x, seeds, 6), fixed)  # "draw" is the same at every call


def test_bad_tie_rule():
    import torch

    from cellformers.data._binning import bin_cells

    with pytest.raises(ValueError, match="`ties` must be one of"):
        bin_cells(torch.ones(1, 3), torch.zeros(1), 5, ties="mean")
    with pytest.raises(ValueError, match="fixed rule for a stored layer"):
        _bin(np.ones((1, 3)), 5, ties="redraw")
