"""Fixtures of the reliability tests: tiny models of every class and a before/after comparison of an AnnData."""

from __future__ import annotations

import contextlib
import copy

import numpy as np
import pandas as pd
import pytest
import scvi
from scipy import sparse

from cellformers.data import synthetic_counts
from cellformers.model import ScFormer, ScPaLM, XTrimoGene

N_CELLS, N_GENES = 40, 30

#: The smallest configuration of each model class (one layer, width 16).
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
MODEL_CLASSES = {"XTrimoGene": XTrimoGene, "ScFormer": ScFormer, "ScPaLM": ScPaLM}


def base_adata(**kwargs):
    """The reference data: 40 cells x 30 genes of counts (CSR), two batches, three labels."""
    return synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, random_state=0, **kwargs)


def model_class(name, toy_model_cls):
    return toy_model_cls if name == "toy" else MODEL_CLASSES[name]


def build_model(name, toy_model_cls, adata=None, *, batch_key="batch", seed=0, **kwargs):
    """A tiny, untrained model set up on ``adata`` (default: :func:`base_adata`) and marked trained."""
    cls = model_class(name, toy_model_cls)
    adata = base_adata() if adata is None else adata
    cls.setup_anndata(adata, batch_key=batch_key)
    scvi.settings.seed = seed
    model = cls(adata, **{**TINY.get(name, {}), **kwargs})
    return model


def mark_trained(model):
    model.is_trained_ = True
    if hasattr(model.module, "trained_stages"):  # scPaLM refuses embeddings before its stages are trained
        model.module.trained_stages.fill_(True)
    return model


@pytest.fixture(scope="session")
def tiny_models(toy_model_cls):
    """name -> (model set up on :func:`base_adata` with ``batch_key='batch'``, its embedding of that data)."""
    out = {}
    for name in ("toy", *MODEL_CLASSES):
        model = mark_trained(build_model(name, toy_model_cls))
        out[name] = (model, model.get_latent_representation(base_adata()))
    return out


# ------------------------------------------------------------------------------------------------ snapshots
def _matrix(x):
    """An in-memory copy of a matrix (dense, sparse, backed dataset) that keeps its type and dtype."""
    if x is None:
        return None
    if hasattr(x, "to_memory"):
        x = x.to_memory()
    elif not isinstance(x, np.ndarray | pd.DataFrame) and not sparse.issparse(x):
        x = x[()] if getattr(x, "ndim", 1) else x
    return x.copy()


def _same(a, b) -> bool:
    if type(a) is not type(b):
        return False
    if sparse.issparse(a):
        return a.format == b.format and a.dtype == b.dtype and a.shape == b.shape and (a != b).nnz == 0
    if isinstance(a, pd.DataFrame):
        return a.equals(b) and list(a.columns) == list(b.columns) and all(a.dtypes == b.dtypes)
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and np.array_equal(a, b, equal_nan=a.dtype.kind in "fc")
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list | tuple):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def snapshot(adata) -> dict:
    """Copies of everything a function could change in an AnnData (or in each modality of a MuData)."""
    mod = getattr(adata, "mod", None)
    if isinstance(mod, dict):
        return {"mudata_obs": adata.obs.copy(), "mod": {k: snapshot(v) for k, v in mod.items()}}
    return {
        "shape": adata.shape,
        "obs_names": adata.obs_names.copy(),
        "var_names": adata.var_names.copy(),
        "X": _matrix(adata.X),
        "obs": adata.obs.copy(),
        "var": adata.var.copy(),
        "uns": copy.deepcopy(dict(adata.uns)),
        "layers": {k: _matrix(v) for k, v in adata.layers.items()},
        "obsm": {k: _matrix(v) for k, v in adata.obsm.items()},
        "varm": {k: _matrix(v) for k, v in adata.varm.items()},
        "obsp": {k: _matrix(v) for k, v in adata.obsp.items()},
    }


def assert_same_snapshot(before: dict, after: dict) -> None:
    assert before.keys() == after.keys()
    for key in before:
        if key == "mod":
            assert before[key].keys() == after[key].keys()
            for name in before[key]:
                assert_same_snapshot(before[key][name], after[key][name])
        elif key in ("obs_names", "var_names"):
            assert before[key].equals(after[key]), f"{key} changed"
        else:
            assert _same(before[key], after[key]), f"{key} changed"


@contextlib.contextmanager
def unchanged(adata):
    """Assert that ``adata`` (X, obs, var, uns, layers, obsm, varm, obsp) is the same after the block, raising or not."""
    before = snapshot(adata)
    try:
        yield
    finally:
        assert_same_snapshot(before, snapshot(adata))


@pytest.fixture(scope="session")
def rel(toy_model_cls):
    """The helpers above, for test modules (which cannot import this conftest under ``--import-mode=importlib``)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        base_adata=base_adata,
        build_model=lambda name, adata=None, **kw: build_model(name, toy_model_cls, adata, **kw),
        model_class=lambda name: model_class(name, toy_model_cls),
        mark_trained=mark_trained,
        unchanged=unchanged,
        snapshot=snapshot,
        assert_same_snapshot=assert_same_snapshot,
        TINY=TINY,
    )
