"""The quick-start code of the README and of the documentation's index page, run as written (issue 20).

Each ``python`` code block is executed in a temporary folder holding a small synthetic ``pbmc.h5ad`` (raw counts
in ``X`` and ``layers['counts']``, ``obs['donor']`` and ``obs['cell_type']``), with the reference gene lists
pre-seeded in the cache: nothing is downloaded.
"""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib
import pytest

import cellformers as cf

matplotlib.use("Agg")

REPO_ROOT = Path(__file__).resolve().parents[1]
PAGES = {"README.md": REPO_ROOT / "README.md", "docs/index.md": REPO_ROOT / "docs" / "index.md"}


def _python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(encoding="utf-8"), flags=re.DOTALL)


@pytest.fixture
def pbmc_file(tmp_path, monkeypatch, seeded_references):
    adata = cf.data.synthetic_counts(n_cells=96, n_genes=120, n_batches=2, n_labels=4)
    adata.obs["donor"] = adata.obs["batch"]
    adata.obs["cell_type"] = adata.obs["labels"]
    adata.write_h5ad(tmp_path / "pbmc.h5ad")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cf.settings, "progress_bar", False)
    return tmp_path / "pbmc.h5ad"


def _run_blocks(page: str, *, quick: bool) -> None:
    blocks = _python_blocks(PAGES[page])
    assert blocks, f"{page} has no python code block"
    for code in blocks:
        if quick:  # one epoch instead of ten: the decoder of the 10M preset runs over 19,264 genes per cell
            assert "max_epochs=10" in code
            code = code.replace("max_epochs=10", "max_epochs=1")
        namespace: dict = {}
        exec(compile(code, f"<{page}>", "exec"), namespace)
        adata = namespace["adata"]
        assert adata.obsm["X_xtrimogene"].shape[0] == adata.n_obs
        assert namespace["model"].vocab.name == "scfoundation-19264"
        assert "cellformers_benchmark" in adata.uns


@pytest.mark.parametrize("page", list(PAGES))
def test_quickstart_code_runs(page, pbmc_file):
    """The code as written, but one training epoch."""
    _run_blocks(page, quick=True)


@pytest.mark.slow
@pytest.mark.parametrize("page", list(PAGES))
def test_quickstart_code_runs_verbatim(page, pbmc_file):
    _run_blocks(page, quick=False)


def test_readme_run_times_name_the_kind_of_cpu():
    """A run time depends on whether the CPU has bfloat16 units: each stated time says which kind it was on."""
    text = " ".join(PAGES["README.md"].read_text(encoding="utf-8").split())
    sentences = [s for s in re.split(r"(?<=\.)\s+(?=[A-Z])", text) if re.search(r"\d+ minutes", s)]
    assert sentences, "the README states no run time"
    for sentence in sentences:
        assert "bfloat16" in sentence, f"run time without the kind of CPU it was measured on: {sentence!r}"
