"""Atomic checkpoint directories: written beside the target and renamed into place; interrupted writes recovered."""

from __future__ import annotations

import logging
import os
import shutil
from typing import TYPE_CHECKING

from cellformers._exceptions import ChecksumError
from cellformers._utils._debris import clean_stale, stale_entries, temp_name

from ._format import CheckpointError, verify_checkpoint

if TYPE_CHECKING:
    from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["fsync", "recover_checkpoint", "replace_directory"]


def fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def replace_directory(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` directory to ``path``, replacing a previous checkpoint there.

    The previous checkpoint is renamed to ``.<name>.old-<pid>-<random>`` first; a process killed between the two
    renames leaves it there, and the next :func:`save_pretrained` or load of ``path`` puts it back
    (:func:`recover_checkpoint`).
    """
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(temp_name(path.name, "old"))
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def recover_checkpoint(path: Path) -> None:
    """Put back a checkpoint an interrupted ``save_pretrained(overwrite=True)`` left renamed, and clean debris.

    When ``path`` is missing and a killed writer left the previous checkpoint as ``.<name>.old-<pid>-<random>``,
    the newest of those that verifies against its ``checksums.json`` is renamed back to ``path``. Then the stale
    temporary folders of ``path`` (``.<name>.tmp-*``, ``.<name>.old-*`` of processes that are gone, or older than an
    hour) are removed.
    """
    parent = path.parent
    if not parent.is_dir():
        return
    if not path.exists():
        olds = sorted(stale_entries(parent, f".{path.name}.old-"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds:
            try:
                verify_checkpoint(old)
            except (CheckpointError, ChecksumError):
                continue
            try:
                os.replace(old, path)
            except OSError:  # another process restored it (or saved a new one) meanwhile
                break
            logger.warning(f"restored the checkpoint {path}, left renamed by an interrupted `save_pretrained`")
            break
    for kind in ("tmp", "old"):
        clean_stale(parent, f".{path.name}.{kind}-")
