from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import threading

import pytest

import cellformers
from cellformers import ChecksumError
from cellformers.data import REFERENCES, GeneVocab, available_references, fetch_reference
from cellformers.data._references import REFERENCE_URL_ENV


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def local_server(tmp_path, monkeypatch):
    """Serve ``tmp_path/www`` on 127.0.0.1 (ephemeral port) and point CELLFORMERS_REFERENCE_URL at it."""
    www = tmp_path / "www"
    www.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(www))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(REFERENCE_URL_ENV, f"http://127.0.0.1:{server.server_address[1]}/")
    yield www
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def test_cards_are_pinned():
    assert available_references() == ["scfoundation-19264", "scgpt-default"]
    for card in REFERENCES.values():
        assert len(card.sha256) == 64
        assert int(card.sha256, 16) >= 0
        assert card.url.startswith("https://raw.githubusercontent.com/")
        # pinned to a full commit, not a branch
        commit = card.url.split("/")[5]
        assert len(commit) == 40


def test_card_hashes_match_shared_files(shared_genes_dir):
    for src, name in (
        ("scfoundation_OS_scRNA_gene_index.19264.tsv", "scfoundation-19264"),
        ("scgpt_default_gene_vocab.json", "scgpt-default"),
    ):
        digest = hashlib.sha256((shared_genes_dir / src).read_bytes()).hexdigest()
        assert digest == REFERENCES[name].sha256


def test_unknown_reference():
    with pytest.raises(ValueError, match="Known references: scfoundation-19264, scgpt-default"):
        fetch_reference("nope")


def test_fetch_from_seeded_cache(seeded_references):
    path = fetch_reference("scfoundation-19264")
    assert path == seeded_references / REFERENCES["scfoundation-19264"].fname
    assert path.parent.parent == cellformers.settings.cache_dir


def test_load_scfoundation(seeded_references):
    vocab = GeneVocab.load("scfoundation-19264")
    assert vocab.name == "scfoundation-19264"
    assert vocab.n_genes == 19264
    assert len(vocab) == 19264 + 3
    assert vocab.genes[:3] == ["A1BG", "A1CF", "A2M"]
    assert vocab["ZZZ3"] == 19263
    assert vocab.pad_id == 19264
    assert vocab.cls_id == 19265
    assert vocab.mask_id == 19266


def test_load_scgpt_keeps_ids(seeded_references, shared_genes_dir):
    import json

    raw = json.loads((shared_genes_dir / "scgpt_default_gene_vocab.json").read_text())
    vocab = GeneVocab.load("scgpt-default")
    assert vocab.n_genes == 48292
    for sym in ("ZZZ3", "CD4", "ACTB", "C1orf159"):
        assert vocab[sym] == raw[sym]
    assert vocab.pad_id == 48292


def test_download_from_local_server(local_server, tiny_reference):
    card, path = tiny_reference
    shutil.copyfile(path, local_server / card.fname)
    got = fetch_reference(card.name)
    assert got == cellformers.settings.cache_dir / "references" / card.fname
    assert got.read_bytes() == path.read_bytes()
    vocab = GeneVocab.load(card.name)
    assert vocab.genes == ["CD4", "CD8A", "ACTB", "GAPDH", "MS4A1"]


def test_download_real_card_from_local_server(local_server, shared_genes_dir):
    card = REFERENCES["scfoundation-19264"]
    shutil.copyfile(shared_genes_dir / "scfoundation_OS_scRNA_gene_index.19264.tsv", local_server / card.fname)
    assert GeneVocab.load("scfoundation-19264").n_genes == 19264
    assert (cellformers.settings.cache_dir / "references" / card.fname).is_file()


def test_corrupted_download_is_rejected_and_deleted(local_server, tiny_reference):
    card, path = tiny_reference
    (local_server / card.fname).write_text(path.read_text().replace("CD4", "CD5"))
    with pytest.raises(ChecksumError, match="does not match its pinned sha256"):
        fetch_reference(card.name)
    folder = cellformers.settings.cache_dir / "references"
    assert not (folder / card.fname).exists()
    assert not [p for p in folder.iterdir() if p.is_file()]  # no temporary leftovers either


def test_corrupted_cached_file_is_replaced(local_server, tiny_reference):
    card, path = tiny_reference
    folder = cellformers.settings.cache_dir / "references"
    folder.mkdir(parents=True)
    (folder / card.fname).write_text("garbage")
    shutil.copyfile(path, local_server / card.fname)
    assert fetch_reference(card.name).read_bytes() == path.read_bytes()


def test_corrupted_cached_file_and_mirror(local_server, tiny_reference):
    card, path = tiny_reference
    folder = cellformers.settings.cache_dir / "references"
    folder.mkdir(parents=True)
    (folder / card.fname).write_text("garbage")
    (local_server / card.fname).write_text("also garbage")
    with pytest.raises(ChecksumError):
        fetch_reference(card.name)
    assert not (folder / card.fname).exists()


def test_unreachable_server(tiny_reference, monkeypatch):
    card, _ = tiny_reference
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(REFERENCE_URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match="Could not download gene reference 'tiny-5'") as err:
        fetch_reference(card.name)
    assert card.sha256 in str(err.value)
    assert not isinstance(err.value, ChecksumError)


@pytest.mark.internet
@pytest.mark.parametrize("name", sorted(REFERENCES))
def test_real_download(name):
    path = fetch_reference(name)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == REFERENCES[name].sha256
    assert GeneVocab.load(name).n_genes == REFERENCES[name].n_genes
