"""save_pretrained / from_pretrained: format, round trips, data alignment, atomic writes and refusals."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from cellformers import ChecksumError, GeneMappingError, MissingKeyError, UntrustedCheckpointError
from cellformers.checkpoint import decode_json, encode_json, resolve_model_class
from cellformers.checkpoint._format import file_sha256, write_checksums
from cellformers.model.base import CellformersModel
from cellformers.model.base import _checkpoint_io as checkpoint_io
from cellformers.pretrained import (
    CheckpointError,
    PretrainedMixin,
    load_pretrained,
    safe_torch_load,
    verify_checkpoint,
)


def _rewrite_config(path, **changes):
    """Edit config.json and re-sign it, as someone crafting a checkpoint would."""
    config = json.loads((path / "config.json").read_text())
    config.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    write_checksums(path, ("config.json", "model.safetensors", "vocab.json"))


@pytest.fixture
def ckpt(trained, tmp_path):
    """A private copy of the trained checkpoint, free to damage."""
    dst = tmp_path / "ckpt"
    shutil.copytree(trained.path, dst)
    return dst


class _Payload:
    """Pickling this runs ``Path.touch(marker)`` on load: the canonical malicious pickle."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


# ------------------------------------------------------------------------------------------------ format
def test_directory_layout_and_config(trained):
    files = sorted(p.name for p in trained.path.iterdir())
    assert files == ["checksums.json", "config.json", "model.safetensors", "vocab.json"]
    config = verify_checkpoint(trained.path)
    assert config["format"] == "cellformers-checkpoint"
    assert config["format_version"] == 1
    assert config["model_class"].endswith("PretrainedToy")
    assert config["init_params"]["non_kwargs"] == {"d": 6}  # the vocabulary lives in vocab.json
    assert config["vocab_argument"] == "vocab"
    setup = config["setup_method_args"]["setup_args"]
    assert setup == {"layer": "counts", "batch_key": "batch", "labels_key": "labels"}
    assert config["genes"]["var_names"] == list(trained.adata.var_names)
    assert config["genes"]["token_ids"] == list(range(trained.adata.n_vars))
    summary = config["training_summary"]
    assert summary["is_trained"] is True
    assert summary["n_epochs"] == 2
    assert summary["final"]["train_loss"] == pytest.approx(trained.model.history_["train_loss"].iloc[-1, 0])
    sums = json.loads((trained.path / "checksums.json").read_text())["files"]
    for name in ("config.json", "model.safetensors", "vocab.json"):
        assert sums[name] == file_sha256(trained.path / name)
    # weights: every parameter and buffer, bit for bit
    state = load_file(trained.path / "model.safetensors")
    expected = trained.model.module.state_dict()
    assert set(state) == set(expected)
    for key, value in expected.items():
        assert torch.equal(state[key], value.cpu()), key
    assert set(config["module_state"]) == set(expected)


def test_same_seed_same_training_gives_identical_config_files(make_adata, ptoy_cls, tmp_path):
    """No random ids (scvi-tools' AnnData uuid) in the files: only the weights' last bits may differ between runs
    (vectorised CPU kernels round by memory alignment), so a deterministic training gives reproducible hashes."""
    import scvi

    digests = []
    for run in range(2):
        scvi.settings.seed = 3
        adata = make_adata()
        ptoy_cls.setup_anndata(adata, layer="counts", batch_key="batch")
        model = ptoy_cls(adata, d=4)
        scvi.settings.seed = 3
        model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
        path = model.save_pretrained(tmp_path / f"run{run}")
        digests.append(json.loads((path / "checksums.json").read_text())["files"])
    for name in ("config.json", "vocab.json"):
        assert digests[0][name] == digests[1][name]
    w0, w1 = (load_file(tmp_path / f"run{run}" / "model.safetensors") for run in range(2))
    for key in w0:
        torch.testing.assert_close(w0[key], w1[key], rtol=1e-5, atol=1e-6)
    loaded = ptoy_cls.from_pretrained(tmp_path / "run0", make_adata())
    assert loaded.get_latent_representation().shape[0] == make_adata().n_obs


def test_json_encoding_round_trip():
    value = {
        "a": (1, 2.5, "x"),
        "arr": np.arange(6, dtype=np.int32).reshape(2, 3),
        "names": np.array(["b1", "b2"], dtype=object),
        "nested": [None, True, {"t": (np.float32(0.5),)}],
    }
    encoded = encode_json(value, "v")
    back = decode_json(json.loads(json.dumps(encoded)))
    assert back["a"] == (1, 2.5, "x")
    assert back["arr"].dtype == np.int32
    np.testing.assert_array_equal(back["arr"], value["arr"])
    assert back["names"].dtype == object
    assert back["names"].tolist() == ["b1", "b2"]
    assert back["nested"] == [None, True, {"t": (0.5,)}]
    with pytest.raises(CheckpointError, match=r"v\['f'\] is a function"):
        encode_json({"f": lambda x: x}, "v")


# ------------------------------------------------------------------------------------------------ round trips
def test_round_trip_identical_embeddings(make_adata, ptoy_cls, trained):
    adata = make_adata()
    model = ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu")
    assert model.adata is adata  # same genes: set up in place, like setup_anndata
    assert model.is_trained_
    assert not model.module.training
    np.testing.assert_array_equal(model.get_latent_representation(), trained.z)
    assert model.vocab == trained.model.vocab
    assert model.pretrained_info_["source"] == str(trained.path)
    assert model.pretrained_info_["training_summary"]["n_epochs"] == 2
    # categories keep the checkpoint's encoding
    assert model.summary_stats.n_batch == 2
    assert model.summary_stats.n_labels == 3


def test_round_trip_without_adata(make_adata, ptoy_cls, trained):
    model = ptoy_cls.from_pretrained(trained.path, accelerator="cpu")
    assert model.adata is None
    assert list(model.get_var_names()) == list(trained.adata.var_names)
    for key, value in trained.model.module.state_dict().items():
        assert torch.equal(model.module.state_dict()[key], value), key
    adata = make_adata()
    np.testing.assert_array_equal(model.get_latent_representation(adata), trained.z)
    assert model.adata is adata  # set up from the saved registry on first use


def test_load_through_the_package_class_is_refused_for_a_foreign_class(trained):
    # the toy class is not one of cellformers' models: only the toy class itself may load it
    with pytest.raises(UntrustedCheckpointError, match="not one of cellformers' models"):
        PretrainedMixin.from_pretrained(trained.path)
    with pytest.raises(UntrustedCheckpointError):
        load_pretrained(trained.path)


def test_genes_differ_uses_aligned_copy(make_adata, ptoy_cls, trained):
    full = make_adata()
    # other gene order, 4 genes missing, 2 extra genes
    keep = list(full.var_names[4:][::-1])
    adata = full[:, keep].copy()
    extra = make_adata(random_state=1)[:, :2].copy()
    extra.var_names = ["EXTRA1", "EXTRA2"]
    import anndata as ad

    adata = ad.concat([adata, extra], axis=1, merge="first")
    adata.obs = full.obs.copy()
    before_obs = list(adata.obs.columns)
    before_vars = list(adata.var_names)
    model = ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu", min_gene_coverage=0.8)
    assert model.adata is not adata
    assert list(model.adata.var_names) == list(trained.adata.var_names)
    assert model.adata.uns["cellformers_alignment"]["n_present"] == trained.adata.n_vars - 4
    assert list(adata.obs.columns) == before_obs  # the caller's object is untouched
    assert list(adata.var_names) == before_vars
    # same as the original data with the 4 missing genes zeroed
    ref = make_adata()
    for name in ("counts",):
        ref.layers[name] = ref.layers[name].toarray()
        ref.layers[name][:, :4] = 0
    z_ref = trained.model.get_latent_representation(ref)
    np.testing.assert_allclose(model.get_latent_representation(), z_ref, rtol=1e-6, atol=1e-6)


def test_low_gene_coverage_is_refused(make_adata, ptoy_cls, trained):
    adata = make_adata()[:, :5].copy()
    before = list(adata.obs.columns)
    with pytest.raises(GeneMappingError, match="min_gene_coverage"):
        ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu")
    assert list(adata.obs.columns) == before


def test_missing_batch_column_and_unknown_category(make_adata, ptoy_cls, trained):
    adata = make_adata()
    del adata.obs["batch"]
    before = list(adata.obs.columns)
    with pytest.raises(MissingKeyError, match=r"adata.obs\['batch'\].*batch_0"):
        ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu")
    assert list(adata.obs.columns) == before
    assert "_scvi_uuid" not in adata.uns
    adata.obs["donor"] = "batch_1"
    model = ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu", setup_kwargs={"batch_key": "donor"})
    assert model.summary_stats.n_batch == 2
    adata = make_adata()
    adata.obs["batch"] = "batch_9"
    with pytest.raises(CheckpointError, match="categories the checkpoint does not know"):
        ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu")


def test_layer_override(make_adata, ptoy_cls, trained):
    adata = make_adata()
    del adata.layers["counts"]
    with pytest.raises(MissingKeyError, match="setup_kwargs"):
        ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu")
    model = ptoy_cls.from_pretrained(trained.path, adata, accelerator="cpu", setup_kwargs={"layer": None})
    np.testing.assert_array_equal(model.get_latent_representation(), trained.z)  # X holds the same counts
    with pytest.raises(ValueError, match="not setup arguments"):
        ptoy_cls.from_pretrained(trained.path, make_adata(), accelerator="cpu", setup_kwargs={"nope": 1})


def test_failed_load_leaves_caller_adata_unchanged(make_adata, ptoy_cls, ckpt):
    # weights of the wrong shape: detected after setup, which is then undone
    state = load_file(ckpt / "model.safetensors")
    state["enc.weight"] = torch.zeros(3, 3)
    from safetensors.torch import save_file

    save_file(state, ckpt / "model.safetensors")
    write_checksums(ckpt, ("config.json", "model.safetensors", "vocab.json"))
    adata = make_adata()
    before_obs, before_uns = list(adata.obs.columns), set(adata.uns)
    with pytest.raises(CheckpointError, match="do not fit"):
        ptoy_cls.from_pretrained(ckpt, adata, accelerator="cpu")
    assert list(adata.obs.columns) == before_obs
    assert set(adata.uns) == before_uns


# ------------------------------------------------------------------------------------------------ atomic writes
def test_save_is_atomic(trained, tmp_path, monkeypatch):
    def crash(*args, **kwargs):
        msg = "disk full"
        raise OSError(msg)

    monkeypatch.setattr(checkpoint_io, "write_checksums", crash)
    with pytest.raises(OSError, match="disk full"):
        trained.model.save_pretrained(tmp_path / "new")
    assert list(tmp_path.iterdir()) == []  # neither a checkpoint nor temporary leftovers
    # overwriting: the previous checkpoint survives a crash
    monkeypatch.undo()
    trained.model.save_pretrained(tmp_path / "ck")
    digest = file_sha256(tmp_path / "ck" / "model.safetensors")
    monkeypatch.setattr(checkpoint_io, "write_checksums", crash)
    with pytest.raises(OSError, match="disk full"):
        trained.model.save_pretrained(tmp_path / "ck", overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ck"]
    assert file_sha256(tmp_path / "ck" / "model.safetensors") == digest
    verify_checkpoint(tmp_path / "ck")


def test_save_refuses_to_clobber(trained, tmp_path):
    trained.model.save_pretrained(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="overwrite=True"):
        trained.model.save_pretrained(tmp_path / "ck")
    trained.model.save_pretrained(tmp_path / "ck", overwrite=True)
    verify_checkpoint(tmp_path / "ck")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not a cellformers checkpoint"):
        trained.model.save_pretrained(tmp_path / "notes", overwrite=True)
    assert (tmp_path / "notes" / "thesis.txt").read_text() == "precious"


def test_unsavable_hyperparameter_writes_nothing(trained, tmp_path, monkeypatch):
    params = {"kwargs": {}, "non_kwargs": {"d": 6, "callback": print}}
    monkeypatch.setattr(trained.model, "init_params_", params)
    with pytest.raises(CheckpointError, match="callback"):
        trained.model.save_pretrained(tmp_path / "ck")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("damage", ["missing_vocab", "missing_checksums", "truncated_weights", "edited_config"])
def test_partial_or_damaged_checkpoint_does_not_load(ptoy_cls, ckpt, damage):
    if damage == "missing_vocab":
        (ckpt / "vocab.json").unlink()
        err, match = CheckpointError, r"\['vocab.json'\] missing"
    elif damage == "missing_checksums":
        (ckpt / "checksums.json").unlink()
        err, match = CheckpointError, "checksums.json"
    elif damage == "truncated_weights":
        data = (ckpt / "model.safetensors").read_bytes()
        (ckpt / "model.safetensors").write_bytes(data[: len(data) // 2])
        err, match = ChecksumError, "only partly written"
    else:
        config = json.loads((ckpt / "config.json").read_text())
        config["init_params"]["non_kwargs"]["d"] = 7
        (ckpt / "config.json").write_text(json.dumps(config))
        err, match = ChecksumError, "config.json does not match"
    with pytest.raises(err, match=match):
        ptoy_cls.from_pretrained(ckpt, accelerator="cpu")


def test_newer_format_is_refused(ptoy_cls, ckpt):
    _rewrite_config(ckpt, format_version=99)
    with pytest.raises(CheckpointError, match="newer cellformers"):
        ptoy_cls.from_pretrained(ckpt, accelerator="cpu")


# ------------------------------------------------------------------------------------------------ refusals
@pytest.mark.parametrize("name", ["os.system", "builtins.eval", "cellformers.model.base.CellformersModel", None])
def test_untrusted_model_class_is_refused(ptoy_cls, ckpt, name, monkeypatch):
    _rewrite_config(ckpt, model_class=name)
    imported = []
    real_import = __builtins__["__import__"] if isinstance(__builtins__, dict) else __builtins__.__import__

    def spy(modname, *args, **kwargs):
        imported.append(modname)
        return real_import(modname, *args, **kwargs)

    monkeypatch.setattr("builtins.__import__", spy)
    with pytest.raises(UntrustedCheckpointError, match="is refused"):
        ptoy_cls.from_pretrained(ckpt, accelerator="cpu")
    monkeypatch.undo()
    assert "os" not in imported  # nothing named by the checkpoint is imported


def test_package_class_name_is_looked_up_not_imported(ckpt, ptoy_cls):
    from cellformers.model import XTrimoGene

    _rewrite_config(ckpt, model_class="cellformers.model.XTrimoGene")
    assert resolve_model_class("cellformers.model.XTrimoGene", None) is XTrimoGene
    with pytest.raises(UntrustedCheckpointError):
        resolve_model_class("cellformers.model.NotAModel", CellformersModel)
    # a toy-class loader is not handed an XTrimoGene checkpoint
    with pytest.raises(CheckpointError, match="holds a cellformers.model.XTrimoGene model"):
        ptoy_cls.from_pretrained(ckpt, accelerator="cpu")


def test_pickled_weights_are_never_unpickled(ptoy_cls, ckpt, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    (ckpt / "model.safetensors").unlink()
    torch.save({"state": _Payload(marker)}, ckpt / "model.pt")
    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    with pytest.raises(CheckpointError, match=r"\['model.pt'\]: pickled files are never loaded"):
        ptoy_cls.from_pretrained(ckpt, accelerator="cpu")
    assert not marker.exists()
    assert calls == []  # the loader does not even open it
    # the helper converters use: weights_only=True, the payload is refused
    with pytest.raises(UntrustedCheckpointError, match="not unpickled"):
        safe_torch_load(ckpt / "model.pt")
    assert not marker.exists()
    assert calls == [True]
    # plain state dicts load fine
    torch.save({"w": torch.ones(2)}, tmp_path / "ok.pt")
    assert torch.equal(safe_torch_load(tmp_path / "ok.pt")["w"], torch.ones(2))
    assert all(c is True for c in calls)
    with open(tmp_path / "x.pkl", "wb") as fh:  # a bare pickle is no checkpoint either
        pickle.dump(_Payload(marker), fh, protocol=2)
    with pytest.raises(UntrustedCheckpointError):
        safe_torch_load(tmp_path / "x.pkl")
    assert not marker.exists()
    with open(tmp_path / "x.pkl", "rb") as fh:  # the payload is live: plain unpickling would have run it
        pickle.load(fh)
    assert marker.exists()
