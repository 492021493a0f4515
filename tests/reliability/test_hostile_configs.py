"""Hostile or damaged checkpoint contents: every field of ``config.json`` is checked before the model is built.

The checksum list is recomputed after each edit (it is an integrity list, not a signature), as an attacker would.
"""

from __future__ import annotations

import functools
import json
import shutil

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from cellformers import CellformersError
from cellformers.checkpoint._format import write_checksums
from cellformers.model import ScFormer
from cellformers.pretrained import CheckpointError, load_pretrained

_FILES = ("config.json", "model.safetensors", "vocab.json")


@pytest.fixture(scope="module")
def saved(tmp_path_factory, rel):
    model = rel.mark_trained(rel.build_model("ScFormer"))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


@pytest.fixture
def ckpt(saved, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(saved, dst)
    return dst


@pytest.fixture
def no_real_allocation(monkeypatch):
    """Fail the test if the module is built anywhere but on the meta device (where it costs no memory)."""
    real = ScFormer._module_cls

    @functools.wraps(real)
    def spy(*args, **kwargs):
        if torch.empty(0).device.type != "meta":
            msg = "the module was built for real before its shapes were checked"
            raise AssertionError(msg)
        return real(*args, **kwargs)

    monkeypatch.setattr(ScFormer, "_module_cls", spy)


def _edit_params(path, group, **changes):
    config = json.loads((path / "config.json").read_text())
    target = config["init_params"]["non_kwargs"] if group == "non_kwargs" else config["init_params"]["kwargs"][group]
    target.update(changes)
    (path / "config.json").write_text(json.dumps(config))
    write_checksums(path, _FILES)


HOSTILE = {
    "negative-d_model": ("non_kwargs", {"d_model": -16}, "d_model"),
    "string-d_model": ("non_kwargs", {"d_model": "16"}, "d_model"),
    "float-n_layers": ("non_kwargs", {"n_layers": 1.5}, "n_layers"),
    "bool-n_heads": ("non_kwargs", {"n_heads": True}, "n_heads"),
    "nan-dropout": ("non_kwargs", {"dropout_rate": float("nan")}, "dropout_rate"),
    "unknown-literal": ("non_kwargs", {"pooling": "sum-of-squares"}, "pooling"),
    "list-for-bool": ("non_kwargs", {"use_mvc": [1]}, "use_mvc"),
    "unknown-module-keyword": ("module_kwargs", {"evil_keyword": 1}, "evil_keyword"),
    "wrong-type-module-keyword": ("module_kwargs", {"attention_dropout_rate": "0.1"}, "attention_dropout_rate"),
    "huge-int": ("non_kwargs", {"d_ff": 1 << 40}, "d_ff"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_bad_hyperparameter_types_and_ranges_are_refused_naming_the_field(ckpt, case, rel, no_real_allocation):
    group, changes, field = HOSTILE[case]
    _edit_params(ckpt, group, **changes)
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(CheckpointError, match=field):
        ScFormer.from_pretrained(ckpt, adata, accelerator="cpu")


@pytest.mark.parametrize(
    "changes",
    [{"d_model": 65536, "n_layers": 64}, {"d_model": 32}, {"n_layers": 2}, {"d_ff": 64}, {"n_bins": 52}],
    ids=["issue-16GiB", "wider", "deeper", "wider-ff", "more-bins"],
)
def test_a_config_larger_than_its_weights_is_refused_before_allocating(ckpt, changes, rel, no_real_allocation):
    _edit_params(ckpt, "non_kwargs", **changes)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_pretrained(ckpt, accelerator="cpu")


def test_an_intact_checkpoint_still_loads_after_the_checks(ckpt, rel):
    model = load_pretrained(ckpt, rel.base_adata(), accelerator="cpu")
    assert isinstance(model, ScFormer)


def _rewrite_weights(path, fn):
    file = path / "model.safetensors"
    with safe_open(str(file), framework="pt") as fh:
        metadata = fh.metadata()
    state = load_file(str(file))
    fn(state)
    save_file(state, str(file), metadata=metadata)
    write_checksums(path, _FILES)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=["nan", "inf"])
def test_non_finite_weights_are_warned_about(ckpt, value):
    def poison(state):
        name = next(k for k, v in state.items() if v.is_floating_point() and v.numel())
        state[name] = torch.full_like(state[name], value)

    _rewrite_weights(ckpt, poison)
    with pytest.warns(UserWarning, match="NaN or infinite"):
        load_pretrained(ckpt, accelerator="cpu")


def test_weights_with_an_extra_tensor_are_refused_before_building(ckpt, no_real_allocation):
    _rewrite_weights(ckpt, lambda state: state.update(extra=torch.zeros(4)))
    with pytest.raises(CheckpointError, match="unexpected"):
        load_pretrained(ckpt, accelerator="cpu")


VOCABS = {
    "not-json": "{not json",
    "a-list": "[1, 2, 3]",
    "repeated-genes": None,  # filled in the test: the saved vocabulary with a gene repeated
    "too-few-genes": None,  # a valid vocabulary of other genes, smaller than the checkpoint's token ids
    "genes-not-strings": None,
}


@pytest.mark.parametrize("case", sorted(VOCABS))
def test_a_malformed_vocab_json_blames_the_file_not_the_data(ckpt, case, rel):
    data = json.loads((ckpt / "vocab.json").read_text())
    if case == "repeated-genes":
        data["genes"] = data["genes"] + data["genes"][:1]
        text = json.dumps(data)
    elif case == "too-few-genes":
        data["genes"] = ["GENE_A", "GENE_B"]
        data["ensembl_ids"] = None
        text = json.dumps(data)
    elif case == "genes-not-strings":
        data["genes"] = [{"x": 1}] * 3
        text = json.dumps(data)
    else:
        text = VOCABS[case]
    (ckpt / "vocab.json").write_text(text)
    write_checksums(ckpt, _FILES)
    adata = rel.base_adata()
    with rel.unchanged(adata), pytest.raises(CheckpointError, match=r"vocab\.json is not|vocab\.json does not") as info:
        ScFormer.from_pretrained(ckpt, adata, accelerator="cpu")
    assert "map_genes" not in str(info.value)
    assert isinstance(info.value, CellformersError)
