"""Where a checkpoint comes from: a registered name, a directory or archive on disk, or a URL with its sha256."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from cellformers._exceptions import UntrustedCheckpointError
from cellformers._settings import settings
from cellformers.data._references import fetch_verified

from . import _registry
from ._archive import _extract, archive_suffix
from ._directory import recover_checkpoint
from ._format import CheckpointError

__all__ = ["is_url", "resolve_checkpoint"]

_URL_SCHEMES = ("http", "https", "ftp", "file")


def is_url(source: str) -> bool:
    return urlparse(source).scheme in _URL_SCHEMES


def resolve_checkpoint(name_or_path_or_url: str | os.PathLike, *, sha256: str | None = None) -> tuple[Path, dict]:
    """The verified checkpoint directory of a registered name, a path or a URL, fetching and extracting as needed.

    Parameters
    ----------
    name_or_path_or_url
        A name registered in :data:`~cellformers.pretrained.REGISTRY`; a checkpoint directory or archive
        (``.tar``, ``.tar.gz``, ``.zip``) on disk; or an ``https``/``http``/``ftp``/``file`` URL of an archive.
    sha256
        sha256 of the archive. Required for URLs (unverified downloads are refused), optional for archive paths,
        and not used for registered names (their card pins it) or directories (their ``checksums.json`` does).

    Returns
    -------
    The checkpoint directory and a description of where it came from (``name``, ``source``, ``sha256``,
    ``model_class`` of the card).

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
    >>> card = cf.pretrained.PretrainedCard.from_archive(archive, name="scformer-tiny", license="CC-BY-4.0")
    >>> cf.pretrained.register_pretrained(card)
    >>> directory, info = cf.pretrained.resolve_checkpoint("scformer-tiny")
    >>> info["name"], info["card_class"]
    ('scformer-tiny', 'cellformers.model.ScFormer')
    >>> directory, info = cf.pretrained.resolve_checkpoint(path)  # a directory is used in place
    >>> directory == path
    True
    """
    REGISTRY = _registry.REGISTRY  # read at call time: tests and users may swap the registry
    source = os.fspath(name_or_path_or_url)
    if sha256 is not None:
        sha256 = str(sha256).lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            msg = f"`sha256` must be 64 hex digits, got {sha256!r}."
            raise ValueError(msg)
    if isinstance(name_or_path_or_url, str) and source in REGISTRY:
        card = REGISTRY[source]
        archive = _registry.fetch_pretrained(source)
        directory, _ = _extract(archive, sha256=card.sha256)
        return directory, {"name": card.name, "source": card.url, "sha256": card.sha256, "card_class": card.model_class}
    if is_url(source):
        if sha256 is None:
            msg = (
                f"Refusing to download {source} without a hash: pass `sha256=` (the sha256 its host publishes) or "
                "register a card with `cellformers.pretrained.register_pretrained`."
            )
            raise UntrustedCheckpointError(msg)
        parsed = urlparse(source)
        basename = Path(parsed.path).name
        if archive_suffix(basename) is None:
            msg = f"{source} must point at a checkpoint archive (.tar, .tar.gz, .tgz or .zip, from `pack_checkpoint`)."
            raise CheckpointError(msg)
        if parsed.scheme == "file":
            archive = _registry._local_path(source)
        else:
            archive = fetch_verified(
                source,
                sha256=sha256,
                fname=f"{sha256[:16]}-{basename}",
                folder=settings.cache_dir / "pretrained" / "urls",
                what=f"checkpoint {basename!r}",
            )
        directory, _ = _extract(archive, sha256=sha256)
        return directory, {"name": None, "source": source, "sha256": sha256, "card_class": None}
    path = Path(source).expanduser()
    recover_checkpoint(path)
    if path.is_dir():
        if sha256 is not None:
            msg = "`sha256` applies to archive files; a checkpoint directory is checked against its checksums.json."
            raise ValueError(msg)
        return path, {"name": None, "source": str(path), "sha256": None, "card_class": None}
    if path.is_file():
        directory, digest = _extract(path, sha256=sha256)
        return directory, {"name": None, "source": str(path), "sha256": digest, "card_class": None}
    known = ", ".join(sorted(REGISTRY)) or "none"
    msg = (
        f"{source!r} is neither a registered pretrained model (registered: {known}) nor an existing checkpoint "
        "directory or archive, nor a URL. See `cellformers.pretrained.list_pretrained()`."
    )
    raise CheckpointError(msg)
