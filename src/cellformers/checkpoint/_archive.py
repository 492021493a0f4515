"""One-file archives of checkpoint directories (what a registry card points at), packed and extracted safely."""

from __future__ import annotations

import gzip
import logging
import lzma
import os
import shutil
import tarfile
import zipfile
import zlib
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from cellformers._exceptions import CellformersError, ChecksumError, UntrustedCheckpointError
from cellformers._settings import settings
from cellformers._utils._debris import clean_stale, temp_name

from ._format import CHECKPOINT_FILES, CheckpointError, file_sha256, verify_checkpoint

if TYPE_CHECKING:
    from collections.abc import Callable

logger = logging.getLogger(__name__)

__all__ = ["ARCHIVE_SUFFIXES", "archive_suffix", "extract_checkpoint", "pack_checkpoint", "read_archive_file"]

#: Archive kinds understood by :func:`extract_checkpoint`; :func:`pack_checkpoint` writes any of them.
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
_CHUNK = 1 << 20
_S_IFMT = 0o170000
_S_IFREG = 0o100000
_S_IFDIR = 0o040000
# what reading a truncated or corrupt archive raises: tar and zip errors, EOF inside gzip, zlib and lzma/bz2 errors
_READ_ERRORS = (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError, zlib.error, lzma.LZMAError)


def archive_suffix(name: str) -> str | None:
    """The archive suffix of a file name or URL path (``".tar"``, ``".tar.gz"``, ``".tgz"``, ``".zip"``), or None."""
    lower = name.lower()
    for suffix in sorted(ARCHIVE_SUFFIXES, key=len, reverse=True):
        if lower.endswith(suffix):
            return suffix
    return None


def _checked_name(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative POSIX path; refuse absolute paths, ``..`` and drive letters."""
    path = PurePosixPath(name)
    if (
        not name
        or "\\" in name
        or "\x00" in name
        or path.is_absolute()
        or ".." in path.parts
        or (path.parts and ":" in path.parts[0])
    ):
        msg = (
            f"{archive} holds a member named {name!r} that points outside the archive; it is refused (path "
            "traversal). Only archives written by `cellformers.pretrained.pack_checkpoint` (or the same layout) "
            "are accepted."
        )
        raise UntrustedCheckpointError(msg)
    return path


def _checkpoint_members(entries: list[tuple[str, str]], archive: Path) -> dict[str, str]:
    """Map each checkpoint file name to the member that holds it.

    ``entries`` are ``(member name, kind)`` with kind ``"file"``, ``"dir"`` or ``"other"`` (links, devices).
    Checkpoint files may sit at the top level or in one folder; other regular files are ignored.
    """
    found: dict[str, str] = {}
    for name, kind in entries:
        path = _checked_name(name, archive)
        if kind == "other":
            msg = (
                f"{archive} holds {name!r}, which is a link or a special file; checkpoint archives hold regular "
                "files only, so it is refused."
            )
            raise UntrustedCheckpointError(msg)
        if kind == "dir" or path.name not in CHECKPOINT_FILES or len(path.parts) > 2:
            if kind == "file":
                logger.debug(f"ignoring {name!r} in {archive}")
            continue
        if path.name in found:
            msg = f"{archive} holds {path.name} twice ({found[path.name]!r} and {name!r}); it is ambiguous."
            raise CheckpointError(msg)
        found[path.name] = name
    folders = {str(PurePosixPath(n).parent) for n in found.values()}
    if len(folders) > 1:
        msg = f"{archive} spreads the checkpoint files over several folders ({sorted(folders)})."
        raise CheckpointError(msg)
    missing = [n for n in CHECKPOINT_FILES if n not in found]
    if missing:
        msg = (
            f"{archive} is not a cellformers checkpoint archive: {missing} missing (expected "
            f"{list(CHECKPOINT_FILES)}, as written by `pack_checkpoint`)."
        )
        raise CheckpointError(msg)
    return found


def _open_members(archive: Path):
    """``(members, opener, closer)``: checkpoint file -> member name, a function opening a member, a close hook."""
    suffix = archive_suffix(archive.name)
    if suffix == ".zip" or (suffix is None and zipfile.is_zipfile(archive)):
        try:
            zf = zipfile.ZipFile(archive)
        except _READ_ERRORS as err:
            msg = f"{archive} is not a readable zip archive ({type(err).__name__}: {err}); download it again."
            raise CheckpointError(msg) from err
        entries = []
        for info in zf.infolist():
            mode = (info.external_attr >> 16) & _S_IFMT
            if info.is_dir():
                kind = "dir"
            elif mode in (0, _S_IFREG):
                kind = "file"
            else:
                kind = "other"
            entries.append((info.filename, kind))
        try:
            members = _checkpoint_members(entries, archive)
        except Exception:
            zf.close()
            raise
        return members, zf.open, zf.close
    try:
        tf = tarfile.open(archive, mode="r:*")
    except _READ_ERRORS as err:
        msg = f"{archive} is not a readable tar or zip archive ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    try:
        entries = []
        by_name = {}
        for info in tf.getmembers():
            kind = "file" if info.isreg() else "dir" if info.isdir() else "other"
            entries.append((info.name, kind))
            by_name[info.name] = info
        members = _checkpoint_members(entries, archive)
    except CellformersError:
        tf.close()
        raise
    except _READ_ERRORS as err:  # a truncated .tar.gz ends with EOFError, a corrupt one with zlib.error
        tf.close()
        msg = f"{archive} is a truncated or damaged tar archive ({type(err).__name__}: {err}); download it again."
        raise CheckpointError(msg) from err
    except Exception:
        tf.close()
        raise

    def opener(name: str):
        fh = tf.extractfile(by_name[name])
        if fh is None:  # pragma: no cover - regular files always have a file object
            msg = f"cannot read {name!r} from {archive}"
            raise CheckpointError(msg)
        return fh

    return members, opener, tf.close


def read_archive_file(archive: str | os.PathLike, name: str) -> bytes:
    """The bytes of one checkpoint file (e.g. ``"config.json"``) inside an archive, without extracting it."""
    archive = Path(archive)
    if name not in CHECKPOINT_FILES:
        msg = f"`name` must be one of {list(CHECKPOINT_FILES)}, got {name!r}."
        raise ValueError(msg)
    members, opener, close = _open_members(archive)
    try:
        with opener(members[name]) as fh:
            return fh.read()
    except CellformersError:
        raise
    except _READ_ERRORS as err:
        msg = f"{archive} is truncated or damaged ({type(err).__name__}: {err}); download it again."
        raise CheckpointError(msg) from err
    finally:
        close()


def _extract(archive: str | os.PathLike, *, sha256: str | None = None) -> tuple[Path, str]:
    """See :func:`extract_checkpoint`; also returns the archive's sha256."""
    archive = Path(archive)
    if not archive.is_file():
        msg = f"Checkpoint archive {archive} does not exist."
        raise CheckpointError(msg)
    digest = file_sha256(archive)
    if sha256 is not None and digest != sha256.lower():
        msg = (
            f"{archive} does not match the expected sha256 ({sha256[:12]}…, found {digest[:12]}…); it was not "
            "extracted. Download it again or check the hash you passed."
        )
        raise ChecksumError(msg)
    suffix = archive_suffix(archive.name) or archive.suffix
    stem = archive.name[: len(archive.name) - len(suffix)] if suffix else archive.name
    root = settings.cache_dir / "pretrained" / "checkpoints"
    dest = root / f"{stem}-{digest[:16]}"
    if dest.is_dir():
        try:
            verify_checkpoint(dest)
        except (CheckpointError, ChecksumError) as err:
            logger.warning(f"re-extracting {archive}: the cached copy is damaged ({err})")
            shutil.rmtree(dest)
        else:
            logger.debug(f"using the extracted checkpoint {dest}")
            return dest, digest
    root.mkdir(parents=True, exist_ok=True)
    clean_stale(root, ".", marker=".tmp-")  # folders of extractions killed before their rename
    members, opener, close = _open_members(archive)
    tmp = root / temp_name(dest.name, "tmp")
    tmp.mkdir()
    try:
        try:
            for fname, member in members.items():
                with opener(member) as src, open(tmp / fname, "wb") as dst:
                    shutil.copyfileobj(src, dst, _CHUNK)
        except _READ_ERRORS as err:
            msg = f"{archive} is truncated or damaged ({type(err).__name__}: {err}); download it again."
            raise CheckpointError(msg) from err
        finally:
            close()
        verify_checkpoint(tmp)
        try:
            os.replace(tmp, dest)
        except OSError:
            # another process extracted the same archive meanwhile: use theirs if it is intact
            verify_checkpoint(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"extracted checkpoint {archive.name} to {dest}")
    return dest, digest


def extract_checkpoint(archive: str | os.PathLike, *, sha256: str | None = None) -> Path:
    """Extract a checkpoint archive into the cache and return the checkpoint directory.

    Only the checkpoint's own files (``config.json``, ``model.safetensors``, ``vocab.json``, ``checksums.json``,
    at the top level or in one folder) are written, each under its fixed name: member paths are never used as
    destinations, and archives with absolute or ``..`` paths, links or special files are refused. The files are
    written into a temporary folder, checked against ``checksums.json``, and only then renamed into place, so an
    interrupted extraction leaves nothing that loads. A previous extraction of the same archive (same sha256) is
    reused.

    Parameters
    ----------
    archive
        A ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` file, e.g. from :func:`pack_checkpoint`.
    sha256
        Expected sha256 of the archive; ``None`` skips the check.

    Returns
    -------
    The checkpoint directory, ``settings.cache_dir / "pretrained" / "checkpoints" / "<name>-<sha256[:16]>"``.

    Raises
    ------
    ChecksumError
        The archive does not match ``sha256``, or a file does not match ``checksums.json``.
    UntrustedCheckpointError
        The archive holds paths leaving the destination, links or special files.
    CheckpointError
        The archive is not a checkpoint archive.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> archive = cf.pretrained.pack_checkpoint(path)
    >>> directory = cf.pretrained.extract_checkpoint(archive)
    >>> directory.parent == cf.settings.cache_dir / "pretrained" / "checkpoints"
    True
    >>> sorted(p.name for p in directory.iterdir())
    ['checksums.json', 'config.json', 'model.safetensors', 'vocab.json']
    """
    return _extract(archive, sha256=sha256)[0]


def _writer(suffix: str, tmp: Path) -> tuple[Callable[[str, Path], None], Callable[[], None]]:
    """``(add, close)`` for a deterministic archive: fixed timestamps, owners and modes, so packing is reproducible."""
    if suffix == ".zip":
        zf = zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED)

        def add_zip(name: str, path: Path) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = (_S_IFREG | 0o644) << 16
            with open(path, "rb") as src, zf.open(info, "w") as dst:
                shutil.copyfileobj(src, dst, _CHUNK)

        return add_zip, zf.close

    raw = open(tmp, "wb")
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) if suffix in (".tar.gz", ".tgz") else None
    tf = tarfile.open(fileobj=gz or raw, mode="w", format=tarfile.PAX_FORMAT)

    def add_tar(name: str, path: Path) -> None:
        info = tarfile.TarInfo(name)
        info.size = path.stat().st_size
        info.mtime = 0
        info.mode = 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        with open(path, "rb") as src:
            tf.addfile(info, src)

    def close_tar() -> None:
        tf.close()
        if gz is not None:
            gz.close()
        raw.flush()
        os.fsync(raw.fileno())
        raw.close()

    return add_tar, close_tar


def pack_checkpoint(
    directory: str | os.PathLike,
    archive: str | os.PathLike | None = None,
    *,
    overwrite: bool = False,
) -> Path:
    """Pack a checkpoint directory into one archive file, ready to publish behind a registry card.

    The directory is verified first (:func:`~cellformers.pretrained.verify_checkpoint`). The archive holds the
    four checkpoint files at its top level with fixed timestamps and owners, so packing the same checkpoint twice
    gives the same bytes and the same sha256. That sha256 is logged and written beside the archive in
    ``<archive>.sha256`` (``sha256sum`` format); it is the ``sha256`` of the :class:`PretrainedCard`.

    Parameters
    ----------
    directory
        A directory written by :meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`.
    archive
        Output file ending in ``.tar``, ``.tar.gz``, ``.tgz`` or ``.zip``; ``None`` writes ``<directory>.tar``
        beside the directory.
    overwrite
        Replace an existing archive.

    Returns
    -------
    Path of the archive.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> archive = cf.pretrained.pack_checkpoint(path)
    >>> archive.name
    'scformer_tiny.tar'
    >>> (archive.parent / (archive.name + ".sha256")).read_text().split()  # doctest: +ELLIPSIS
    ['...', 'scformer_tiny.tar']
    """
    directory = Path(directory)
    verify_checkpoint(directory)
    archive = directory.with_name(directory.name + ".tar") if archive is None else Path(archive)
    suffix = archive_suffix(archive.name)
    if suffix is None:
        msg = f"`archive` must end in one of {list(ARCHIVE_SUFFIXES)}, got {archive.name!r}."
        raise ValueError(msg)
    if archive.exists() and not overwrite:
        msg = f"{archive} already exists; pass `overwrite=True` to replace it."
        raise CheckpointError(msg)
    archive.parent.mkdir(parents=True, exist_ok=True)
    clean_stale(archive.parent, f".{archive.name}.tmp-")
    tmp = archive.parent / temp_name(archive.name, "tmp")
    try:
        add, close = _writer(suffix, tmp)
        try:
            for name in CHECKPOINT_FILES:
                add(name, directory / name)
        finally:
            close()
        os.replace(tmp, archive)
    finally:
        if tmp.exists():
            tmp.unlink()
    digest = file_sha256(archive)
    (archive.parent / f"{archive.name}.sha256").write_text(f"{digest}  {archive.name}\n", encoding="utf-8")
    size = archive.stat().st_size
    logger.info(f"packed {directory} into {archive} ({size / 1e6:.1f} MB, sha256 {digest})")
    return archive
