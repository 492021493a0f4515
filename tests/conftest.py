from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"


def pytest_addoption(parser):
    parser.addoption("--internet-tests", action="store_true", default=False, help="run tests that need the internet")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--internet-tests"):
        return
    skip = pytest.mark.skip(reason="needs --internet-tests")
    for item in items:
        if "internet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set CELLFORMERS_SHARED to the shared/ folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_genes_dir(shared_data_dir) -> Path:
    return shared_data_dir / "genes"


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty cache directory, so nothing is read from or written to the user's cache."""
    import cellformers

    cache = tmp_path_factory.mktemp("cellformers_cache")
    monkeypatch.setattr(cellformers.settings, "_cache_dir", cache)
    yield cache


@pytest.fixture(autouse=True)
def _seed():
    import cellformers

    old = cellformers.settings.seed
    cellformers.settings.seed = 0
    yield
    cellformers.settings.seed = old
