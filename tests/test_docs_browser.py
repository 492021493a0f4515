"""The built documentation, opened in headless Chromium (``docs/check_browser.py``)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = REPO_ROOT / "docs"


def _checker():
    spec = importlib.util.spec_from_file_location("check_browser", DOCS / "check_browser.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["check_browser"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_built_site_renders_in_chromium(tmp_path):
    """Build the site, then the index, an API page and a tutorial render with their figures and no missing file."""
    checker = _checker()
    if checker.find_chromium() is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) or set CHROMIUM")
    pytest.importorskip("sphinx")
    pytest.importorskip("myst_nb")
    html = tmp_path / "html"
    env = {**os.environ, "CELLFORMERS_DOCS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-d", str(tmp_path / "doctrees")]
    proc = subprocess.run(
        [*cmd, str(DOCS), str(html)], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=1200, check=False
    )
    assert proc.returncode == 0, proc.stderr[-5000:]

    reports = checker.run_checks(html=html, out=tmp_path / "screenshots")
    assert len(reports) == len(checker.DEFAULT_PAGES)
    for report in reports:
        assert report.ok, f"{report.page}: {report.problems}"
        assert all(Path(s).stat().st_size > 10_000 for s in report.screenshots)
    tutorial = next(r for r in reports if r.page.startswith("tutorials/"))
    assert sum(1 for i in tutorial.images if i["width"] >= 100) >= 1


def test_checker_reports_missing_pages_and_files(tmp_path):
    """Without a browser the check says so; a page that is not in the site is a problem, not a crash."""
    checker = _checker()
    expected = "no built site" if checker.find_chromium() else "no Chromium"
    with pytest.raises(FileNotFoundError, match=expected):
        checker.run_checks(html=tmp_path / "nothing", out=tmp_path / "shots")
    if checker.find_chromium() is None:
        return
    site = tmp_path / "site"
    site.mkdir()
    (site / "index.html").write_text(
        "<html><head><title>t</title><link rel='stylesheet' href='missing.css'></head>"
        "<body><h1>Hello</h1><img src='missing.png'></body></html>"
    )
    reports = checker.run_checks(html=site, pages={"index.html": 1, "absent.html": 0}, out=tmp_path / "shots")
    index, absent = reports
    assert not index.ok
    assert any("missing.css" in e for e in index.local_errors)
    assert any("images did not load" in p for p in index.problems)
    assert any("theme not applied" in p for p in index.problems)
    assert absent.problems == ["absent.html is not in the built site"]


def test_layout_problems_name_cut_titles_overflowing_figures_and_narrow_tutorials():
    checker = _checker()
    state = {"cut": ["cellformers.model.XTrimoG"], "overflowing_images": ["umap.png"], "page_overflow": 40}
    problems = checker.layout_problems("api/x.html", {**state, "article_width": 600})
    assert any("cut off" in p and "XTrimoG" in p for p in problems)
    assert any("overflow the text column" in p for p in problems)
    assert any("scrolls sideways by 40" in p for p in problems)
    assert not any("tutorial column" in p for p in problems)  # API pages may be narrower
    narrow = checker.layout_problems("tutorials/notebooks/a.html", {"article_width": 656})
    assert narrow == [f"tutorial column 656 px wide, at least {checker.MIN_TUTORIAL_WIDTH} expected"]
    assert checker.layout_problems("tutorials/notebooks/a.html", {"article_width": 1100}) == []


def test_browser_finds_a_cut_title_and_an_overflowing_figure(tmp_path):
    """A page laid out badly on purpose: the check names the cut heading and the figure wider than its column."""
    checker = _checker()
    if checker.find_chromium() is None:
        pytest.skip("no Chromium: `apt-get install chromium` (Debian) or set CHROMIUM")
    site = tmp_path / "site"
    (site / "tutorials").mkdir(parents=True)
    png = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
    (site / "fig.png").write_bytes(__import__("base64").b64decode(png))
    style = (
        "<style>h1{width:200px;overflow:hidden;white-space:nowrap}article{width:500px}"
        "img{width:900px;height:200px}</style>"
    )
    body = "<p>" + "text " * 100 + "</p>"
    (site / "tutorials" / "bad.html").write_text(
        f"<html><head><title>t</title>{style}</head><body><article><h1>cellformers.model.XTrimoGene long title</h1>"
        f"{body}<img src='../fig.png'></article></body></html>"
    )
    (site / "index.html").write_text("<html><head><title>i</title></head><body><h1>i</h1></body></html>")
    (report,) = checker.run_checks(html=site, pages={"tutorials/bad.html": 0}, out=tmp_path / "shots")
    problems = " | ".join(report.problems)
    assert "cut off" in problems
    assert "cellformers.model.XTrimoGene" in problems
    assert "overflow the text column" in problems
    assert "tutorial column 500 px wide" in problems
