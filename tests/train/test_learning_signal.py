from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import cellformers as cf
from cellformers.train import learning_signal, warn_if_trivial

TINY = {
    cf.model.XTrimoGene: {
        "preset": "3M",
        "encoder_layers": 1,
        "encoder_dim": 16,
        "encoder_heads": 2,
        "decoder_layers": 1,
        "decoder_dim": 8,
    },
    cf.model.ScFormer: {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16},
    cf.model.ScPaLM: {"preset": "small", "n_hidden": 16, "n_intermediate": 16, "n_pathway_tokens": 8, "n_codes": 8},
}


def _hist(pretext, trivial):
    return {
        "pretext_loss_validation": pd.DataFrame({"pretext_loss_validation": pretext}),
        "trivial_loss_validation": pd.DataFrame({"trivial_loss_validation": trivial}),
    }


class _Model:
    _trivial_name = "each gene's mean"
    _trivial_hint = "Try X."

    def __init__(self, history):
        self.history_ = history


def test_learning_signal_reads_the_last_validation_epoch():
    sig = learning_signal(_hist([1.0, 0.8, 0.6], [0.75, 0.75, 0.75]))
    assert sig["ratio"] == pytest.approx(0.8)
    assert sig["epoch"] == 2
    assert learning_signal({}) is None
    assert learning_signal({"pretext_loss_validation": pd.DataFrame({"p": [1.0]})}) is None


def test_warning_names_the_model_the_numbers_and_what_to_try():
    with pytest.warns(UserWarning, match=r"_Model did not beat the trivial predictor.*0\.7 vs 0\.65.*Try X\."):
        warn_if_trivial(_Model(_hist([0.7], [0.65])))


def test_no_warning_when_the_model_beats_the_trivial_predictor():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert warn_if_trivial(_Model(_hist([0.5], [0.65])))["ratio"] < 1
        assert warn_if_trivial(_Model({})) is None


@pytest.mark.parametrize("cls", list(TINY))
def test_training_records_the_trivial_baseline_beside_the_pretext_loss(cls):
    adata = cf.data.synthetic_counts(n_cells=120, n_genes=30)
    cls.setup_anndata(adata)
    model = cls(adata, **TINY[cls])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.train(max_epochs=2, enable_progress_bar=False)
    hist = model.history_
    for key in ("pretext_loss_validation", "trivial_loss_validation", "trivial_ratio_validation", "lr"):
        assert key in hist, sorted(hist)
    p = hist["pretext_loss_validation"].iloc[:, 0].to_numpy(dtype=float)
    t = hist["trivial_loss_validation"].iloc[:, 0].to_numpy(dtype=float)
    r = hist["trivial_ratio_validation"].iloc[:, 0].to_numpy(dtype=float)
    assert np.isfinite(t).all()
    assert (t > 0).all()
    np.testing.assert_allclose(r[-len(p) :], p / t, rtol=1e-4)


def test_untrained_model_warns_after_training():
    """With a zero learning rate nothing is learned: the warning must fire (it failed silently before)."""
    adata = cf.data.synthetic_counts(n_cells=120, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, **TINY[cf.model.ScFormer])
    with pytest.warns(UserWarning, match="ScFormer did not beat the trivial predictor"):
        model.train(max_epochs=1, enable_progress_bar=False, plan_kwargs={"lr": 0.0})


def test_no_validation_no_signal():
    adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, **TINY[cf.model.ScFormer])
    model.train(max_epochs=1, enable_progress_bar=False, train_size=1.0)
    assert learning_signal(model.history_) is None


def test_untrained_copy_has_fresh_weights_and_the_same_architecture():
    adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, **TINY[cf.model.ScFormer])
    model.train(max_epochs=2, enable_progress_bar=False, plan_kwargs={"lr": 1e-2})
    ref = model.untrained_copy(seed=3)
    assert type(ref) is type(model)
    assert ref.init_params_ == model.init_params_
    trained = dict(model.module.named_parameters())
    assert any(not np.allclose(p.detach(), trained[n].detach()) for n, p in ref.module.named_parameters())
    again = model.untrained_copy(seed=3)
    for (_, a), (_, b) in zip(ref.module.named_parameters(), again.module.named_parameters(), strict=True):
        np.testing.assert_array_equal(a.detach(), b.detach())
    assert ref.get_latent_representation().shape == (60, 16)
