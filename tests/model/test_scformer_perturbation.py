from __future__ import annotations

import numpy as np
import pytest
import torch

from cellformers import MissingKeyError
from cellformers.data import synthetic_perturbation
from cellformers.metrics import perturbation_scores
from cellformers.model import ScFormerPerturbation
from cellformers.model._scformer_perturbation import PERTURBED_GENES_OBSM, perturbed_genes, top_de_genes

TINY = {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16}
TRAIN = ["CD3D", "CD3E", "CD4", "CD3D+CD3E"]


@pytest.fixture(scope="module")
def trained():
    adata = synthetic_perturbation(n_control=120, n_per_perturbation=40, n_genes=30, random_state=0)
    adata.obs["cell_type"] = np.where(np.arange(adata.n_obs) % 2 == 0, "A", "B")
    ScFormerPerturbation.setup_anndata(adata, perturbation_key="condition", cell_type_key="cell_type")
    model = ScFormerPerturbation(adata, max_length=12, **TINY)
    model.train(max_epochs=2, batch_size=32, train_perturbations=TRAIN, enable_progress_bar=False)
    return adata, model


def test_setup_registers_perturbed_gene_columns(trained):
    adata, _ = trained
    cols = adata.obsm[PERTURBED_GENES_OBSM]
    genes = list(adata.var_names)
    row = np.flatnonzero(adata.obs["condition"].astype(str) == "CD3D+CD4")[0]
    assert sorted(cols[row]) == sorted([genes.index("CD3D"), genes.index("CD4")])
    ctrl = np.flatnonzero(adata.obs["condition"].astype(str) == "ctrl")[0]
    assert (cols[ctrl] == -1).all()


def test_training_and_pairs(trained):
    adata, model = trained
    assert "mgm_loss_validation" in model.history_
    assert model.train_perturbations_ == sorted(TRAIN)


def test_perturbed_genes_always_in_sequence(trained):
    adata, model = trained
    m = model.module.train()
    cols = torch.as_tensor(adata.obsm[PERTURBED_GENES_OBSM][:8])
    flags = m.perturbation_flags(cols)
    x = torch.as_tensor(adata.X[:8].toarray(), dtype=torch.float32)
    inp = {"x": x, "cell_seed": torch.arange(8.0)[:, None], "external": flags.long(), "forced": flags}
    out = m.inference(**inp)
    idx = out["gene_index"]
    for r in range(8):
        for g in torch.nonzero(flags[r]).reshape(-1).tolist():
            assert g in idx[r].tolist()
    assert idx.shape[1] <= 12
    m.eval()


def test_predict_and_evaluate(trained):
    adata, model = trained
    pred = model.predict(["CD3D+CD4", "CD4"], n_control_cells=20)
    assert pred.shape == (2, adata.n_vars)
    assert np.isfinite(pred.to_numpy()).all()
    cells = model.predict(["CD4"], n_control_cells=10, cell_type="A", return_cells=True)
    assert cells["CD4"].shape == (10, adata.n_vars)
    res = model.evaluate(["CD3D+CD4"], n_control_cells=30)
    assert list(res["method"]) == ["scformer", "mean", "additive"]
    assert np.isfinite(res[["pearson", "pearson_delta", "pearson_de", "pearson_delta_de"]].to_numpy()).all()
    res_a = model.evaluate(["CD4"], cell_type="A", de_genes={"CD4": list(adata.var_names[:5])})
    assert (res_a["n_cells"] == 20).all()


def test_save_load(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "p", overwrite=True)
    loaded = ScFormerPerturbation.load(tmp_path / "p", adata=adata)
    a = model.predict(["CD4"], n_control_cells=10)
    b = loaded.predict(["CD4"], n_control_cells=10)
    np.testing.assert_allclose(a.to_numpy(), b.to_numpy(), atol=1e-5)


def test_log1p_value_mode():
    adata = synthetic_perturbation(n_control=60, n_per_perturbation=20, n_genes=20, random_state=1)
    ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation")
    model = ScFormerPerturbation(adata, value_mode="log1p", **TINY)
    assert model.module.mgm_loss == "mse"
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    assert np.isfinite(model.predict(["CD4"], n_control_cells=5).to_numpy()).all()


def test_setup_errors():
    adata = synthetic_perturbation(n_control=20, n_per_perturbation=5, n_genes=20)
    with pytest.raises(MissingKeyError):
        ScFormerPerturbation.setup_anndata(adata, perturbation_key="nope")
    with pytest.raises(ValueError, match="control"):
        ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation", control_value="NT")
    adata.obs["perturbation"] = adata.obs["perturbation"].astype(str).replace({"CD4": "NOTAGENE"})
    with pytest.warns(UserWarning, match="not in `adata.var_names`"):
        ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation")


def test_metric_helpers():
    assert perturbed_genes("A+ctrl") == ["A"]
    assert perturbed_genes("ctrl") == []
    truth = np.array([1.0, 2.0, 3.0, 4.0])
    ctrl = np.array([1.0, 1.0, 1.0, 1.0])
    s = perturbation_scores(truth * 2, truth, ctrl, np.array([1, 2, 3]))
    assert s["pearson"] == pytest.approx(1.0)
    assert s["pearson_de"] == pytest.approx(1.0)
    assert np.isnan(perturbation_scores(ctrl, truth, ctrl, None)["pearson_delta"])
    cells = np.zeros((5, 4))
    cells[:, 2] = 5 + np.arange(5)
    assert top_de_genes(cells, np.zeros((5, 4)), n=1).tolist() == [2]
