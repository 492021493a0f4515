"""Registry of pretrained checkpoints: named cards pinned to one archive file and its sha256, fetched by pooch."""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pandas as pd

from cellformers._exceptions import ChecksumError
from cellformers._settings import settings
from cellformers.data._references import fetch_verified

from ._archive import ARCHIVE_SUFFIXES, archive_suffix, read_archive_file
from ._format import CONFIG_FILE, CheckpointError, file_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "PRETRAINED_URL_ENV",
    "REGISTRY",
    "PretrainedCard",
    "fetch_pretrained",
    "get_pretrained_card",
    "list_pretrained",
    "register_pretrained",
]

#: Environment variable holding a base URL (a mirror, a local server) that replaces the URL of every card that is
#: downloaded: the archive is then fetched from ``f"{base}/{card.filename}"``. The sha256 pin still applies.
PRETRAINED_URL_ENV = "CELLFORMERS_PRETRAINED_URL"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
_SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
_REMOTE_SCHEMES = ("http", "https", "ftp")


def _local_path(url: str) -> Path | None:
    """The path of a ``file://`` URL or a plain path; None for a remote URL."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme in _REMOTE_SCHEMES:
        return None
    if len(parsed.scheme) <= 1:  # no scheme, or a Windows drive letter
        return Path(url).expanduser()
    msg = f"Unsupported URL scheme {parsed.scheme!r} in {url!r}; use http(s), ftp, file:// or a local path."
    raise ValueError(msg)


@dataclass(frozen=True)
class PretrainedCard:
    """A named checkpoint: one archive file (see :func:`~cellformers.pretrained.pack_checkpoint`) and its sha256.

    Attributes
    ----------
    name
        Name passed to ``Model.from_pretrained(name)`` (letters, digits, ``.``, ``_``, ``+``, ``-``).
    model_class
        Class the checkpoint holds, e.g. ``"cellformers.model.XTrimoGene"`` (checked against the checkpoint).
    url
        Where the archive is: an ``https``/``http``/``ftp`` URL (downloaded into ``settings.cache_dir``), or, for
        a local or private checkpoint, a ``file://`` URL or a path (used in place, never deleted).
    sha256
        Hex sha256 of the archive as published by its host; a file that does not match is rejected.
    size_bytes
        Size of the archive (shown by :func:`list_pretrained`).
    vocabulary
        Name of the gene vocabulary (e.g. ``"scfoundation-19264"``).
    citation
        Paper to cite when the checkpoint is used.
    license
        Licence of the weights.
    description
        One line on what the checkpoint is (data, preset, training).
    fname
        File name in the cache and on a mirror (:data:`PRETRAINED_URL_ENV`); ``None`` uses ``<name><suffix>``.

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
    >>> card.model_class, card.url.startswith("file://")
    ('cellformers.model.ScFormer', True)
    >>> cf.pretrained.register_pretrained(card)
    >>> model = cf.model.ScFormer.from_pretrained("scformer-tiny", adata)
    """

    name: str
    model_class: str
    url: str
    sha256: str
    size_bytes: int | None = None
    vocabulary: str | None = None
    citation: str = ""
    license: str = "unknown"
    description: str = ""
    fname: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            msg = (
                f"Card `name` must be letters, digits, '.', '_', '+' or '-' (starting with a letter or digit), "
                f"got {self.name!r}."
            )
            raise ValueError(msg)
        if not isinstance(self.sha256, str) or not _SHA256_RE.match(self.sha256):
            msg = f"Card {self.name!r}: `sha256` must be 64 lower-case hex digits, got {self.sha256!r}."
            raise ValueError(msg)
        if not isinstance(self.model_class, str) or not re.match(r"^[A-Za-z_][\w.<>]*$", self.model_class):
            msg = f"Card {self.name!r}: `model_class` must be a dotted class name, got {self.model_class!r}."
            raise ValueError(msg)
        _local_path(self.url)  # validates the scheme
        name = self.fname or urlparse(self.url).path
        if archive_suffix(name) is None:
            msg = (
                f"Card {self.name!r}: the file must be a checkpoint archive ending in one of "
                f"{list(ARCHIVE_SUFFIXES)} (from `pack_checkpoint`); got {name!r}."
            )
            raise ValueError(msg)
        if self.fname is not None and (Path(self.fname).name != self.fname or self.fname.startswith(".")):
            msg = f"Card {self.name!r}: `fname` must be a plain file name, got {self.fname!r}."
            raise ValueError(msg)

    @property
    def filename(self) -> str:
        """Name of the archive in the cache and on a mirror."""
        if self.fname is not None:
            return self.fname
        return f"{self.name}{archive_suffix(urlparse(self.url).path)}"

    @property
    def is_local(self) -> bool:
        """Whether the card points at a local file (a path or a ``file://`` URL) rather than a download."""
        return _local_path(self.url) is not None

    @classmethod
    def from_archive(
        cls,
        archive: str | os.PathLike,
        *,
        name: str,
        url: str | None = None,
        **fields_: str | int | None,
    ) -> PretrainedCard:
        """A card for an archive written by :func:`~cellformers.pretrained.pack_checkpoint`.

        ``model_class`` and ``vocabulary`` are read from the archive's ``config.json``, ``sha256`` and
        ``size_bytes`` computed from the file.

        Parameters
        ----------
        archive
            The archive file.
        name
            Name of the card.
        url
            Where the archive is published; ``None`` points the card at the local file.
        **fields_
            Other card fields (``citation``, ``license``, ``description``, ``fname``).

        Returns
        -------
        The card, ready for :func:`register_pretrained` (or to paste into the registry when the archive is
        published).
        """
        archive = Path(archive).resolve()
        config = json.loads(read_archive_file(archive, CONFIG_FILE))
        vocab = config.get("vocabulary") if isinstance(config, dict) else None
        values = {
            "name": name,
            "model_class": config.get("model_class", ""),
            "url": url if url is not None else archive.as_uri(),
            "sha256": file_sha256(archive),
            "size_bytes": archive.stat().st_size,
            "vocabulary": vocab,
            **fields_,
        }
        return cls(**values)


#: Built-in cards. Empty on purpose: a card is added only for an archive whose public URL and sha256 (as published
#: by its host, e.g. the sha256 of a Hugging Face LFS pointer) have been verified, or for a checkpoint this project
#: publishes with its own hash. Register local or private checkpoints with :func:`register_pretrained`.
REGISTRY: dict[str, PretrainedCard] = {}


def register_pretrained(card: PretrainedCard, *, overwrite: bool = False) -> None:
    """Add a card to the registry, so ``Model.from_pretrained(card.name)`` finds it.

    This is how a local or private checkpoint gets a name: pack it with
    :func:`~cellformers.pretrained.pack_checkpoint`, build the card with :meth:`PretrainedCard.from_archive` (or
    by hand with the hash your host publishes), and register it, e.g. at the top of a script or in a lab package.
    The registry lives in memory for the session.

    Parameters
    ----------
    card
        The card.
    overwrite
        Replace a card with the same name.

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
    >>> "scformer-tiny" in cf.pretrained.list_pretrained().index
    True
    >>> model = cf.model.ScFormer.from_pretrained("scformer-tiny", adata)
    """
    if not isinstance(card, PretrainedCard):
        msg = f"`card` must be a PretrainedCard, got {type(card).__name__}."
        raise TypeError(msg)
    if card.name in REGISTRY and not overwrite and REGISTRY[card.name] != card:
        msg = f"A pretrained model named {card.name!r} is already registered; pass `overwrite=True` to replace it."
        raise ValueError(msg)
    REGISTRY[card.name] = card
    logger.debug(f"registered pretrained model {card.name!r} ({card.url})")


def get_pretrained_card(name: str) -> PretrainedCard:
    """The card of a registered checkpoint, or a :class:`ValueError` listing the names and how to add one.

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
    >>> cf.pretrained.get_pretrained_card("scformer-tiny").license
    'CC-BY-4.0'
    """
    try:
        return REGISTRY[name]
    except KeyError:
        known = ", ".join(sorted(REGISTRY)) or "none"
        msg = (
            f"No pretrained model named {name!r} (registered: {known}). Pass a checkpoint directory or archive path, "
            "an https URL with `sha256=`, or register a card with `cellformers.pretrained.register_pretrained`."
        )
        raise ValueError(msg) from None


def _cached_path(card: PretrainedCard) -> Path:
    return settings.cache_dir / "pretrained" / card.filename


def list_pretrained() -> pd.DataFrame:
    """The registered checkpoints, one row per card.

    Returns
    -------
    DataFrame indexed by name with columns ``model_class``, ``vocabulary``, ``size_mb``, ``license``,
    ``citation``, ``description``, ``url``, ``sha256`` and ``cached`` (whether the archive is already in
    ``settings.cache_dir``, or, for local cards, exists).

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
    >>> table = cf.pretrained.list_pretrained()
    >>> table.loc["scformer-tiny", ["model_class", "license"]].tolist()
    ['cellformers.model.ScFormer', 'CC-BY-4.0']
    >>> bool(table.loc["scformer-tiny", "cached"])  # a local archive: it exists
    True
    """
    columns = ["model_class", "vocabulary", "size_mb", "license", "citation", "description", "url", "sha256", "cached"]
    rows = []
    for card in sorted(REGISTRY.values(), key=lambda c: c.name):
        local = _local_path(card.url)
        row = asdict(card)
        row["size_mb"] = None if card.size_bytes is None else round(card.size_bytes / 1e6, 2)
        row["cached"] = local.is_file() if local is not None else _cached_path(card).is_file()
        rows.append(row)
    df = pd.DataFrame(rows, columns=["name", *columns])
    return df.set_index("name")


def fetch_pretrained(name: str) -> Path:
    """Path of a registered checkpoint archive, downloaded and verified on first use.

    Remote archives are fetched by pooch (with a progress bar when ``settings.progress_bar``) into
    ``settings.cache_dir / "pretrained"``; later calls find the file there and do not touch the network. A download
    that does not match the card's sha256 is deleted and :class:`~cellformers.ChecksumError` raised. The
    environment variable ``CELLFORMERS_PRETRAINED_URL`` replaces the host (a mirror or an offline server serving
    ``<base>/<card.filename>``). Local cards are checked against their sha256 and used in place.

    Parameters
    ----------
    name
        A registered name (see :func:`list_pretrained`).

    Returns
    -------
    Path of the verified archive.

    Raises
    ------
    ChecksumError
        The file does not match the card's sha256.
    OSError
        The file could not be downloaded.

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
    >>> cf.pretrained.fetch_pretrained("scformer-tiny") == archive  # a local card is used in place
    True

    A card with an ``https`` URL is downloaded into ``settings.cache_dir / "pretrained"`` on first use and checked
    against its sha256; later calls find it there.
    """
    card = get_pretrained_card(name)
    local = _local_path(card.url)
    if local is not None:
        if not local.is_file():
            msg = f"The archive of pretrained model {name!r} is missing: {local} does not exist."
            raise CheckpointError(msg)
        digest = file_sha256(local)
        if digest != card.sha256:
            msg = (
                f"{local} (pretrained model {name!r}) does not match the card's sha256 ({card.sha256[:12]}…, found "
                f"{digest[:12]}…). Register the card again with the archive's current hash "
                "(`PretrainedCard.from_archive`) if the file was re-packed on purpose."
            )
            raise ChecksumError(msg)
        return local
    base = os.environ.get(PRETRAINED_URL_ENV)
    url = f"{base.rstrip('/')}/{card.filename}" if base else card.url
    path = fetch_verified(
        url,
        sha256=card.sha256,
        fname=card.filename,
        folder=settings.cache_dir / "pretrained",
        what=f"pretrained model {name!r}",
        env_var=PRETRAINED_URL_ENV,
    )
    logger.debug(f"pretrained model {name!r} at {path}")
    return path
