"""Progress bars follow ``cellformers.settings.progress_bar`` and a call's ``progress_bar=`` (issue 20)."""

from __future__ import annotations

import pytest

import cellformers as cf
from cellformers import tl
from cellformers._utils._progress import progress_bar_override, show_progress, track
from cellformers.data import synthetic_counts


@pytest.fixture
def trained(toy_model_cls, monkeypatch):
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    adata = synthetic_counts(n_cells=90, n_genes=25, random_state=1)
    toy_model_cls.setup_anndata(adata, labels_key="labels")
    model = toy_model_cls(adata)
    model.train(max_epochs=1, batch_size=32)
    return adata, model


def test_show_progress_precedence(monkeypatch):
    monkeypatch.setattr(cf.settings, "progress_bar", True)
    assert show_progress() is True
    assert show_progress(False) is False
    with progress_bar_override(False):
        assert show_progress() is False
        assert show_progress(True) is True
        with progress_bar_override(None):
            assert show_progress() is False
    assert show_progress() is True
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    assert show_progress() is False
    items = [1, 2]
    assert track(items, description="x") is items  # switched off: the iterable itself


def test_embedding_and_imputation_show_a_bar(trained, capsys, monkeypatch):
    adata, model = trained
    capsys.readouterr()
    monkeypatch.setattr(cf.settings, "progress_bar", True)
    model.get_latent_representation(batch_size=16)
    assert "minibatches" in capsys.readouterr().out
    tl.impute(adata, model, batch_size=16)
    assert "minibatches" in capsys.readouterr().out
    tl.embed(adata, model, batch_size=16, progress_bar=False)  # the argument wins over the setting
    assert "minibatches" not in capsys.readouterr().out
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    model.get_latent_representation(batch_size=16)
    tl.embed(adata, model, batch_size=16)
    assert "minibatches" not in capsys.readouterr().out
    tl.embed(adata, model, batch_size=16, progress_bar=True)
    assert "minibatches" in capsys.readouterr().out


def test_annotation_shows_a_bar(capfd, monkeypatch):
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    adata = synthetic_counts(n_cells=60, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    model = cf.model.ScFormer(adata, preset="tiny")
    model.train(max_epochs=1)
    monkeypatch.setattr(cf.settings, "progress_bar", True)
    capfd.readouterr()
    model.train_annotator("labels", max_epochs=2)  # Lightning's bar, as in `model.train`
    out = capfd.readouterr()
    assert "Epoch 2/2" in out.out + out.err
    model.predict_cell_types()
    out = capfd.readouterr()
    assert "minibatches" in out.out + out.err


@pytest.mark.parametrize("setting", [True, False])
def test_training_bar_follows_the_setting(toy_model_cls, monkeypatch, setting):
    monkeypatch.setattr(cf.settings, "progress_bar", setting)
    adata = synthetic_counts(n_cells=60, n_genes=20)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    model.train(max_epochs=1, batch_size=32)
    assert (model.trainer.progress_bar_callback is not None) is setting
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=not setting)  # the argument wins
    assert (model.trainer.progress_bar_callback is not None) is (not setting)
