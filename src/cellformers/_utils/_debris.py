"""Temporary names that carry their writer's pid, and the clean-up of those a killed process left behind.

Atomic writes (``model.save``, per-epoch checkpoints, ``save_pretrained``, archive extraction and packing) write
under a hidden temporary name and rename it into place. A process killed with SIGKILL runs no ``finally`` block, so
its temporary file or folder stays. The name records the writer's process id; the next call in the same place
removes the entries whose process is gone, or that are older than :data:`STALE_AFTER_S` whatever their process
(a process id may be reused).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from pathlib import Path

logger = logging.getLogger(__name__)

#: Seconds after which a temporary entry is stale even when a process with its pid is running.
STALE_AFTER_S = 3600.0

_PID = re.compile(r"-(\d+)-[0-9a-f]{8}$")


def temp_name(target: str, kind: str) -> str:
    """The hidden temporary name ``.<target>.<kind>-<pid>-<random>`` for an entry being written beside ``target``.

    Parameters
    ----------
    target
        Name of the file or folder being replaced (``""`` for a temporary entry not tied to one name).
    kind
        ``"tmp"`` (being written), ``"old"`` (the replaced entry, until the new one is in place), ``"saving"``.

    Returns
    -------
    The file name.
    """
    stem = f".{target}.{kind}" if target else f".{kind}"
    return f"{stem}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except OSError:  # pragma: no cover - pids beyond the platform's range
        return False
    return True


def is_stale(path: Path, *, now: float | None = None) -> bool:
    """Whether a temporary entry was left by a process that is gone, or is older than :data:`STALE_AFTER_S`.

    Entries without a pid in their name (written before names carried one) are stale only by age.
    """
    try:
        age = (time.time() if now is None else now) - path.lstat().st_mtime
    except FileNotFoundError:
        return False
    if age > STALE_AFTER_S:
        return True
    match = _PID.search(path.name)
    return match is not None and not _pid_alive(int(match.group(1)))


def stale_entries(directory: Path, prefix: str, marker: str = "") -> list[Path]:
    """The stale entries of ``directory`` whose name starts with ``prefix`` (e.g. ``".model.tmp-"``) and has ``marker``."""
    try:
        candidates = [p for p in directory.iterdir() if p.name.startswith(prefix) and marker in p.name]
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return []
    return [p for p in candidates if is_stale(p)]


def remove(path: Path) -> None:
    """Remove a file or folder, ignoring one that is already gone (another process cleaning the same debris)."""
    try:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    except OSError as err:  # pragma: no cover - e.g. a read-only directory: leave it
        logger.debug(f"could not remove {path}: {err}")


def clean_stale(directory: str | os.PathLike, prefix: str, marker: str = "") -> list[Path]:
    """Remove the stale temporary entries of ``directory`` starting with ``prefix`` (and with ``marker``).

    Returns the entries removed.
    """
    removed = stale_entries(Path(directory), prefix, marker)
    for path in removed:
        remove(path)
        logger.info(f"removed {path.name}, left in {path.parent} by an interrupted write")
    return removed
