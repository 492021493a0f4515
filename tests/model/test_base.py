"""The shared model plumbing, exercised with a tiny linear autoencoder module."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cellformers import GeneMappingError, NotCountsError
from cellformers._constants import CELL_SEED_OBS_COLUMN, REGISTRY_KEYS_CF
from cellformers.data import GeneVocab, synthetic_counts


@pytest.fixture
def adata():
    return synthetic_counts(n_cells=120, n_genes=30, random_state=0)


def test_setup_rejects_lognormalized_without_touching_adata(adata, toy_model_cls):
    _ToyModel = toy_model_cls
    adata.X = np.log1p(adata.X.toarray() * 1.3)
    before = set(adata.obs.columns)
    with pytest.raises(NotCountsError):
        _ToyModel.setup_anndata(adata)
    assert set(adata.obs.columns) == before


def test_train_predict_save_load(adata, tmp_path, toy_model_cls):
    _ToyModel = toy_model_cls
    _ToyModel.setup_anndata(adata, batch_key="batch", labels_key="labels")
    assert CELL_SEED_OBS_COLUMN in adata.obs
    model = _ToyModel(adata)
    model.train(
        max_epochs=8, batch_size=32, plan_kwargs={"lr": 1e-2}, precision="bf16-mixed", enable_progress_bar=False
    )
    hist = model.history_["mse_train"]["mse_train"].to_numpy()
    assert hist[-1] < hist[0]
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 8)
    np.testing.assert_allclose(model.get_latent_representation(batch_size=7), z, atol=1e-5)
    model.save(tmp_path / "m", overwrite=True)
    loaded = _ToyModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)


def test_cell_seed_tensor_registered(adata, toy_model_cls):
    _ToyModel = toy_model_cls
    _ToyModel.setup_anndata(adata)
    model = _ToyModel(adata)
    dl = model._make_data_loader(adata=adata, batch_size=10)
    seeds = next(iter(dl))[REGISTRY_KEYS_CF.CELL_SEED]
    assert seeds.shape == (10, 1)
    assert torch.all(seeds == torch.round(seeds))


def test_vocab_with_unmapped_genes(adata, toy_model_cls):
    _ToyModel = toy_model_cls
    vocab = GeneVocab(list(adata.var_names[:20]))
    _ToyModel.setup_anndata(adata)
    model = _ToyModel(adata, vocab=vocab)
    assert model.module.n_genes == 20
    with pytest.raises(GeneMappingError):
        _ToyModel(adata, vocab=GeneVocab(["NOT_A_GENE"]))


def test_second_train_call_runs_in_training_mode(adata, toy_model_cls):
    from lightning.pytorch.callbacks import Callback

    seen = []

    class _Mode(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            seen.append(pl_module.module.training)

    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    kw = {"max_epochs": 1, "batch_size": 64, "enable_progress_bar": False}
    model.train(**kw)
    model.get_latent_representation()
    model.module.eval()
    model.train(**kw, callbacks=[_Mode()])
    assert seen
    assert all(seen)


# ---------------------------------------------------------------- the vocabulary map_genes recorded
def test_model_uses_vocab_recorded_by_map_genes(adata, toy_model_cls, seeded_references, caplog):
    import logging

    import cellformers as cf

    cf.pp.map_genes(adata, vocab="scfoundation-19264")
    toy_model_cls.setup_anndata(adata)
    logger = logging.getLogger("cellformers")
    logger.addHandler(caplog.handler)
    try:
        model = toy_model_cls(adata)  # no `vocab=`: the one map_genes used
    finally:
        logger.removeHandler(caplog.handler)
    assert model.vocab.name == "scfoundation-19264"
    assert "using the vocabulary 'scfoundation-19264' that `cellformers.pp.map_genes` recorded" in caplog.text
    ids = adata.var["cellformers_token_id"].to_numpy()
    np.testing.assert_array_equal(model.module.input_gene_ids.numpy(), ids[ids >= 0])
    assert [model.vocab.tokens[i] for i in ids[ids >= 0]] == list(adata.var_names[ids >= 0])


def test_model_refuses_other_vocab_than_map_genes(adata, toy_model_cls, seeded_references):
    import cellformers as cf

    cf.pp.map_genes(adata, vocab="scfoundation-19264")
    toy_model_cls.setup_anndata(adata)
    with pytest.raises(GeneMappingError, match="vocab='scfoundation-19264'"):
        toy_model_cls(adata, vocab="scgpt-default")
    assert toy_model_cls(adata, vocab="scfoundation-19264").vocab.name == "scfoundation-19264"


def test_model_custom_vocab_of_map_genes_must_be_passed(adata, toy_model_cls):
    import cellformers as cf

    vocab = GeneVocab(list(adata.var_names[::-1]) + ["EXTRA1", "EXTRA2"])
    cf.pp.map_genes(adata, vocab)
    toy_model_cls.setup_anndata(adata)
    with pytest.raises(GeneMappingError, match="pass the same vocabulary"):
        toy_model_cls(adata)
    model = toy_model_cls(adata, vocab=vocab)
    ids = adata.var["cellformers_token_id"].to_numpy()
    np.testing.assert_array_equal(model.module.input_gene_ids.numpy(), ids)


def test_model_rebuilds_data_vocab_of_map_genes(adata, toy_model_cls):
    import cellformers as cf

    cf.pp.map_genes(adata, GeneVocab.from_adata(adata))  # as `make demo` does
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    assert model.vocab.genes == list(adata.var_names)


def test_setup_registers_the_key_map_genes_wrote_and_the_model_reads_it():
    import cellformers as cf

    adata = cf.data.synthetic_counts(n_cells=30, n_genes=20)
    vocab = GeneVocab(["EXTRA", *list(adata.var_names[::-1])], name="reversed")
    cf.pp.map_genes(adata, vocab, key_added="my_ids")
    cf.model.ScFormer.setup_anndata(adata, gene_mapping_key="my_ids")
    assert cf.model.ScFormer._get_most_recent_anndata_manager(adata).registry["setup_args"]["gene_mapping_key"] == (
        "my_ids"
    )
    with pytest.raises(GeneMappingError, match="pass the same vocabulary"):
        cf.model.ScFormer(adata, preset="tiny")  # "reversed" is not a named reference: it cannot be rebuilt
    model = cf.model.ScFormer(adata, vocab=vocab, preset="tiny")
    np.testing.assert_array_equal(model.module.input_gene_ids.numpy(), adata.var["my_ids"].to_numpy())


def test_setup_refuses_a_gene_mapping_key_that_map_genes_did_not_write():
    import cellformers as cf
    from cellformers import MissingKeyError

    adata = cf.data.synthetic_counts(n_cells=30, n_genes=20)
    with pytest.raises(MissingKeyError, match="gene_mapping_key"):
        cf.model.ScFormer.setup_anndata(adata, gene_mapping_key="my_ids")
    adata.var["my_ids"] = np.arange(adata.n_vars)
    with pytest.raises(MissingKeyError, match="key_added='my_ids'"):
        cf.model.ScFormer.setup_anndata(adata, gene_mapping_key="my_ids")
    assert "_scvi_uuid" not in adata.uns  # nothing was registered


@pytest.mark.parametrize("name", ["XTrimoGene", "ScFormer", "ScPaLM"])
def test_every_model_records_the_vocabulary_it_resolved(name):
    import cellformers as cf

    cls = getattr(cf.model, name)
    adata = cf.data.synthetic_counts(n_cells=30, n_genes=20)
    cls.setup_anndata(adata)
    model = cls(adata, preset="tiny")  # vocab=None: built from the data
    recorded = model.init_params_["non_kwargs"]["vocab"]
    assert recorded == model.vocab.to_dict()
    rebuilt = cls(adata, vocab=recorded, preset="tiny")  # what `load` does with it
    assert rebuilt.vocab.genes == model.vocab.genes
