"""Static checks over the package source: every download pins a hash and nothing unpickles without restriction.

The behaviour is tested where it lives (``tests/pretrained``: pinned cards, hash-checked downloads, class allowlist,
pickled weights never read; ``test_interruption.py``: malicious pickles in Lightning checkpoints and in ``save``d
models are refused). These tests make sure no new code path bypasses those rules.
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src" / "cellformers"
FILES = sorted(SRC.rglob("*.py"))


@functools.cache
def _all_calls() -> list[tuple[Path, ast.Call, str]]:
    """``(file, call, dotted name of the callee)`` for every call in the package."""
    out = []
    for path in FILES:
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                out.append((path.relative_to(SRC), node, ast.unparse(node.func)))
    return out


def _calls(name: str):
    """``(file, call)`` for every call whose dotted name ends with ``name`` (``torch.load``, ``pooch.retrieve``)."""
    for path, node, func in _all_calls():
        if func == name or func.endswith("." + name):
            yield path, node


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_source_tree_is_found():
    assert len(FILES) > 50


def test_every_torch_load_is_restricted():
    calls = list(_calls("torch.load"))
    assert calls, "expected torch.load calls (safe_torch_load, the model-file check)"
    for path, call in calls:
        weights_only = _keyword(call, "weights_only")
        restricted = _keyword(call, "pickle_module") is not None  # the allowlisting unpickler of model files
        assert restricted or (isinstance(weights_only, ast.Constant) and weights_only.value is True), (
            f"{path}:{call.lineno}: torch.load without weights_only=True"
        )


@pytest.mark.parametrize("name", ["pickle.load", "pickle.loads", "joblib.load", "dill.load", "cloudpickle.load"])
def test_nothing_is_unpickled_directly(name):
    offenders = [f"{p}:{c.lineno}" for p, c in _calls(name)]
    assert offenders == []


def test_every_download_pins_a_hash():
    calls = list(_calls("pooch.retrieve"))
    assert calls
    for path, call in calls:
        known_hash = _keyword(call, "known_hash")
        where = f"{path}:{call.lineno}: pooch.retrieve without a pinned known_hash"
        assert known_hash is not None, where
        assert not (isinstance(known_hash, ast.Constant) and known_hash.value is None), where


@pytest.mark.parametrize("name", ["urllib.request.urlopen", "urlopen", "requests.get", "httpx.get", "urlretrieve"])
def test_no_download_bypasses_pooch(name):
    offenders = [f"{p}:{c.lineno}" for p, c in _calls(name)]
    assert offenders == []
