"""The documentation: the Sphinx build with warnings as errors, and the docs extension's API listing."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"


def _docs_extension():
    pytest.importorskip("sphinx")
    sys.path.insert(0, str(DOCS / "_ext"))
    try:
        return importlib.import_module("cellformers_docs")
    finally:
        sys.path.remove(str(DOCS / "_ext"))


@pytest.mark.slow
def test_docs_build_without_warnings(tmp_path):
    """`make docs` in a temporary output folder: `-W --keep-going`, offline (no intersphinx)."""
    for module in ("sphinx", "myst_nb", "sphinx_autodoc_typehints", "sphinx_copybutton", "sphinxcontrib.bibtex"):
        pytest.importorskip(module)
    pytest.importorskip("pydata_sphinx_theme")
    env = {**os.environ, "CELLFORMERS_DOCS_OFFLINE": "1"}
    cmd = [
        sys.executable,
        "-m",
        "sphinx",
        "-W",
        "--keep-going",
        "-E",
        "-b",
        "html",
        "-d",
        str(tmp_path / "doctrees"),
        str(DOCS),
        str(tmp_path / "html"),
    ]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=900, check=False)
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, "sphinx build failed:\n" + "\n".join(warnings or [proc.stderr[-5000:]])
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api" / "generated" / "pp.html").is_file()


def test_api_index_lists_every_export():
    """Every name in a public subpackage's ``__all__`` is documented once, or resolves to where it is documented."""
    ext = _docs_extension()
    index = ext.build_api_index()
    documented = {entry.canonical for page in index.pages for entry in page.entries}
    documented |= {f"{page.module}.{data.name}" for page in index.pages for data in page.data}
    pages = {page.module: page for page in index.pages}
    import cellformers

    for module_name in ["cellformers", *(f"cellformers.{sub}" for sub in ext._public_subpackages(cellformers))]:
        module = importlib.import_module(module_name)
        assert module_name in pages, f"{module_name} has no API page"
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if ext._kind(obj) is None:  # subpackages have their own page
                continue
            public = f"{module_name}.{name}"
            assert public in documented or public in index.aliases, f"{public} is missing from the API reference"


def test_api_page_renders_autosummary_tables():
    ext = _docs_extension()
    page = ext._Page(docname="api/generated/x", module="cellformers.x", title="X: `x`", description="Things.")
    page.entries += [ext._Entry("cellformers.x", "Thing", "class"), ext._Entry("cellformers.x", "do", "function")]
    text = ext._render_page(page)
    assert ".. module:: cellformers.x" in text
    assert ".. autosummary::\n   :toctree: .\n   :nosignatures:\n\n   Thing\n" in text
    assert "Functions\n---------" in text


def test_returns_section_kept_as_written():
    """Prose in ``Returns`` must not become the return type (napoleon would read ``Tensor of ...`` as a type)."""
    ext = _docs_extension()
    lines = [
        "Do it.",
        "",
        "Parameters",
        "----------",
        "x",
        "    Input.",
        "",
        "Returns",
        "-------",
        ":",  # what sphinx-autodoc-typehints inserts before us
        "Tensor of shape ``(n, d)``.",
        "",
        "Examples",
        "--------",
        ">>> do(1)",
    ]
    ext.returns_as_field(None, "function", "do", None, None, lines)
    i = lines.index("Returns")
    assert lines[i + 2 : i + 5] == [":", "    Tensor of shape ``(n, d)``.", ""]
    assert lines[i + 5 : i + 7] == ["Examples", "--------"]


def test_private_paths_resolve_to_public_names():
    ext = _docs_extension()
    aliases = {"cellformers.data._vocab.GeneVocab": "cellformers.data.GeneVocab"}
    assert ext._alias_of("cellformers.data._vocab.GeneVocab", aliases) == "cellformers.data.GeneVocab"
    assert ext._alias_of("cellformers.data._vocab.GeneVocab.load", aliases) == "cellformers.data.GeneVocab.load"
    assert ext._alias_of("cellformers.data.other", aliases) is None
    assert ext._qualify_bare("Tensor") == "torch.Tensor"
    assert ext._qualify_bare("AnnData") == "anndata.AnnData"
    assert ext._qualify_bare("NoSuchThingAnywhere") is None


def test_only_missing_cellformers_objects_fail_the_build():
    """Existing private objects are shown as code; names that do not exist must fail (nitpicky)."""
    ext = _docs_extension()
    assert ext._private_object_exists("cellformers._settings.CellformersConfig")
    assert not ext._private_object_exists("cellformers._settings.NoSuchThing")
    assert not ext._private_object_exists("cellformers.settings")  # public: must resolve as a documented object
    assert ext._private_object_exists("cellformers.settings", private_only=False)


@pytest.mark.parametrize("name", ["XTrimoGene", "ScFormer", "ScPaLM"])
def test_model_pages_leave_out_scvi_members_that_do_not_apply(name):
    """A model page lists what a cellformers user calls, not scvi-tools' members for other models (issue 20)."""
    import cellformers as cf

    ext = _docs_extension()
    members = ext.class_members(getattr(cf.model, name))
    shown = set(members["methods"]) | set(members["table"])
    for hidden in ("differential_abundance", "get_normalized_expression", "run_id", "run_name", "convert_legacy_save"):
        assert hidden not in shown
    for kept in ("train", "save", "load", "from_pretrained", "get_latent_representation", "adata", "history"):
        assert kept in shown
