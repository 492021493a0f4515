"""scanpy's ``test_sig_conventions`` adapted to cellformers' ``pp`` / ``tl`` / ``pl``.

Functions are collected from each module's ``__all__`` at run time, so whatever is exported is checked.
"""

from __future__ import annotations

import inspect
from inspect import Parameter, signature

import pytest
from anndata import AnnData

import cellformers as cf

api_modules = {"pp": cf.pp, "tl": cf.tl, "pl": cf.pl}

api_functions = [
    pytest.param(func, f"cf.{mod_name}.{name}", id=f"cf.{mod_name}.{name}")
    for mod_name, mod in api_modules.items()
    for name in sorted(getattr(mod, "__all__", []))
    if inspect.isfunction(func := inspect.unwrap(getattr(mod, name)))
]
pl_functions = [p for p in api_functions if p.id.startswith("cf.pl.")]

# Deliberate deviations, each with its reason (as scanpy's ``copy_sigs`` exceptions).
# First parameter is not ``adata``:
FIRST_PARAM_EXCEPTIONS = {
    # builds an imputation method for `evaluate_imputation` from a model class; it never sees an AnnData itself
    "cf.tl.train_and_impute": "model_cls",
    # plots a model's training history (scvi-tools keeps it on the model, not in an AnnData)
    "cf.pl.history": "model",
    "cf.pl.codebook": "model",
}
# Return annotation with ``copy`` other than ``AnnData | None``:
COPY_RETURN_EXCEPTIONS = {
    # like scanpy's filter_cells: `inplace=False` returns the (mask, counts) pair
    "cf.pp.filter_cells_by_genes": "AnnData | tuple[np.ndarray, np.ndarray] | None",
}


def param_is_pos(p: Parameter) -> bool:
    return p.kind in {Parameter.POSITIONAL_ONLY, Parameter.POSITIONAL_OR_KEYWORD}


def _is_anndata_annotation(ann) -> bool:
    if ann is AnnData:
        return True
    return isinstance(ann, str) and (ann == "AnnData" or ann.startswith("AnnData |"))


def test_modules_export_something():
    assert api_functions, "pp/tl/pl export no function"
    for mod_name, mod in api_modules.items():
        for name in getattr(mod, "__all__", []):
            assert hasattr(mod, name), f"cf.{mod_name}.__all__ lists {name!r}, which does not exist"


@pytest.mark.parametrize(("f", "qualname"), api_functions)
def test_sig_conventions(f, qualname):
    sig = signature(f)
    params = list(sig.parameters.values())

    n_pos = sum(1 for p in params if param_is_pos(p))
    assert n_pos <= 3, f"{qualname}: public functions should have <= 3 positional parameters"

    assert params, f"{qualname} takes no parameter"
    first = params[0]
    expected_first = FIRST_PARAM_EXCEPTIONS.get(qualname, "adata")
    assert first.name == expected_first, f"{qualname}: the first parameter should be `adata`, got {first.name!r}"
    if first.name == "adata":
        assert _is_anndata_annotation(first.annotation), f"{qualname}: `adata` should be annotated AnnData"

    if (key_added := sig.parameters.get("key_added")) is not None:
        assert key_added.kind is Parameter.KEYWORD_ONLY, f"{qualname}: `key_added` should be keyword-only"

    if (copy := sig.parameters.get("copy")) is not None:
        assert copy.kind is Parameter.KEYWORD_ONLY, f"{qualname}: `copy` should be keyword-only"
        assert copy.default is False, f"{qualname}: `copy` should default to False"
        expected = COPY_RETURN_EXCEPTIONS.get(qualname, f"{first.annotation} | None")
        assert sig.return_annotation == expected, (
            f"{qualname}: with `copy`, the return annotation should be `{expected}`, got {sig.return_annotation!r}"
        )

    assert sig.return_annotation is not Parameter.empty, f"{qualname}: the return type should be annotated"


@pytest.mark.parametrize(("f", "qualname"), pl_functions)
def test_pl_contract(f, qualname):
    sig = signature(f)
    for name, default in (("show", None), ("ax", None), ("return_fig", False)):
        p = sig.parameters.get(name)
        assert p is not None, f"{qualname}: plotting functions take `{name}`"
        assert p.kind is Parameter.KEYWORD_ONLY, f"{qualname}: `{name}` should be keyword-only"
        assert p.default is default, f"{qualname}: `{name}` should default to {default!r}"
    assert "Figure" in str(sig.return_annotation), f"{qualname}: should be annotated to return a Figure when asked"


@pytest.mark.parametrize(("f", "qualname"), api_functions)
def test_docstring(f, qualname):
    doc = inspect.getdoc(f)
    assert doc, f"{qualname} has no docstring"
    assert "%(" not in doc, f"{qualname}: unfilled docrep placeholder in the docstring"
    assert "Parameters\n----------" in doc, f"{qualname}: numpydoc `Parameters` section missing"
    if signature(f).return_annotation not in ("None", None):
        assert "Returns\n-------" in doc, f"{qualname}: numpydoc `Returns` section missing"
