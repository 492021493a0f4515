"""The tutorials: their sources parse, the stored notebooks are current and ran cleanly, and a smoke notebook runs.

The smoke notebook (``tutorials/sources/_smoke.py``) calls, in miniature, every function, option and output key the
tutorials use, on scanpy's bundled ``pbmc68k_reduced``: a change of API that breaks a tutorial fails here.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = REPO_ROOT / "tutorials"
SOURCES = TUTORIALS / "sources"


def _run_module():
    spec = importlib.util.spec_from_file_location("tutorials_run", TUTORIALS / "run.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["tutorials_run"] = module
    spec.loader.exec_module(module)
    return module


def _published() -> list[Path]:
    return [p for p in sorted(SOURCES.glob("*.py")) if not p.stem.startswith("_")]


def test_percent_format_parser():
    run = _run_module()
    text = (
        '"""ignored docstring"""\n'
        "# %% [markdown]\n# # Title\n#\n# Some *text*.\n\n"
        "# %%\nimport math\n\nx = math.pi\n\n"
        "# %% [markdown]\n# more\n"
        "# %%\n\n"  # an empty code cell is dropped
        "# %% some title\nprint(x)\n"
    )
    assert run.parse_percent(text) == [
        ("markdown", "# Title\n\nSome *text*."),
        ("code", "import math\n\nx = math.pi"),
        ("markdown", "more"),
        ("code", "print(x)"),
    ]


def test_every_tutorial_source_builds_a_titled_notebook():
    run = _run_module()
    sources = _published()
    assert len(sources) >= 4, "the quick start and the three model tutorials are expected"
    for source in sources:
        nb = run.build_notebook(source)
        first = nb.cells[0]
        assert first.cell_type == "markdown", f"{source.name}: no title cell"
        assert first.source.startswith("# "), f"{source.name}: no title cell"
        assert any(c.cell_type == "code" for c in nb.cells)
        assert len({c["id"] for c in nb.cells}) == len(nb.cells)


def test_stored_notebooks_are_current_and_ran_cleanly():
    """Each ``tutorials/<name>.ipynb`` has the cells of its source, every code cell executed, and no error."""
    pytest.importorskip("nbformat")
    run = _run_module()
    problems = []
    for source in _published():
        problems += run.check(TUTORIALS / f"{source.stem}.ipynb", source)
    assert not problems, "\n".join(problems)


def test_check_reports_stale_and_unexecuted_notebooks(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    run = _run_module()
    source = tmp_path / "demo.py"
    source.write_text("# %% [markdown]\n# # Demo\n# %%\nx = 1\n")
    path = tmp_path / "demo.ipynb"
    assert "missing" in run.check(path, source)[0]
    nbformat.write(run.build_notebook(source), path)
    assert any("not executed" in p for p in run.check(path, source))
    source.write_text("# %% [markdown]\n# # Demo\n# %%\nx = 2\n")
    assert any("differs" in p for p in run.check(path, source))


def test_smoke_notebook_executes(tmp_path):
    """Run the smoke notebook in a fresh kernel (fails on the first cell that raises)."""
    pytest.importorskip("nbclient", reason="nbclient runs the notebooks (doc dependency group)")
    pytest.importorskip("ipykernel", reason="ipykernel runs the notebooks (doc dependency group)")
    run = _run_module()
    nb = run.build_notebook(SOURCES / "_smoke.py")
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        run.execute(nb, cwd=tmp_path, timeout=300)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    out = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "all tutorial calls ran" in out


def test_markdown_only_refresh_keeps_outputs_of_unchanged_code(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    run = _run_module()
    source = tmp_path / "demo.py"
    source.write_text("# %% [markdown]\n# # Demo\n# %%\nx = 1\n")
    path = tmp_path / "demo.ipynb"
    nb = run.build_notebook(source)
    nb.cells[1].outputs = [nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.cells[1].execution_count = 1
    nbformat.write(nb, path)
    source.write_text("# %% [markdown]\n# # Demo, reworded\n# %%\nx = 1\n")
    assert run.refresh_markdown(path, source)
    stored = nbformat.read(path, as_version=4)
    assert stored.cells[0].source == "# Demo, reworded"
    assert stored.cells[1].outputs[0]["text"] == "1\n"
    assert run.check(path, source) == []
    source.write_text("# %% [markdown]\n# # Demo\n# %%\nx = 2\n")  # code changed: outputs would be stale
    assert not run.refresh_markdown(path, source)
