"""Temporary files of a killed process are cleaned up by the next call; an interrupted overwrite is recovered (issue 21).

A SIGKILL runs no ``finally`` block: it is simulated by creating the debris a killed writer leaves (names carrying
the pid of a process that has exited), or by making ``os.replace`` fail for good between the two renames of
``save_pretrained(overwrite=True)``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import numpy as np
import pytest

import cellformers as cf
from cellformers._utils import _debris
from cellformers.checkpoint import _directory

HOUR_AND_A_BIT = _debris.STALE_AFTER_S + 60


@pytest.fixture(scope="module")
def dead_pid() -> int:
    """The pid of a process that has exited."""
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert not _debris._pid_alive(proc.pid)
    return proc.pid


@pytest.fixture(scope="module")
def model():
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    m = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)
    m.train(max_epochs=1, batch_size=16, accelerator="cpu", enable_progress_bar=False, train_size=1.0)
    return m


def _debris_dir(parent, name: str) -> os.PathLike:
    path = parent / name
    path.mkdir()
    (path / "model.pt").write_bytes(b"half written")
    return path


def _age(path, seconds: float) -> None:
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_temporary_names_carry_the_pid_and_only_stale_ones_are_stale(tmp_path, dead_pid):
    name = _debris.temp_name("model", "tmp")
    assert name.startswith(f".model.tmp-{os.getpid()}-")
    live = _debris_dir(tmp_path, name)
    dead = _debris_dir(tmp_path, f".model.tmp-{dead_pid}-0123abcd")
    legacy = _debris_dir(tmp_path, ".model.tmp-k2j3h4g5")  # written before names carried the pid
    old_legacy = _debris_dir(tmp_path, ".model.tmp-a1b2c3d4")
    _age(old_legacy, HOUR_AND_A_BIT)
    assert not _debris.is_stale(live)
    assert _debris.is_stale(dead)
    assert not _debris.is_stale(legacy)
    assert _debris.is_stale(old_legacy)
    _age(live, HOUR_AND_A_BIT)
    assert _debris.is_stale(live)  # a pid may be reused: an hour-old entry is stale whatever its pid


def test_save_removes_the_folder_of_a_killed_save(model, tmp_path, dead_pid):
    out = tmp_path / "saved"
    out.mkdir()
    dead = _debris_dir(out, f".saving-{dead_pid}-0123abcd")
    old = _debris_dir(out, ".saving-x7y8z9w0")
    _age(old, HOUR_AND_A_BIT)
    running = _debris_dir(out, f".saving-{os.getpid()}-89abcdef")  # a save in progress in a live process
    model.save(out, overwrite=True)
    assert not dead.exists()
    assert not old.exists()
    assert running.exists()
    assert (out / "model.pt").is_file()


def test_checkpointing_removes_the_file_of_a_killed_epoch_end(tmp_path, dead_pid):
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    m = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / f".last.ckpt.tmp-{dead_pid}-0123abcd").write_bytes(b"half written")
    m.train(max_epochs=1, batch_size=16, accelerator="cpu", enable_progress_bar=False, checkpoint_dir=ckpt)
    assert sorted(p.name for p in ckpt.iterdir()) == ["last.ckpt"]


def test_save_pretrained_removes_stale_temporary_folders(model, tmp_path, dead_pid):
    dead_tmp = _debris_dir(tmp_path, f".tiny.tmp-{dead_pid}-0123abcd")
    dead_old = _debris_dir(tmp_path, f".tiny.old-{dead_pid}-0123abcd")
    other = _debris_dir(tmp_path, f".other.tmp-{dead_pid}-0123abcd")  # another checkpoint's: left to its own calls
    model.save_pretrained(tmp_path / "tiny")
    assert not dead_tmp.exists()
    assert not dead_old.exists()
    assert other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([other.name, "tiny"])


class _Killed(BaseException):
    """Stands for SIGKILL: no handler runs."""


def _kill_between_the_renames(monkeypatch, dead_pid):
    """Make ``save_pretrained(overwrite=True)`` stop for good after renaming the old checkpoint away.

    The writer's pid in the temporary names is that of an exited process, as the next call would find it.
    """
    real = os.replace
    calls = []

    def replace(src, dst):
        calls.append((src, dst))
        if ".old-" in os.fspath(dst):  # the first rename: the old checkpoint out of the way
            return real(src, dst)
        raise _Killed  # the second rename, and the restoring one in its `except`: the process is gone

    monkeypatch.setattr(_directory.os, "replace", replace)
    monkeypatch.setattr(_debris.os, "getpid", lambda: dead_pid)
    return calls


def test_a_save_pretrained_killed_between_its_renames_keeps_the_old_checkpoint_loadable(
    model, tmp_path, dead_pid, monkeypatch
):
    path = model.save_pretrained(tmp_path / "tiny")
    expected = model.get_latent_representation()
    with monkeypatch.context() as m:
        calls = _kill_between_the_renames(m, dead_pid)
        with pytest.raises(_Killed):
            model.save_pretrained(path, overwrite=True)
    assert len(calls) >= 2
    assert not path.exists()  # what the kill leaves: the old checkpoint renamed away
    assert any(p.name.startswith(".tiny.old-") for p in tmp_path.iterdir())
    # before: nothing at the path, and loading said there was no such checkpoint
    loaded = cf.model.ScFormer.from_pretrained(path, model.adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]


def test_the_next_save_pretrained_recovers_and_cleans_up(model, tmp_path, dead_pid, monkeypatch):
    path = model.save_pretrained(tmp_path / "tiny")
    with monkeypatch.context() as m:
        _kill_between_the_renames(m, dead_pid)
        with pytest.raises(_Killed):
            model.save_pretrained(path, overwrite=True)
    # without overwrite the restored checkpoint is protected, as it was before the interrupted call
    with pytest.raises(cf.pretrained.CheckpointError, match="already exists"):
        model.save_pretrained(path)
    model.save_pretrained(path, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny"]
    cf.pretrained.verify_checkpoint(path)


def test_a_damaged_old_checkpoint_is_not_restored(model, tmp_path, dead_pid, monkeypatch):
    path = model.save_pretrained(tmp_path / "tiny")
    with monkeypatch.context() as m:
        _kill_between_the_renames(m, dead_pid)
        with pytest.raises(_Killed):
            model.save_pretrained(path, overwrite=True)
    (old,) = (p for p in tmp_path.iterdir() if p.name.startswith(".tiny.old-"))
    with open(old / "model.safetensors", "r+b") as fh:
        fh.truncate(64)
    with pytest.raises(cf.pretrained.CheckpointError):
        cf.model.ScFormer.from_pretrained(path, model.adata)
    assert not path.exists()


def test_extraction_and_packing_remove_the_debris_of_killed_runs(model, tmp_path, dead_pid):
    path = model.save_pretrained(tmp_path / "tiny")
    packed_debris = tmp_path / f".tiny.tar.tmp-{dead_pid}-0123abcd"
    packed_debris.write_bytes(b"half written")
    archive = cf.pretrained.pack_checkpoint(path)
    assert not packed_debris.exists()
    root = cf.settings.cache_dir / "pretrained" / "checkpoints"
    root.mkdir(parents=True)
    extract_debris = _debris_dir(root, f".tiny-0123456789abcdef.tmp-{dead_pid}-0123abcd")
    unrelated = root / ".keep"  # hidden files that are not temporary folders are left alone
    unrelated.write_text("")
    _age(unrelated, HOUR_AND_A_BIT)
    directory = cf.pretrained.extract_checkpoint(archive)
    assert not extract_debris.exists()
    assert unrelated.exists()
    assert sorted(p.name for p in root.iterdir()) == sorted([".keep", directory.name])
