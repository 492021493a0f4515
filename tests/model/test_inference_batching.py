"""Batching of ``CellformersModel._predict_batches``: length-sorted minibatches, output order, backed AnnData."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS

from cellformers._utils import row_nnz
from cellformers.data import synthetic_counts


@pytest.fixture
def adata():
    a = synthetic_counts(n_cells=90, n_genes=40, random_state=1)
    # cells with very different numbers of expressed genes
    x = a.X.toarray()
    rng = np.random.default_rng(0)
    for i in range(a.n_obs):
        x[i, rng.permutation(a.n_vars)[: rng.integers(0, a.n_vars - 2)]] = 0
    a.X = sparse.csr_matrix(x)
    return a


@pytest.fixture
def sorted_toy_cls(toy_model_cls):
    class _SortedToy(toy_model_cls):
        _sort_inference_by_length = True

    return _SortedToy


def _per_cell(model, adata):
    """Expected rows: the model applied to one cell at a time, in cell order."""
    return np.concatenate(
        [model.get_latent_representation(adata, indices=[i], batch_size=1) for i in range(adata.n_obs)]
    )


@pytest.mark.parametrize("indices", [None, "shuffled", "repeated"])
def test_sorted_batches_keep_the_requested_order(adata, sorted_toy_cls, indices):
    sorted_toy_cls.setup_anndata(adata)
    model = sorted_toy_cls(adata)
    model.is_trained_ = True
    expected = _per_cell(model, adata)
    rng = np.random.default_rng(3)
    idx = {"shuffled": rng.permutation(adata.n_obs), "repeated": rng.integers(0, adata.n_obs, 70), None: None}[indices]
    z = model.get_latent_representation(indices=idx, batch_size=16)
    want = expected if idx is None else expected[idx]
    np.testing.assert_allclose(z, want, atol=1e-5)


def test_minibatches_hold_cells_of_similar_length(adata, sorted_toy_cls, toy_model_cls):
    nnz = row_nnz(adata.X)

    def spreads(cls):
        cls.setup_anndata(adata)
        model = cls(adata)
        model.is_trained_ = True
        seen = []

        def fn(t):
            x = t[REGISTRY_KEYS.X_KEY]
            seen.append((x > 0).sum(1))
            return x[:, :1]

        model._predict_batches(fn, batch_size=16)
        return [int(s.max() - s.min()) for s in seen], torch.cat(seen).numpy()

    sorted_spread, sorted_seen = spreads(sorted_toy_cls)
    plain_spread, plain_seen = spreads(toy_model_cls)
    np.testing.assert_array_equal(np.sort(sorted_seen), np.sort(nnz))
    np.testing.assert_array_equal(plain_seen, nnz)  # unsorted models keep the cell order
    assert sum(sorted_spread) < sum(plain_spread) / 2


def _minibatch_shapes(model, **kwargs):
    shapes = []

    def fn(t):
        x = t[REGISTRY_KEYS.X_KEY]
        shapes.append((x.shape[0], int((x > 0).sum(1).max())))
        return x[:, :1]

    model._predict_batches(fn, **kwargs)
    return shapes


@pytest.mark.parametrize("budget", [None, 1, 60, 200, 10_000])
def test_token_budget_sizes_minibatches_by_their_longest_cell(adata, sorted_toy_cls, budget, monkeypatch):
    import cellformers as cf

    monkeypatch.setattr(cf.settings, "inference_token_budget", budget)
    sorted_toy_cls.setup_anndata(adata)
    model = sorted_toy_cls(adata)
    model.is_trained_ = True
    shapes = _minibatch_shapes(model, batch_size=16)
    assert sum(n for n, _ in shapes) == adata.n_obs
    assert all(n <= 16 for n, _ in shapes)
    longest = [length for _, length in shapes]
    assert longest == sorted(longest, reverse=True)  # longest cells first
    if budget is None or budget >= 16 * (adata.n_vars + 1):
        assert [n for n, _ in shapes[:-1]] == [16] * (len(shapes) - 1)
    else:
        # each minibatch holds as many cells as the budget allows for its longest one (at least one)
        assert all(n == min(16, max(1, budget // (length + 1))) for n, length in shapes[:-1])
    # and the rows still come back in cell order, as one cell at a time gives them
    np.testing.assert_allclose(model.get_latent_representation(batch_size=16), _per_cell(model, adata), atol=1e-5)


def test_token_budget_leaves_models_of_fixed_length_alone(adata, toy_model_cls, monkeypatch):
    import cellformers as cf

    monkeypatch.setattr(cf.settings, "inference_token_budget", 1)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    model.is_trained_ = True
    assert [n for n, _ in _minibatch_shapes(model, batch_size=16)][:-1] == [16] * (adata.n_obs // 16)


@pytest.mark.parametrize("sort", [False, True])
def test_backed_anndata_rows_in_requested_order(adata, tmp_path, toy_model_cls, sorted_toy_cls, sort):
    """h5py needs ascending indices: the rows of a shuffled request must still come back in the requested order."""
    cls = sorted_toy_cls if sort else toy_model_cls
    cls.setup_anndata(adata)
    model = cls(adata)
    model.is_trained_ = True
    idx = np.random.default_rng(5).permutation(adata.n_obs)
    expected = model.get_latent_representation(indices=idx, batch_size=16)
    np.testing.assert_allclose(expected, _per_cell(model, adata)[idx], atol=1e-5)

    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    z = model.get_latent_representation(backed, indices=idx, batch_size=16)
    np.testing.assert_allclose(z, expected, atol=1e-5)
    backed.file.close()


def test_xtrimogene_embedding_independent_of_batching(adata):
    from cellformers.model import XTrimoGene

    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(
        adata,
        preset="3M",
        encoder_layers=1,
        encoder_dim=16,
        encoder_heads=2,
        encoder_ff=32,
        decoder_layers=1,
        decoder_dim=16,
        decoder_heads=2,
        decoder_ff=32,
    )
    model.is_trained_ = True
    assert model._sort_inference_by_length
    one_by_one = model.get_latent_representation(batch_size=1)
    batched = model.get_latent_representation(batch_size=32)
    np.testing.assert_allclose(batched, one_by_one, atol=1e-4)


@pytest.mark.parametrize("name", ["XTrimoGene", "ScFormer", "ScPaLM"])
def test_int8_inference_agrees_with_float32_and_leaves_the_model_alone(name):
    import cellformers as cf

    a = synthetic_counts(n_cells=64, n_genes=48, random_state=2)
    cls = getattr(cf.model, name)
    cls.setup_anndata(a)
    model = cls(a, preset="tiny")
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    z = model.get_latent_representation(precision="32")
    q = model.get_latent_representation(precision="int8")
    cos = (z * q).sum(1) / np.linalg.norm(z, axis=1) / np.linalg.norm(q, axis=1)
    assert cos.min() > 0.99
    assert not np.array_equal(z, q)  # the quantized copy did run
    # the model keeps its float module and weights, in the mode it was in
    assert not any("quantized" in type(m).__module__ for m in model.module.modules())
    after = model.module.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    np.testing.assert_array_equal(model.get_latent_representation(precision="32"), z)


def test_int8_copy_quantizes_only_the_transformer_blocks():
    import cellformers as cf
    from cellformers._utils import int8_copy

    a = synthetic_counts(n_cells=20, n_genes=30, random_state=3)
    cf.model.XTrimoGene.setup_anndata(a)
    model = cf.model.XTrimoGene(a, preset="tiny")
    q = int8_copy(model.module)
    quantized = [n for n, m in q.named_modules() if "quantized" in type(m).__module__]
    assert quantized
    assert all(".blocks." in n or ".layers." in n for n in quantized), quantized
    with pytest.raises(ValueError, match="CPU only"):
        int8_copy(model.module, "cuda")


def test_one_autocast_region_per_call(adata, toy_model_cls, monkeypatch):
    """Autocast keeps the bf16 copies of the weights only while it is entered: once per call, not per minibatch
    (per minibatch, the weights were cast again for every one: ~10% of a bf16 XTrimoGene-10M embedding)."""
    import cellformers.model.base._inference as inference

    entered = []
    original = inference.autocast_context

    def counting(device, precision):
        entered.append(precision)
        return original(device, precision)

    monkeypatch.setattr(inference, "autocast_context", counting)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    model.is_trained_ = True
    out = model.get_latent_representation(adata, batch_size=16, precision="bf16")
    assert out.shape[0] == adata.n_obs
    assert entered == ["bf16"]
