from __future__ import annotations

import pytest

from cellformers._demo import _learning_lines, _select_models, run_demo


def test_select_models():
    assert _select_models("all") == ["xtrimogene", "scformer", "scpalm"]
    assert _select_models("none") == []
    assert _select_models("scPaLM, xtrimogene") == ["scpalm", "xtrimogene"]
    with pytest.raises(ValueError, match="--models"):
        _select_models("geneformer")


def test_report_reads_each_model_against_its_trivial_baseline():
    import pandas as pd

    class _Model:
        def __init__(self, p, t):
            self.history_ = {
                "pretext_loss_validation": pd.DataFrame({"v": [p]}),
                "trivial_loss_validation": pd.DataFrame({"v": [t]}),
            }

    text = "\n".join(_learning_lines({"xtrimogene": _Model(0.5, 0.6), "scpalm": _Model(0.7, 0.6)}))
    assert "| xtrimogene | 0.5000 | 0.6000 | 0.833 | learned beyond gene statistics |" in text
    assert "| scpalm | 0.7000 | 0.6000 | 1.167 | **did not beat the trivial predictor** |" in text


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
        assert "## Did the models learn?" in text
        for name in ("xtrimogene", "scformer", "scpalm"):
            assert f"| X_{name}_untrained |" in text
            assert f"| {name} | " in text
        assert "| xtrimogene (head on frozen encoder) |" in text
        assert "| logreg_pca (X_pca_hvg) |" in text
