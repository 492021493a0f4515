"""MuData input (issue 19): ``setup_mudata`` on the RNA modality, results written back into it."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import cellformers as cf
from cellformers import MissingKeyError
from cellformers.data import synthetic_counts

mudata = pytest.importorskip("mudata")


def _mdata(rna_name: str = "rna"):
    rna = synthetic_counts(n_cells=40, n_genes=20, random_state=2)
    prot = synthetic_counts(n_cells=40, n_genes=5, random_state=3)
    prot.var_names = [f"prot{i}" for i in range(5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return mudata.MuData({rna_name: rna, "prot": prot})


def test_setup_mudata_trains_and_writes_into_the_rna_modality():
    mdata = _mdata()
    rna = cf.model.XTrimoGene.setup_mudata(mdata, batch_key="batch")
    assert rna is mdata.mod["rna"]
    assert cf.model.XTrimoGene._get_most_recent_anndata_manager(rna) is not None
    model = cf.model.XTrimoGene(rna, encoder_layers=1, encoder_dim=8, encoder_heads=2, decoder_layers=1, decoder_dim=8)
    assert model.summary_stats.n_batch == 2
    model.train(max_epochs=1, batch_size=20, enable_progress_bar=False)
    cf.tl.embed(mdata, model)
    np.testing.assert_allclose(mdata.mod["rna"].obsm["X_xtrimogene"], model.get_latent_representation(), atol=1e-5)
    np.testing.assert_allclose(model.get_latent_representation(mdata), model.get_latent_representation(), atol=1e-5)
    cf.tl.context_embedding(mdata, model, genes=list(rna.var_names[:4]))
    assert mdata.mod["rna"].obsm["X_xtrimogene_context"].shape == (40, 8)
    assert "X_xtrimogene" not in mdata.mod["prot"].obsm


def test_setup_mudata_named_modality_and_layer():
    mdata = _mdata("gex")
    mdata.mod["gex"].layers["counts"] = mdata.mod["gex"].X.copy()
    rna = cf.model.ScFormer.setup_mudata(mdata, rna_layer="counts", modalities={"rna_layer": "gex"})
    assert rna is mdata.mod["gex"]
    assert cf.model.ScFormer._get_most_recent_anndata_manager(rna).registry["setup_args"]["layer"] == "counts"


def test_setup_mudata_errors():
    mdata = _mdata()
    with pytest.raises(TypeError, match="must be a MuData"):
        cf.model.ScFormer.setup_mudata(mdata.mod["rna"])
    with pytest.raises(MissingKeyError, match="no modality 'rna'"):
        cf.model.ScFormer.setup_mudata(_mdata("gex"))
    with pytest.raises(ValueError, match="protein_layer"):
        cf.model.ScFormer.setup_mudata(mdata, modalities={"rna_layer": "rna", "protein_layer": "prot"})
    with pytest.raises(TypeError, match="setup_mudata"):  # setup_anndata on a MuData points to both paths
        cf.model.ScFormer.setup_anndata(mdata)


def test_baselines_and_align_to_reference_accept_mudata():
    mdata = _mdata()
    cf.tl.baselines(mdata, methods=["pca"], n_comps=5, n_top_genes=15)
    assert mdata.mod["rna"].obsm["X_pca_hvg"].shape == (40, 5)
    genes = list(mdata.mod["rna"].var_names[::-1]) + ["NEWGENE"]
    aligned = cf.pp.align_to_reference(mdata, genes)
    assert aligned.var_names.tolist() == genes
    assert aligned.n_obs == 40
    np.testing.assert_array_equal(aligned.var["cellformers_present"].to_numpy(), [True] * 20 + [False])
