"""Checkpoints of the package's own models: saved, looked up by class name, and reloaded to identical embeddings."""

from __future__ import annotations

import json

import numpy as np
import pytest

import cellformers.model as models
from cellformers.data import synthetic_counts
from cellformers.pretrained import load_pretrained, pack_checkpoint, save_pretrained

TINY = {
    "XTrimoGene": {
        "preset": "3M",
        "encoder_layers": 1,
        "encoder_dim": 16,
        "encoder_heads": 2,
        "encoder_ff": 16,
        "decoder_layers": 1,
        "decoder_dim": 16,
        "decoder_heads": 2,
        "decoder_ff": 16,
        "value_embedding": "equalbin",  # a data-fitted buffer that is a view into a larger tensor
    },
    "ScFormer": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16},
    "ScPaLM": {
        "preset": "small",
        "n_hidden": 16,
        "n_layers": 1,
        "n_heads": 2,
        "n_intermediate": 16,
        "n_pathway_tokens": 8,
        "n_codes": 8,
    },
}


def _adata():
    return synthetic_counts(n_cells=40, n_genes=30, n_batches=2, n_labels=2, random_state=3)


@pytest.mark.parametrize("name", sorted(TINY))
def test_package_model_round_trip(name, tmp_path):
    cls = getattr(models, name)
    adata = _adata()
    cls.setup_anndata(adata, layer="counts", batch_key="batch", labels_key="labels")
    model = cls(adata, **TINY[name])
    model.is_trained_ = True  # the weights need not be trained to be saved and reloaded exactly
    if hasattr(model.module, "trained_stages"):  # scPaLM records its trained stages in a buffer (saved too)
        model.module.trained_stages.fill_(True)
    z = model.get_latent_representation()
    path = save_pretrained(model, tmp_path / name)
    config = json.loads((path / "config.json").read_text())
    assert config["model_class"] == f"cellformers.model.{name}"

    loaded = load_pretrained(path, _adata(), accelerator="cpu")
    assert type(loaded) is cls
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)

    reversed_genes = _adata()[:, ::-1].copy()  # another gene order: the model runs on an aligned copy
    loaded = load_pretrained(pack_checkpoint(path), reversed_genes, accelerator="cpu")
    np.testing.assert_array_equal(loaded.get_latent_representation(), z)

    data_free = load_pretrained(path, accelerator="cpu")
    assert data_free.adata is None
    np.testing.assert_array_equal(data_free.get_latent_representation(_adata()), z)
