from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

import cellformers as cf
from cellformers import NotCountsError
from cellformers.data import GeneVocab, synthetic_counts
from cellformers.model import ScFormer

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16}


@pytest.fixture(scope="module")
def trained():
    adata = synthetic_counts(n_cells=200, n_genes=50, n_batches=2, n_labels=3, random_state=0)
    ScFormer.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = ScFormer(adata, **TINY)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    return adata, model


def test_defaults_follow_the_paper():
    adata = synthetic_counts(n_cells=40, n_genes=20)
    ScFormer.setup_anndata(adata, batch_key="batch")
    m = ScFormer(adata).module
    assert len(m.encoder.layers) == 4
    assert m.d_model == 128
    assert m.encoder.layers[0].attn.n_heads == 4
    assert m.encoder.layers[0].ff[0].out_features == 128
    assert m.mask_ratio == 0.4
    assert m.ecs.beta == 0.6
    assert m.ecs_weight == 10.0
    assert m.mgm_loss == "ce"
    assert m.use_dar
    assert m.use_dsbn
    assert m.include_zero_genes
    assert m.pooling == "cls"
    ScFormer.setup_anndata(adata)  # no batch: DAR/DSBN off
    m = ScFormer(adata, **TINY).module
    assert not m.use_dar
    assert not m.use_dsbn


def test_training_history_and_getters(trained):
    adata, model = trained
    h = model.history_
    for key in ("mgm_loss_train", "mvc_loss_train", "ecs_loss_train", "dar_loss_train", "mgm_loss_validation"):
        assert key in h, key
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 16)
    assert np.isfinite(z).all()
    assert model.get_latent_representation(pooling="mean").shape == (adata.n_obs, 16)
    imp = model.get_imputed_expression(indices=np.arange(10))
    assert imp.shape == (10, adata.n_vars)
    assert np.isfinite(imp).all()
    emb = model.get_gene_embeddings()
    assert emb.shape == (adata.n_vars, 16)
    assert list(emb.index) == list(adata.var_names)


def test_embeddings_independent_of_batch_size_and_order(trained):
    adata, model = trained
    z = model.get_latent_representation(batch_size=64)
    idx = np.arange(adata.n_obs)[::-1]
    z2 = model.get_latent_representation(indices=idx, batch_size=7)
    np.testing.assert_allclose(z2, z[idx], atol=1e-5)


def test_save_load_roundtrip(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "m", overwrite=True)
    loaded = ScFormer.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    assert loaded.vocab == model.vocab


def test_gene_embeddings_tool(trained):
    adata, model = trained
    out = cf.tl.gene_embeddings(adata, model, copy=True)
    assert out.varm["scformer_gene_embeddings"].shape == (adata.n_vars, 16)


def test_vocab_union_and_unknown_genes_are_nan():
    adata = synthetic_counts(n_cells=60, n_genes=30)
    vocab = GeneVocab(list(adata.var_names[:25]) + ["EXTRA1"])  # last 5 genes unknown
    ScFormer.setup_anndata(adata)
    model = ScFormer(adata, vocab=vocab, **TINY)
    model.train(max_epochs=1, batch_size=30, enable_progress_bar=False)
    imp = model.get_imputed_expression(source="mvc")
    assert np.isnan(imp[:, 25:]).all()
    assert np.isfinite(imp[:, :25]).all()
    assert len(model.get_gene_embeddings()) == 25


def test_group_by_batch_minibatches_are_single_batch(trained):
    adata, model = trained
    from cellformers.train import BatchGroupedDataSplitter

    splitter = BatchGroupedDataSplitter(model.adata_manager, group_by_batch=True, batch_size=16)
    splitter.setup()
    n = 0
    for tensors in splitter.train_dataloader():
        b = tensors[REGISTRY_KEYS.BATCH_KEY]
        assert b.shape[1] == 1
        assert torch.all(b == b[0])
        n += b.shape[0]
    assert n == len(splitter.train_idx)


def test_external_tokens_from_var():
    adata = synthetic_counts(n_cells=40, n_genes=20)
    adata.var["pathway"] = np.arange(20) % 3
    ScFormer.setup_anndata(adata)
    model = ScFormer(adata, external_tokens="pathway", **TINY)
    assert model.module.n_external == 3
    with pytest.raises(cf.MissingKeyError):
        ScFormer(adata, external_tokens="nope", **TINY)


def test_rejects_log_normalized():
    import scanpy as sc

    adata = synthetic_counts(n_cells=40, n_genes=20)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(NotCountsError):
        ScFormer.setup_anndata(adata)


def test_ecs_warmup_callback():
    adata = synthetic_counts(n_cells=60, n_genes=20)
    ScFormer.setup_anndata(adata)
    model = ScFormer(adata, **TINY)
    model.train(max_epochs=2, batch_size=30, ecs_warmup_epochs=1, enable_progress_bar=False)
    assert model.module.ecs_active
    assert "ecs_loss_train" in model.history_


# ---------------------------------------------------------------- a whole gene set as tokens (issue 20)
def _wide_adata(n_genes: int):
    import anndata as ad
    from scipy import sparse

    rng = np.random.default_rng(0)
    X = sparse.random(
        40, n_genes, density=0.05, format="csr", random_state=rng, data_rvs=lambda k: rng.integers(1, 5, k)
    )
    adata = ad.AnnData(X.astype(np.float32))
    adata.var_names = [f"G{i}" for i in range(n_genes)]
    adata.obs_names = [f"c{i}" for i in range(40)]
    cf.model.ScFormer.setup_anndata(adata)
    return adata


TINY_WIDE = {"n_layers": 1, "d_model": 8, "n_heads": 2, "d_ff": 8}


def test_whole_gene_set_warns_with_the_expected_cost():
    adata = _wide_adata(2400)
    with pytest.warns(UserWarning, match=r"2400 gene tokens per cell") as record:
        cf.model.ScFormer(adata, **TINY_WIDE)
    msg = str(record[0].message)
    assert "4.0x" in msg  # (2401 / 1201)^2
    assert "GiB of attention scores" in msg
    assert "highly_variable_genes" in msg
    assert "max_length=1200" in msg
    assert "include_zero_genes=False" in msg


@pytest.mark.parametrize(
    ("n_genes", "options"),
    [(1200, {}), (2400, {"max_length": 1200}), (2400, {"include_zero_genes": False})],
)
def test_paper_length_or_a_cap_does_not_warn(n_genes, options):
    import warnings

    adata = _wide_adata(n_genes)
    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        cf.model.ScFormer(adata, **TINY_WIDE, **options)


def test_dar_ganin_schedule_ramps_the_reversed_gradient():
    import cellformers as cf

    adata = cf.data.synthetic_counts(n_cells=96, n_genes=20)
    cf.model.ScFormer.setup_anndata(adata, batch_key="batch")
    model = cf.model.ScFormer(adata, n_layers=1, d_model=8, n_heads=2, d_ff=8, use_ecs=False, grad_reverse_lambda=2.0)
    seen = []
    reverse = model.module.discriminator.reverse
    original = type(reverse).forward

    def spy(self, x):
        if self.training:  # training steps only (validation does not backpropagate)
            seen.append(self.lambda_)
        return original(self, x)

    type(reverse).forward = spy
    try:
        model.train(max_epochs=2, batch_size=16, dar_schedule="ganin", enable_progress_bar=False)
    finally:
        type(reverse).forward = original
    assert seen[0] == pytest.approx(0.0, abs=1e-6)  # starts at 0
    assert max(seen) < 2.0
    assert seen[-1] > seen[1]  # grows
    assert reverse.lambda_ == 2.0  # restored after training
    with pytest.raises(ValueError, match="dar_schedule"):
        model.train(max_epochs=1, dar_schedule="linear", enable_progress_bar=False)
