"""Every declared runtime dependency is used by the package (issue 20: leidenalg, mudata, umap-learn were not)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
SRC = REPO_ROOT / "src" / "cellformers"

# distribution name -> module imported
IMPORT_NAMES = {"scikit-learn": "sklearn", "scvi-tools": "scvi", "umap-learn": "umap"}
# used without an import statement of their own, each with where
INDIRECT = {
    "umap-learn": "cellformers.tl.umap runs scanpy.tl.umap, which is umap-learn",
}


def _dependencies() -> list[str]:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return [re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0].strip() for dep in project["dependencies"]]


def _imported_modules() -> set[str]:
    pattern = re.compile(r"^\s*(?:from|import)\s+([A-Za-z_][\w]*)", flags=re.MULTILINE)
    return {m for path in SRC.rglob("*.py") for m in pattern.findall(path.read_text(encoding="utf-8"))}


def test_every_dependency_is_used():
    imported = _imported_modules()
    unused = [
        dist
        for dist in _dependencies()
        if IMPORT_NAMES.get(dist, dist.replace("-", "_")) not in imported and dist not in INDIRECT
    ]
    assert not unused, f"declared in pyproject.toml but never imported by cellformers: {unused}"


def test_indirect_dependencies_are_declared():
    assert set(INDIRECT) <= set(_dependencies())
    assert "from ._umap import umap" in (SRC / "tl" / "__init__.py").read_text(encoding="utf-8")
    assert "sc.tl.umap" in (SRC / "tl" / "_umap.py").read_text(encoding="utf-8")
