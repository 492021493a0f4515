"""Damaged checkpoint archives (truncated ``.tar.gz``, ``.zip`` without its central directory) raise CheckpointError."""

from __future__ import annotations

import pytest

from cellformers import settings
from cellformers.checkpoint._archive import read_archive_file
from cellformers.pretrained import CheckpointError, extract_checkpoint, load_pretrained, pack_checkpoint


@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory, rel):
    model = rel.mark_trained(rel.build_model("ScFormer"))
    return model.save_pretrained(tmp_path_factory.mktemp("ckpt") / "tiny")


def _truncate(path, fraction):
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * fraction)])
    return path


def _no_central_directory(path):
    data = path.read_bytes()
    path.write_bytes(data[: data.rindex(b"PK\x01\x02")])  # cut before the first central-directory record
    return path


def _corrupt_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 64] = bytes(64)
    path.write_bytes(bytes(data))
    return path


DAMAGES = {
    "tar.gz-truncated-half": (".tar.gz", lambda p: _truncate(p, 0.5)),
    "tar.gz-truncated-end": (".tar.gz", lambda p: _truncate(p, 0.98)),
    "tar.gz-corrupt-middle": (".tar.gz", _corrupt_middle),
    "tgz-truncated": (".tgz", lambda p: _truncate(p, 0.6)),
    "tar-truncated": (".tar", lambda p: _truncate(p, 0.5)),
    "zip-no-central-directory": (".zip", _no_central_directory),
    "zip-truncated": (".zip", lambda p: _truncate(p, 0.5)),
    "zip-corrupt-middle": (".zip", _corrupt_middle),
    "empty-tar.gz": (".tar.gz", lambda p: _truncate(p, 0.0)),
    "empty-zip": (".zip", lambda p: _truncate(p, 0.0)),
}


@pytest.fixture(params=sorted(DAMAGES))
def damaged(request, checkpoint_dir, tmp_path):
    suffix, damage = DAMAGES[request.param]
    return damage(pack_checkpoint(checkpoint_dir, tmp_path / f"tiny{suffix}"))


def test_extracting_a_damaged_archive_raises_checkpoint_error(damaged):
    with pytest.raises(CheckpointError):
        extract_checkpoint(damaged)


def test_loading_a_damaged_archive_raises_checkpoint_error(damaged, rel):
    with pytest.raises(CheckpointError):
        load_pretrained(damaged, accelerator="cpu")


def test_reading_one_file_of_a_damaged_archive_raises_checkpoint_error(damaged):
    with pytest.raises(CheckpointError):
        read_archive_file(damaged, "model.safetensors")


def test_a_failed_extraction_leaves_no_debris(damaged):
    with pytest.raises(CheckpointError):
        extract_checkpoint(damaged)
    root = settings.cache_dir / "pretrained" / "checkpoints"
    assert not root.exists() or not any(root.iterdir())
