"""One-file archives: deterministic packing, extraction into the cache, and refusal of unsafe members."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile

import pytest

import cellformers
from cellformers import ChecksumError, UntrustedCheckpointError
from cellformers.checkpoint._format import CHECKPOINT_FILES, file_sha256
from cellformers.pretrained import CheckpointError, extract_checkpoint, pack_checkpoint, verify_checkpoint


def _contents(directory):
    return {name: (directory / name).read_bytes() for name in CHECKPOINT_FILES}


def _tar_with(path, members):
    """A tar holding ``members``: ``(name, bytes)`` for files, ``(name, ("symlink", target))`` for links."""
    with tarfile.open(path, "w") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type = tarfile.SYMTYPE
                info.linkname = data[1]
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
    return path


@pytest.mark.parametrize("suffix", [".tar", ".tar.gz", ".zip"])
def test_pack_extract_round_trip(trained, tmp_path, suffix):
    archive = pack_checkpoint(trained.path, tmp_path / f"toy{suffix}")
    digest = file_sha256(archive)
    assert (tmp_path / f"toy{suffix}.sha256").read_text() == f"{digest}  toy{suffix}\n"
    # reproducible: same checkpoint, same bytes
    again = pack_checkpoint(trained.path, tmp_path / "again" / f"toy{suffix}")
    assert file_sha256(again) == digest
    with pytest.raises(CheckpointError, match="overwrite=True"):
        pack_checkpoint(trained.path, archive)
    directory = extract_checkpoint(archive, sha256=digest)
    assert directory.parent == cellformers.settings.cache_dir / "pretrained" / "checkpoints"
    assert directory.name == f"toy-{digest[:16]}"
    assert _contents(directory) == _contents(trained.path)
    assert extract_checkpoint(archive) == directory  # reused, not extracted again
    with pytest.raises(ChecksumError, match="does not match the expected sha256"):
        extract_checkpoint(archive, sha256="f" * 64)


def test_default_archive_name_and_suffix(trained, tmp_path):
    import shutil

    src = shutil.copytree(trained.path, tmp_path / "model")
    assert pack_checkpoint(src) == tmp_path / "model.tar"
    with pytest.raises(ValueError, match="must end in"):
        pack_checkpoint(src, tmp_path / "model.pt")


def test_damaged_extraction_is_redone(trained, tmp_path):
    archive = pack_checkpoint(trained.path, tmp_path / "toy.tar")
    directory = extract_checkpoint(archive)
    (directory / "vocab.json").write_text("{}")
    assert extract_checkpoint(archive) == directory
    verify_checkpoint(directory)


def test_archive_with_one_top_folder(trained, tmp_path):
    members = [(f"toy/{name}", data) for name, data in _contents(trained.path).items()]
    members.append(("toy/README.md", b"ignored"))
    archive = _tar_with(tmp_path / "nested.tar", members)
    directory = extract_checkpoint(archive)
    assert sorted(p.name for p in directory.iterdir()) == sorted(CHECKPOINT_FILES)


@pytest.mark.parametrize(
    "evil",
    [
        ("../config.json", b"{}"),
        ("/tmp/config.json", b"{}"),
        ("toy/../../vocab.json", b"{}"),
        ("model.safetensors", ("symlink", "/etc/passwd")),
    ],
)
def test_unsafe_tar_members_are_refused(trained, tmp_path, evil):
    members = [(n, d) for n, d in _contents(trained.path).items() if n != evil[0].rsplit("/", 1)[-1]]
    archive = _tar_with(tmp_path / "evil.tar", [*members, evil])
    with pytest.raises(UntrustedCheckpointError, match="refused"):
        extract_checkpoint(archive)
    root = cellformers.settings.cache_dir / "pretrained" / "checkpoints"
    assert not root.exists() or not any(root.iterdir())  # nothing written, not even a temporary folder
    assert not (tmp_path.parent / "config.json").exists()


def test_unsafe_zip_members_are_refused(trained, tmp_path):
    archive = tmp_path / "evil.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for name, data in _contents(trained.path).items():
            zf.writestr(name, data)
        zf.writestr("../../outside.txt", b"x")
    with pytest.raises(UntrustedCheckpointError, match="path traversal"):
        extract_checkpoint(archive)
    link = tmp_path / "link.zip"
    with zipfile.ZipFile(link, "w") as zf:
        for name, data in _contents(trained.path).items():
            if name != "vocab.json":
                zf.writestr(name, data)
        info = zipfile.ZipInfo("vocab.json")
        info.external_attr = (0o120777) << 16  # a symbolic link
        zf.writestr(info, "/etc/passwd")
    with pytest.raises(UntrustedCheckpointError, match="link"):
        extract_checkpoint(link)


def test_incomplete_or_truncated_archives(trained, tmp_path):
    members = [(n, d) for n, d in _contents(trained.path).items() if n != "model.safetensors"]
    with pytest.raises(CheckpointError, match=r"\['model.safetensors'\] missing"):
        extract_checkpoint(_tar_with(tmp_path / "missing.tar", members))
    archive = pack_checkpoint(trained.path, tmp_path / "toy.tar")
    truncated = tmp_path / "truncated.tar"
    with tarfile.open(archive) as tf:  # cut in the middle of the weights
        weights = tf.getmember("model.safetensors")
    truncated.write_bytes(archive.read_bytes()[: weights.offset_data + weights.size // 2])
    with pytest.raises(CheckpointError):
        extract_checkpoint(truncated)
    # members whose bytes differ from checksums.json: nothing is left in the cache
    contents = _contents(trained.path)
    config = json.loads(contents["config.json"])
    config["init_params"]["non_kwargs"]["d"] = 99
    contents["config.json"] = json.dumps(config).encode()
    with pytest.raises(ChecksumError):
        extract_checkpoint(_tar_with(tmp_path / "edited.tar", list(contents.items())))
    root = cellformers.settings.cache_dir / "pretrained" / "checkpoints"
    assert not any(p.name.startswith("edited") or p.name.startswith(".edited") for p in root.iterdir())
