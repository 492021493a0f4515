"""Training survives interruption; saving never leaves a half-written model that loads; round trips are exact."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import cellformers as cf
from cellformers._exceptions import UntrustedCheckpointError

MODELS = ("toy", "XTrimoGene", "ScFormer", "ScPaLM")
TRAIN = {"max_epochs": 3, "batch_size": 16, "enable_progress_bar": False}
TOL = {"rtol": 1e-5, "atol": 1e-6}


class _Crash(Exception):
    """Stands for a killed process."""


class _StopAt(Callback):
    """Raise at the start of epoch ``epoch`` (of scPaLM's stage ``stage``)."""

    def __init__(self, epoch: int, stage: int | None = None):
        self.epoch, self.stage = epoch, stage

    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == self.epoch and self.stage in (None, getattr(pl_module, "stage", None)):
            raise _Crash


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _history(model) -> dict[str, np.ndarray]:
    return {k: v.to_numpy(dtype=np.float64).ravel() for k, v in model.history_.items()}


@pytest.mark.parametrize("name", MODELS)
def test_resuming_from_the_last_checkpoint_equals_an_uninterrupted_run(rel, name, tmp_path):
    full = rel.build_model(name)
    full.train(checkpoint_dir=tmp_path / "full", **TRAIN)
    expected = full.get_latent_representation()

    stop = _StopAt(2, stage=2 if name == "ScPaLM" else None)  # scPaLM: interrupted in its second stage
    interrupted = rel.build_model(name)
    with pytest.raises(_Crash):
        interrupted.train(checkpoint_dir=tmp_path / "run", callbacks=[stop], **TRAIN)
    written = sorted(p.name for p in (tmp_path / "run").iterdir())
    assert written == (["last-stage1.ckpt", "last-stage2.ckpt"] if name == "ScPaLM" else ["last.ckpt"])

    resumed = rel.build_model(name)  # same seed: it fixes the train/validation split
    with torch.no_grad():  # other weights: everything must come from the checkpoint
        for p in resumed.module.parameters():
            p.add_(torch.randn_like(p))
    resumed.train(checkpoint_dir=tmp_path / "run", resume=True, **TRAIN)
    # to float rounding: vectorised CPU kernels may round the last bit differently in other memory (see the docs)
    np.testing.assert_allclose(resumed.get_latent_representation(), expected, **TOL)
    # the resumed epochs logged the same losses as the uninterrupted run's last epochs
    h_full, h_resumed = _history(full), _history(resumed)
    key = "train_loss" if "train_loss" in h_full else next(k for k in h_full if k.endswith("_train"))
    n = h_resumed[key].size
    assert 0 < n < h_full[key].size
    np.testing.assert_allclose(h_resumed[key], h_full[key][-n:], **TOL)


def test_resume_needs_a_checkpoint_dir_and_starts_fresh_without_a_checkpoint(rel, tmp_path):
    model = rel.build_model("toy")
    with pytest.raises(ValueError, match="`resume=True` needs `checkpoint_dir=`"):
        model.train(resume=True, **TRAIN)
    with pytest.raises(ValueError, match="either `resume=True`"):
        model.train(checkpoint_dir=tmp_path, resume=True, ckpt_path=str(tmp_path / "x.ckpt"), **TRAIN)
    fresh = rel.build_model("toy")
    fresh.train(checkpoint_dir=tmp_path / "a", resume=True, **TRAIN)  # nothing to resume from
    reference = rel.build_model("toy")
    reference.train(checkpoint_dir=tmp_path / "b", **TRAIN)
    np.testing.assert_allclose(fresh.get_latent_representation(), reference.get_latent_representation(), **TOL)


def test_a_crash_while_checkpointing_keeps_the_previous_checkpoint(rel, tmp_path, monkeypatch):
    from lightning.fabric.plugins import TorchCheckpointIO

    model = rel.build_model("toy")
    model.train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 1})
    last = tmp_path / "last.ckpt"
    before = _digest(last)

    def half_write(self, checkpoint, path, storage_options=None):  # a writer killed halfway through the file
        data = io.BytesIO()
        torch.save(checkpoint, data)
        with open(path, "wb") as fh:
            fh.write(data.getvalue()[: len(data.getvalue()) // 2])
        raise _Crash

    monkeypatch.setattr(TorchCheckpointIO, "save_checkpoint", half_write)
    with pytest.raises(_Crash):
        model.train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 2})
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no partial file beside it
    assert _digest(last) == before
    resumed = rel.build_model("toy")
    resumed.train(checkpoint_dir=tmp_path, resume=True, **{**TRAIN, "max_epochs": 2})  # the old one still loads


class _Payload:
    """Unpickling this runs ``Path.touch(marker)``: the canonical malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_with_a_malicious_pickle_is_refused_on_resume(rel, tmp_path):
    model = rel.build_model("toy")
    model.train(checkpoint_dir=tmp_path, **{**TRAIN, "max_epochs": 1})
    ckpt = torch.load(tmp_path / "last.ckpt", weights_only=True)
    marker = tmp_path / "pwned"
    ckpt["callbacks"]["evil"] = _Payload(marker)
    torch.save(ckpt, tmp_path / "last.ckpt")
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        rel.build_model("toy").train(checkpoint_dir=tmp_path, resume=True, **TRAIN)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ save / load
@pytest.mark.parametrize("name", MODELS)
def test_save_load_and_save_pretrained_round_trip_exactly(rel, tiny_models, name, tmp_path):
    model, z = tiny_models[name]
    model.save(tmp_path / "scvi", save_anndata=True)
    assert not [p for p in (tmp_path / "scvi").iterdir() if p.name.startswith(".")]  # no temporary leftovers
    cls = rel.model_class(name)
    loaded = cls.load(tmp_path / "scvi")  # with the AnnData saved beside it
    for key, value in model.module.state_dict().items():  # every weight and buffer, bit for bit
        assert torch.equal(loaded.module.state_dict()[key], value), key
    np.testing.assert_allclose(loaded.get_latent_representation(rel.base_adata()), z, **TOL)
    if name != "toy":  # the test-only toy class is not one of the package's checkpoint classes
        model.save_pretrained(tmp_path / "pretrained")
        again = cf.pretrained.load_pretrained(tmp_path / "pretrained", rel.base_adata(), accelerator="cpu")
        for key, value in model.module.state_dict().items():
            assert torch.equal(again.module.state_dict()[key], value), key
        np.testing.assert_allclose(again.get_latent_representation(), z, **TOL)


def test_a_crash_while_saving_keeps_the_previous_model(rel, tiny_models, tmp_path, monkeypatch):
    model, z = tiny_models["toy"]
    tmp_path = tmp_path / "model"
    model.save(tmp_path)
    before = _digest(tmp_path / "model.pt")

    real_save = torch.save

    def half_save(obj, f, *args, **kwargs):  # killed halfway through writing model.pt
        if isinstance(f, str | os.PathLike) and str(f).endswith("model.pt"):
            real_save(obj, f, *args, **kwargs)
            with open(f, "rb") as fh:
                data = fh.read()
            with open(f, "wb") as fh:
                fh.write(data[: len(data) // 2])
            raise _Crash
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(_Crash):
        model.save(tmp_path, overwrite=True)
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt"]
    assert _digest(tmp_path / "model.pt") == before
    loaded = rel.model_class("toy").load(tmp_path, adata=rel.base_adata())
    np.testing.assert_allclose(loaded.get_latent_representation(rel.base_adata()), z, **TOL)
    with pytest.raises(ValueError, match="already exists"):
        model.save(tmp_path)


def test_a_model_file_with_a_malicious_pickle_is_refused(rel, tiny_models, tmp_path):
    model, _ = tiny_models["toy"]
    tmp_path = tmp_path / "model"
    model.save(tmp_path)
    saved = torch.load(tmp_path / "model.pt", weights_only=False)  # our own file: trusted
    marker = tmp_path.parent / "pwned"
    saved["attr_dict"]["extra_"] = _Payload(marker)
    torch.save(saved, tmp_path / "model.pt")
    adata = rel.base_adata()
    with pytest.raises(UntrustedCheckpointError, match="not part of a cellformers model"):
        rel.model_class("toy").load(tmp_path, adata=adata)
    assert not marker.exists()
    assert "_scvi_uuid" not in adata.uns  # refused before anything was set up


def test_scformer_keeps_its_best_epoch_across_a_resume():
    from cellformers.train._callbacks import KeepBestEpoch

    keep = KeepBestEpoch("mgm_loss_validation")
    keep.best, keep.epoch, keep.state = 0.5, 1, {"w": torch.ones(2)}
    restored = KeepBestEpoch("mgm_loss_validation")
    restored.load_state_dict(torch.load(io.BytesIO(_saved(keep.state_dict())), weights_only=True))
    assert (restored.best, restored.epoch) == (0.5, 1)
    assert torch.equal(restored.state["w"], torch.ones(2))


def _saved(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()
