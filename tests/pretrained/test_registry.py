"""The registry: cards, pooch downloads from a local server (good, corrupted, wrong hash, interrupted), cache hits."""

from __future__ import annotations

import shutil
import socket

import numpy as np
import pytest

import cellformers
from cellformers import ChecksumError, UntrustedCheckpointError
from cellformers.checkpoint._format import file_sha256
from cellformers.pretrained import (
    PRETRAINED_URL_ENV,
    REGISTRY,
    CheckpointError,
    PretrainedCard,
    fetch_pretrained,
    get_pretrained_card,
    list_pretrained,
    pack_checkpoint,
    register_pretrained,
)

FAKE_SHA = "0" * 64


@pytest.fixture
def archive(trained, tmp_path_factory):
    """The trained toy checkpoint packed as one ``.tar``."""
    return pack_checkpoint(trained.path, tmp_path_factory.mktemp("packed") / "toy.tar")


@pytest.fixture
def registry(monkeypatch):
    """An empty registry for the test (the module dict is patched back afterwards)."""
    monkeypatch.setattr("cellformers.checkpoint._registry.REGISTRY", {})
    monkeypatch.setattr("cellformers.pretrained.REGISTRY", cellformers.checkpoint._registry.REGISTRY)
    return cellformers.checkpoint._registry.REGISTRY


@pytest.fixture
def served(archive, server, registry, monkeypatch, trained):
    """A card ``toy-remote`` whose archive is on the local server (reached through the mirror variable)."""
    shutil.copyfile(archive, server.www / "toy-remote.tar")
    card = PretrainedCard(
        name="toy-remote",
        model_class=_class_name(trained),
        url="https://example.invalid/models/toy.tar",
        sha256=file_sha256(archive),
        size_bytes=archive.stat().st_size,
        vocabulary="toy",
        citation="nobody",
        license="CC0-1.0",
        description="toy checkpoint",
    )
    register_pretrained(card)
    monkeypatch.setenv(PRETRAINED_URL_ENV, server.url)
    return card


def _class_name(trained):
    import json

    return json.loads((trained.path / "config.json").read_text())["model_class"]


def _cache_files():
    folder = cellformers.settings.cache_dir / "pretrained"
    return sorted(p.name for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []


# ------------------------------------------------------------------------------------------------ cards
def test_builtin_cards_are_pinned():
    for card in REGISTRY.values():  # only verifiable public files may be listed
        assert card.url.startswith("https://")
        assert len(card.sha256) == 64
        assert card.citation
        assert card.license != "unknown"


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"name": "../evil"}, "`name`"),
        ({"sha256": "abc"}, "64 lower-case hex"),
        ({"url": "https://host/model.pt"}, "checkpoint archive"),
        ({"url": "s3://bucket/model.tar"}, "Unsupported URL scheme"),
        ({"model_class": "os.system; rm"}, "dotted class name"),
    ],
)
def test_card_validation(kwargs, match):
    values = {"name": "ok", "model_class": "cellformers.model.ScFormer", "url": "https://h/m.tar", "sha256": FAKE_SHA}
    with pytest.raises(ValueError, match=match):
        PretrainedCard(**{**values, **kwargs})


def test_list_and_register(registry, served, archive):
    df = list_pretrained()
    assert df.index.tolist() == ["toy-remote"]
    assert df.loc["toy-remote", "license"] == "CC0-1.0"
    assert df.loc["toy-remote", "size_mb"] == pytest.approx(archive.stat().st_size / 1e6, abs=0.01)
    assert not df.loc["toy-remote", "cached"]
    fetch_pretrained("toy-remote")
    assert list_pretrained().loc["toy-remote", "cached"]
    other = PretrainedCard(name="toy-remote", model_class="x.Y", url="https://h/m.tar", sha256=FAKE_SHA)
    with pytest.raises(ValueError, match="overwrite=True"):
        register_pretrained(other)
    register_pretrained(other, overwrite=True)
    assert get_pretrained_card("toy-remote") == other
    with pytest.raises(ValueError, match="register_pretrained"):
        get_pretrained_card("nope")


def test_empty_registry_lists_nothing(registry):
    df = list_pretrained()
    assert df.empty
    assert {"model_class", "url", "sha256", "license", "citation", "cached"} <= set(df.columns)


def test_card_from_archive(archive, trained):
    card = PretrainedCard.from_archive(archive, name="mine", license="MIT")
    assert card.sha256 == file_sha256(archive)
    assert card.size_bytes == archive.stat().st_size
    assert card.model_class == _class_name(trained)
    assert card.is_local
    assert card.filename == "mine.tar"


# ------------------------------------------------------------------------------------------------ downloads
def test_download_then_load(ptoy_cls, served, server, make_adata, trained):
    path = fetch_pretrained("toy-remote")
    assert path == cellformers.settings.cache_dir / "pretrained" / "toy-remote.tar"
    assert server.requests == ["/toy-remote.tar"]
    model = ptoy_cls.from_pretrained("toy-remote", make_adata(), accelerator="cpu")
    np.testing.assert_array_equal(model.get_latent_representation(), trained.z)
    assert model.pretrained_info_["name"] == "toy-remote"
    assert model.pretrained_info_["sha256"] == served.sha256
    assert server.requests == ["/toy-remote.tar"]  # the second use hit the cache


def test_cache_hit_without_network(ptoy_cls, served, server, make_adata, trained):
    fetch_pretrained("toy-remote")
    server.stop()
    n = len(server.requests)
    assert fetch_pretrained("toy-remote").is_file()
    model = ptoy_cls.from_pretrained("toy-remote", accelerator="cpu")
    np.testing.assert_array_equal(model.get_latent_representation(make_adata()), trained.z)
    assert len(server.requests) == n


def test_corrupted_download_is_deleted(served, server):
    data = bytearray((server.www / "toy-remote.tar").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (server.www / "toy-remote.tar").write_bytes(bytes(data))
    with pytest.raises(ChecksumError, match="does not match its pinned sha256"):
        fetch_pretrained("toy-remote")
    assert _cache_files() == []  # neither the file nor pooch's temporary copy


def test_wrong_hash_in_card(served, registry):
    register_pretrained(PretrainedCard(**{**served.__dict__, "sha256": FAKE_SHA}), overwrite=True)
    with pytest.raises(ChecksumError, match=PRETRAINED_URL_ENV):
        fetch_pretrained("toy-remote")
    assert _cache_files() == []


def test_corrupted_cached_file_is_replaced(served):
    folder = cellformers.settings.cache_dir / "pretrained"
    folder.mkdir(parents=True)
    (folder / "toy-remote.tar").write_bytes(b"garbage")
    assert file_sha256(fetch_pretrained("toy-remote")) == served.sha256


def test_interrupted_download(served, server, monkeypatch):
    monkeypatch.setenv(PRETRAINED_URL_ENV, f"{server.url}/truncated")
    with pytest.raises(OSError, match="Could not download pretrained model 'toy-remote'") as err:
        fetch_pretrained("toy-remote")
    assert not isinstance(err.value, ChecksumError)
    assert server.requests == ["/truncated/toy-remote.tar"]
    assert _cache_files() == []


def test_unreachable_server(served, monkeypatch):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv(PRETRAINED_URL_ENV, f"http://127.0.0.1:{port}")
    with pytest.raises(OSError, match="Could not download") as err:
        fetch_pretrained("toy-remote")
    assert served.sha256 in str(err.value)  # the message says which file to place in the cache


def test_card_url_without_mirror(archive, server, registry, trained, monkeypatch):
    monkeypatch.delenv(PRETRAINED_URL_ENV, raising=False)
    shutil.copyfile(archive, server.www / "toy.tar")
    register_pretrained(
        PretrainedCard(
            name="direct", model_class=_class_name(trained), url=f"{server.url}/toy.tar", sha256=file_sha256(archive)
        )
    )
    assert fetch_pretrained("direct").name == "direct.tar"
    assert server.requests == ["/toy.tar"]


def test_url_needs_a_hash(ptoy_cls, archive, server, make_adata, trained):
    shutil.copyfile(archive, server.www / "toy.tar")
    url = f"{server.url}/toy.tar"
    with pytest.raises(UntrustedCheckpointError, match="sha256="):
        ptoy_cls.from_pretrained(url, accelerator="cpu")
    assert server.requests == []  # refused before any download
    with pytest.raises(ChecksumError):
        ptoy_cls.from_pretrained(url, accelerator="cpu", sha256=FAKE_SHA)
    model = ptoy_cls.from_pretrained(url, make_adata(), accelerator="cpu", sha256=file_sha256(archive))
    np.testing.assert_array_equal(model.get_latent_representation(), trained.z)
    # file:// URLs too
    with pytest.raises(UntrustedCheckpointError):
        ptoy_cls.from_pretrained(archive.as_uri(), accelerator="cpu")
    ptoy_cls.from_pretrained(archive.as_uri(), accelerator="cpu", sha256=file_sha256(archive))


def test_local_card_is_verified_and_never_deleted(ptoy_cls, archive, registry, tmp_path, make_adata, trained):
    local = tmp_path / "mine.tar"
    shutil.copyfile(archive, local)
    register_pretrained(PretrainedCard.from_archive(local, name="mine"))
    model = ptoy_cls.from_pretrained("mine", make_adata(), accelerator="cpu")
    np.testing.assert_array_equal(model.get_latent_representation(), trained.z)
    assert _cache_files() == []  # used in place, not copied
    local.write_bytes(local.read_bytes()[:-10])
    with pytest.raises(ChecksumError, match="does not match the card's sha256"):
        fetch_pretrained("mine")
    assert local.exists()  # the user's own file is never deleted


def test_card_class_must_match_checkpoint(ptoy_cls, served, registry):
    register_pretrained(
        PretrainedCard(**{**served.__dict__, "model_class": "cellformers.model.ScPaLM"}), overwrite=True
    )
    with pytest.raises(CheckpointError, match="the card is wrong"):
        ptoy_cls.from_pretrained("toy-remote", accelerator="cpu")


def test_unknown_source(ptoy_cls, registry):
    with pytest.raises(CheckpointError, match="neither a registered pretrained model"):
        ptoy_cls.from_pretrained("no-such-model", accelerator="cpu")
