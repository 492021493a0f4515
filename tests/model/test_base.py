"""The shared model plumbing, exercised with a tiny linear autoencoder module."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.module.base import LossOutput, auto_move_data

from cellformers import GeneMappingError, NotCountsError
from cellformers._constants import CELL_SEED_OBS_COLUMN, REGISTRY_KEYS_CF
from cellformers.data import GeneVocab, synthetic_counts
from cellformers.model.base import CellformersModel
from cellformers.module import GeneTokenModule


class _ToyModule(GeneTokenModule):
    def __init__(self, gene_token_ids, n_tokens, d=8):
        super().__init__(gene_token_ids, n_tokens)
        self.enc = torch.nn.Linear(self.n_genes, d)
        self.dec = torch.nn.Linear(d, self.n_genes)

    def _get_inference_input(self, tensors, **kwargs):
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    def inference(self, x):
        x = torch.log1p(self.select_genes(x))
        return {"z": self.enc(x), "x": x}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {"z": inference_outputs["z"]}

    def generative(self, z):
        return {"pred": self.dec(z)}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs):
        per_cell = ((generative_outputs["pred"].float() - inference_outputs["x"]) ** 2).mean(-1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, extra_metrics={"mse": per_cell.mean()})


class _ToyModel(CellformersModel):
    _model_name = "toy"

    def __init__(self, adata, vocab=None, d=8):
        super().__init__(adata)
        self.vocab, ids = self._resolve_vocab(adata, vocab)
        self.module = _ToyModule(ids, len(self.vocab), d=d)
        self._model_summary_string = "toy"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata, layer=None, batch_key=None, labels_key=None, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        cls._prepare_setup(adata, layer)
        manager = AnnDataManager(fields=cls._anndata_fields(layer, batch_key, labels_key), setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    def get_latent_representation(self, adata=None, indices=None, batch_size=None, *, precision=None):
        return self._predict_batches(
            lambda t: self.module.inference(t[REGISTRY_KEYS.X_KEY])["z"], adata, indices, batch_size, precision
        )


@pytest.fixture
def adata():
    return synthetic_counts(n_cells=120, n_genes=30, random_state=0)


def test_setup_rejects_lognormalized_without_touching_adata(adata):
    adata.X = np.log1p(adata.X.toarray() * 1.3)
    before = set(adata.obs.columns)
    with pytest.raises(NotCountsError):
        _ToyModel.setup_anndata(adata)
    assert set(adata.obs.columns) == before


def test_train_predict_save_load(adata, tmp_path):
    _ToyModel.setup_anndata(adata, batch_key="batch", labels_key="labels")
    assert CELL_SEED_OBS_COLUMN in adata.obs
    model = _ToyModel(adata)
    model.train(max_epochs=8, batch_size=32, plan_kwargs={"lr": 1e-2}, precision="bf16-mixed", enable_progress_bar=False)
    hist = model.history_["mse_train"]["mse_train"].to_numpy()
    assert hist[-1] < hist[0]
    z = model.get_latent_representation()
    assert z.shape == (adata.n_obs, 8)
    np.testing.assert_allclose(model.get_latent_representation(batch_size=7), z, atol=1e-5)
    model.save(tmp_path / "m", overwrite=True)
    loaded = _ToyModel.load(tmp_path / "m", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), z, atol=1e-6)


def test_cell_seed_tensor_registered(adata):
    _ToyModel.setup_anndata(adata)
    model = _ToyModel(adata)
    dl = model._make_data_loader(adata=adata, batch_size=10)
    seeds = next(iter(dl))[REGISTRY_KEYS_CF.CELL_SEED]
    assert seeds.shape == (10, 1)
    assert torch.all(seeds == torch.round(seeds))


def test_vocab_with_unmapped_genes(adata):
    vocab = GeneVocab(list(adata.var_names[:20]))
    _ToyModel.setup_anndata(adata)
    model = _ToyModel(adata, vocab=vocab)
    assert model.module.n_genes == 20
    with pytest.raises(GeneMappingError):
        _ToyModel(adata, vocab=GeneVocab(["NOT_A_GENE"]))
