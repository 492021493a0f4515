"""scanpy's signature conventions (``tests/test_package_structure.py``) for ``cellformers.pp``."""

from __future__ import annotations

import inspect

import pytest

import cellformers as cf

# check_counts only validates; align_to_reference necessarily returns a new object.
WRITERS = [name for name in cf.pp.__all__ if name not in ("check_counts", "align_to_reference")]


@pytest.mark.parametrize("name", cf.pp.__all__)
def test_adata_first_and_documented(name):
    func = getattr(cf.pp, name)
    params = list(inspect.signature(func).parameters.values())
    assert params[0].name == "adata"
    positional = [p for p in params if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
    assert len(positional) <= 3
    doc = inspect.getdoc(func)
    assert "%(" not in doc
    for p in params:
        assert f"\n{p.name}\n" in f"\n{doc}\n", f"{name}: parameter {p.name!r} is not documented"


@pytest.mark.parametrize("name", WRITERS)
def test_copy_and_key_added_are_keyword_only(name):
    sig = inspect.signature(getattr(cf.pp, name))
    assert sig.parameters["copy"].kind is inspect.Parameter.KEYWORD_ONLY
    assert sig.parameters["copy"].default is False
    assert sig.parameters["key_added"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "AnnData" in str(sig.return_annotation)
    assert str(sig.return_annotation).endswith("| None")
