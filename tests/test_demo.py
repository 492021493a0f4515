from __future__ import annotations

import pytest

from cellformers._demo import _select_models, run_demo


def test_select_models():
    assert _select_models("all") == ["xtrimogene", "scformer", "scpalm"]
    assert _select_models("none") == []
    assert _select_models("scPaLM, xtrimogene") == ["scpalm", "xtrimogene"]
    with pytest.raises(ValueError, match="--models"):
        _select_models("geneformer")


@pytest.mark.slow
@pytest.mark.parametrize("models", ["none", "all"])
def test_demo_writes_report(tmp_path, models):
    report = run_demo(out=tmp_path, models=models, quick=True)
    text = report.read_text()
    assert "| X_pca_hvg |" in text
    assert (tmp_path / "benchmark.csv").exists()
    assert (tmp_path / "umap.png").stat().st_size > 10_000
    if models == "all":
        for name in ("xtrimogene", "scformer", "scpalm"):
            assert f"| X_{name} |" in text
        assert "## Cell-type annotation" in text
        assert "| xtrimogene (head on frozen encoder) |" in text
        assert "| logreg_pca (X_pca_hvg) |" in text
