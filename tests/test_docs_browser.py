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
