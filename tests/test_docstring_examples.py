"""Every public function and class has a working ``Examples`` section (issue 8).

"Public" is what the API reference documents: the classes and functions in the ``__all__`` of each public
subpackage, plus the top-level exceptions and ``cellformers.settings``. Module-level constants need no example.
Each docstring's examples are run as doctests in a fresh namespace holding ``cf``, ``np``, ``torch`` and ``ad``
(``settings.cache_dir`` is the per-test empty cache of ``conftest.py``, the seed is 0 and log messages, which go to
stdout, are switched off; the network is refused; checkpoints registered by an example are unregistered
after it). Each example must run the object it documents: lines marked ``+SKIP`` alone do not count.
"""

from __future__ import annotations

import doctest
import importlib
import inspect

import anndata as ad
import matplotlib
import numpy as np
import pytest
import torch

import cellformers as cf

matplotlib.use("Agg")  # examples of `cf.pl` draw figures; nothing is shown

SUBPACKAGES = ("pp", "tl", "pl", "downstream", "data", "model", "pretrained", "nn", "module", "train")


def _public_objects() -> dict[str, object]:
    """Documented name -> object, each object once (at its first export, as in the API reference)."""
    out: dict[str, object] = {}
    seen: set[int] = set()
    candidates = [
        (f"cellformers.{sub}.{name}", getattr(importlib.import_module(f"cellformers.{sub}"), name))
        for sub in SUBPACKAGES
        for name in importlib.import_module(f"cellformers.{sub}").__all__
    ]
    candidates += [(f"cellformers.{name}", getattr(cf, name)) for name in cf.__all__]
    for name, obj in candidates:
        if name == "cellformers.settings":
            pass  # the one public instance: documented by its class's docstring
        elif not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isfunction(inspect.unwrap(obj))):
            continue  # modules and constants
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        out[name] = obj
    return out


PUBLIC = _public_objects()


def test_public_objects_found():
    # the collection itself must not silently shrink (e.g. if ``__all__`` stops being read)
    assert len(PUBLIC) > 90
    assert "cellformers.settings" in PUBLIC
    assert "cellformers.CellformersError" in PUBLIC
    assert "cellformers.nn.TransformerEncoder" in PUBLIC
    assert "cellformers.model.SCPALM_PRESETS" not in PUBLIC


def _has_examples(obj) -> bool:
    doc = inspect.getdoc(obj) or ""
    lines = doc.splitlines()
    return any(
        line.strip() == "Examples" and i + 1 < len(lines) and set(lines[i + 1].strip()) == {"-"}
        for i, line in enumerate(lines)
    )


def test_every_public_object_has_examples():
    missing = [name for name, obj in PUBLIC.items() if not _has_examples(obj)]
    assert not missing, f"public objects without a numpydoc `Examples` section: {missing}"


def test_examples_check_detects_missing_section():
    def documented():
        """Do nothing.

        Examples
        --------
        >>> 1 + 1
        2
        """

    def undocumented():
        """Do nothing."""

    assert _has_examples(documented)
    assert not _has_examples(undocumented)


_FLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE


def _run_examples(name: str) -> None:
    obj = PUBLIC[name]
    short = name.rsplit(".", 1)[-1]
    finder = doctest.DocTestFinder(recurse=False)
    globs = {"cf": cf, "np": np, "torch": torch, "ad": ad}
    tests = [t for t in finder.find(obj, name, globs=globs) if t.examples]
    assert tests, f"{name}: no doctest found in its docstring"
    runner = doctest.DocTestRunner(optionflags=_FLAGS)
    report: list[str] = []
    n_run = 0
    for test in tests:
        # the object itself must be used in an example that runs (not only in skipped ones)
        n_run += sum(not ex.options.get(doctest.SKIP, False) and short in ex.source for ex in test.examples)
        runner.run(test, out=report.append)
    assert runner.failures == 0, f"{name}: {runner.failures} example(s) failed\n{''.join(report)}"
    assert n_run, f"{name}: no example that runs uses `{short}`"


@pytest.fixture
def _example_session(monkeypatch):
    """Quiet logs and progress bars, no network, and nothing an example registers or plots outlives it.

    The package's log messages and progress bars go to stdout, where doctest would read them as output.
    """
    import logging
    import socket

    import matplotlib.pyplot as plt

    def no_network(self, *args, **kwargs):
        msg = "docstring examples must not use the network"
        raise OSError(msg)

    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(cf.settings, "progress_bar", False)  # progress bars go to stdout too
    loggers = [logging.getLogger(n) for n in ("cellformers", "scvi", "lightning", "lightning.pytorch")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    registry = dict(cf.pretrained.REGISTRY)
    # numba's OpenMP layer (used by scanpy) sets the process's OpenMP thread count, which torch shares
    n_threads = torch.get_num_threads()
    yield
    torch.set_num_threads(n_threads)
    cf.pretrained.REGISTRY.clear()
    cf.pretrained.REGISTRY.update(registry)
    plt.close("all")
    for lg, level in zip(loggers, levels, strict=True):
        lg.setLevel(level)


@pytest.mark.usefixtures("_example_session")
@pytest.mark.parametrize("name", [pytest.param(n, id=n.removeprefix("cellformers.")) for n in PUBLIC])
def test_docstring_examples_run(name):
    torch.manual_seed(0)
    _run_examples(name)
