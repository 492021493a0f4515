"""``train`` and ``load`` show their parameters (no ``*args``), in one order across the models (issue 20)."""

from __future__ import annotations

import inspect
import re

import pytest

import cellformers as cf
from cellformers.model.base import CellformersModel

MODELS = [cf.model.XTrimoGene, cf.model.ScFormer, cf.model.ScPaLM, cf.model.ScFormerPerturbation]
COMMON = [
    "max_epochs",
    "batch_size",
    "train_size",
    "validation_size",
    "accelerator",
    "devices",
    "precision",
    "early_stopping",
    "check_val_every_n_epoch",
    "enable_progress_bar",
    "plan_kwargs",
    "datasplitter_kwargs",
    "checkpoint_dir",
    "resume",
]
# the perturbation model draws its own (control, perturbed) pairs: no scvi-tools data splitter
NOT_APPLICABLE = {cf.model.ScFormerPerturbation: {"train_size", "datasplitter_kwargs"}}
BATCH_SIZE = {cf.model.XTrimoGene: 128, cf.model.ScFormer: 16, cf.model.ScPaLM: 128, cf.model.ScFormerPerturbation: 16}


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_train_signature_is_explicit_and_shared(cls):
    params = inspect.signature(cls.train).parameters
    kinds = {p.kind for p in params.values()}
    assert inspect.Parameter.VAR_POSITIONAL not in kinds, f"{cls.__name__}.train hides parameters in *args"
    names = list(params)
    assert names[:2] == ["self", "max_epochs"]
    expected = [c for c in COMMON if c not in NOT_APPLICABLE.get(cls, set())]
    assert [n for n in names if n in COMMON] == expected
    # the common parameters come first, then the model's own, then the Lightning trainer options
    assert names[1 : 1 + len(expected)] == expected
    assert all(params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in expected[1:])
    # None: the paper's batch size, reduced when the memory estimate says it will not fit (issue 21, item 7)
    assert params["batch_size"].default is None
    assert cls._default_train_batch_size == BATCH_SIZE[cls]
    assert params["enable_progress_bar"].default is None
    doc = inspect.getdoc(cls.train)
    for name in [n for n in names if n not in ("self", "kwargs")]:
        assert re.search(rf"^{name}$", doc, flags=re.MULTILINE), f"{cls.__name__}.train does not document {name}"
    assert str(BATCH_SIZE[cls]) in doc.split("batch_size\n", 1)[1].split("\n")[0] or cls is cf.model.XTrimoGene


def test_base_train_documents_every_default_batch_size():
    doc = inspect.getdoc(CellformersModel.train)
    assert "xTrimoGene 128, scFormer 16, scPaLM 128" in doc


@pytest.mark.parametrize("cls", MODELS, ids=lambda c: c.__name__)
def test_load_signature_is_explicit(cls):
    params = inspect.signature(cls.load).parameters
    assert list(params) == ["dir_path", "adata", "accelerator", "device", "prefix", "backup_url"]
    doc = inspect.getdoc(cls.load)
    for name in params:
        assert re.search(rf"^{name}$", doc, flags=re.MULTILINE), f"{cls.__name__}.load does not document {name}"
