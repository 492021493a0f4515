"""Named gene-list references, downloaded once through pooch and checked against a pinned sha256."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cellformers._exceptions import ChecksumError
from cellformers._settings import settings

logger = logging.getLogger(__name__)

__all__ = ["REFERENCES", "ReferenceCard", "available_references", "fetch_reference"]

#: Environment variable holding a base URL (a mirror or a local server) that replaces each card's URL:
#: the file is then fetched from ``f"{base}/{card.fname}"``. The sha256 pin still applies.
REFERENCE_URL_ENV = "CELLFORMERS_REFERENCE_URL"


@dataclass(frozen=True)
class ReferenceCard:
    """Where a named gene reference comes from and how to read it.

    Attributes
    ----------
    name
        Name used by :meth:`cellformers.data.GeneVocab.load` and :func:`cellformers.pp.map_genes`.
    url
        Public URL of the file, pinned to a commit.
    sha256
        Hex sha256 of the file; a download that does not match is rejected.
    fname
        File name in the cache (``settings.cache_dir / "references"``).
    format
        ``"gene_index_tsv"``: a table with columns ``gene_name`` and ``index`` (index = token id);
        ``"token_id_json"``: a JSON object mapping each symbol to its token id.
    n_genes
        Number of genes the file holds (checked when it is read).
    description
        One line on what the list is.
    citation
        Paper to cite when the list is used.
    license
        Licence of the file.

    Examples
    --------
    >>> import cellformers as cf
    >>> card = cf.data.REFERENCES["scgpt-default"]
    >>> isinstance(card, cf.data.ReferenceCard)
    True
    >>> card.format, card.n_genes, card.fname
    ('token_id_json', 48292, 'scgpt_default_gene_vocab.json')
    """

    name: str
    url: str
    sha256: str
    fname: str
    format: Literal["gene_index_tsv", "token_id_json"]
    n_genes: int
    description: str
    citation: str
    license: str


#: Named gene-list references that :meth:`GeneVocab.load` and :func:`fetch_reference` know, by name.
REFERENCES: dict[str, ReferenceCard] = {
    card.name: card
    for card in (
        ReferenceCard(
            name="scfoundation-19264",
            url=(
                "https://raw.githubusercontent.com/biomap-research/scFoundation/"
                "d09626a5c1bc30b9c6227378677b61e0b987fe8b/OS_scRNA_gene_index.19264.tsv"
            ),
            sha256="bb337ea195d94e7b033543abc02a42e7060d6562eba97deb077f7dcecec62661",
            fname="scfoundation_OS_scRNA_gene_index.19264.tsv",
            format="gene_index_tsv",
            n_genes=19264,
            description=(
                "xTrimoGene/scFoundation input genes: HGNC protein-coding genes plus common mitochondrial genes, "
                "in the model's fixed order."
            ),
            citation="Gong et al. 2023, xTrimoGene (NeurIPS); Hao et al. 2024, scFoundation (Nat Methods)",
            license="Apache-2.0",
        ),
        ReferenceCard(
            name="scgpt-default",
            url=(
                "https://raw.githubusercontent.com/bowang-lab/scGPT/"
                "e98b75f347759deaa53334d1a16fd542987cc997/scgpt/tokenizer/default_gene_vocab.json"
            ),
            sha256="af490ed60ed045fe492d9124134ceb0855c056a1398e50eda24077ffa4946345",
            fname="scgpt_default_gene_vocab.json",
            format="token_id_json",
            n_genes=48292,
            description="scGPT's default gene vocabulary (symbol -> id, no special tokens).",
            citation="Cui et al. 2022, scFormer (bioRxiv); Cui et al. 2024, scGPT (Nat Methods)",
            license="MIT",
        ),
    )
}


def available_references() -> list[str]:
    """Names accepted by :func:`fetch_reference` and :meth:`cellformers.data.GeneVocab.load`.

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.data.available_references()
    ['scfoundation-19264', 'scgpt-default']
    """
    return sorted(REFERENCES)


def get_reference_card(name: str) -> ReferenceCard:
    """Return the card of a named reference, or raise a :class:`ValueError` listing the known names."""
    try:
        return REFERENCES[name]
    except KeyError:
        msg = f"Unknown gene reference {name!r}. Known references: {', '.join(available_references())}."
        raise ValueError(msg) from None


def _reference_url(card: ReferenceCard) -> str:
    base = os.environ.get(REFERENCE_URL_ENV)
    if base:
        return f"{base.rstrip('/')}/{card.fname}"
    return card.url


def _progressbar() -> bool:
    if not settings.progress_bar:
        return False
    try:
        import tqdm  # noqa: F401
    except ImportError:
        return False
    return True


def fetch_verified(
    url: str,
    *,
    sha256: str,
    fname: str,
    folder: str | os.PathLike,
    what: str,
    env_var: str | None = None,
) -> Path:
    """Path of ``folder / fname``, downloading ``url`` there unless a file with the pinned sha256 is already there.

    pooch streams the download into a temporary file beside the target and moves it into place only when its
    sha256 matches, so an interrupted or corrupted download never leaves a file that looks valid. A stale copy in
    the cache that does not match is replaced (or deleted when the new download does not match either). Shared by
    :func:`fetch_reference` and :func:`cellformers.pretrained.fetch_pretrained`.

    Parameters
    ----------
    url
        Where to download the file from (``http``, ``https``, ``ftp``).
    sha256
        Hex sha256 the file must have.
    fname
        File name in ``folder``.
    folder
        Cache folder (created when missing).
    what
        What the file is, for error messages (``"gene reference 'scgpt-default'"``).
    env_var
        Environment variable that overrides the base URL, named in error messages.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    ChecksumError
        The file fetched does not match ``sha256``; nothing is left in the cache.
    OSError
        The file could not be downloaded (no network, HTTP error, connection closed mid-download).
    """
    import pooch

    folder = Path(folder)
    target = folder / fname
    mirror_hint = (
        f" If `{env_var}` points to a mirror, check that the mirror serves the original file." if env_var else ""
    )
    try:
        path = pooch.retrieve(
            url=url,
            known_hash=f"sha256:{sha256}",
            fname=fname,
            path=folder,
            progressbar=_progressbar(),
        )
    except ValueError as err:
        if "hash" not in str(err).lower():
            raise
        # pooch never moves a mismatching download into place; a stale corrupted copy may still be there.
        if target.exists() and pooch.file_hash(str(target)) != sha256:
            target.unlink()
        msg = (
            f"The file downloaded for {what} from {url} does not match its pinned sha256 "
            f"({sha256[:12]}…); it was deleted.{mirror_hint} Details: {err}"
        )
        raise ChecksumError(msg) from err
    except OSError as err:  # requests' errors are OSErrors too
        alt = f" or set `{env_var}` to a mirror that serves it" if env_var else ""
        msg = (
            f"Could not download {what} from {url} ({type(err).__name__}: {err}). Without internet, "
            f"copy the file to {target} (its sha256 must be {sha256}){alt}."
        )
        raise OSError(msg) from err
    return Path(path)


def fetch_reference(name: str) -> Path:
    """Path of a named reference file, downloading it into the cache on first use.

    The file is stored in ``cellformers.settings.cache_dir / "references"``. A file already there is used as is
    when its sha256 matches the pinned one, so a cache pre-seeded with the right file never touches the network.
    The environment variable ``CELLFORMERS_REFERENCE_URL`` replaces the public base URL (a mirror or an
    offline server); the file name and the sha256 pin stay the same.

    Parameters
    ----------
    name
        One of :func:`available_references`.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    ChecksumError
        The file fetched does not match the pinned sha256; nothing is left in the cache.
    OSError
        The file could not be downloaded.

    Examples
    --------
    >>> import cellformers as cf
    >>> path = cf.data.fetch_reference("scfoundation-19264")  # downloaded on first use  # doctest: +SKIP
    >>> vocab = cf.data.GeneVocab.load("scfoundation-19264")  # reads it  # doctest: +SKIP

    Without internet, put a copy of the file where the cache expects it (its sha256 is checked):

    >>> card = cf.data.REFERENCES["scfoundation-19264"]
    >>> target = cf.settings.cache_dir / "references" / card.fname
    >>> target.name
    'scfoundation_OS_scRNA_gene_index.19264.tsv'

    Names are checked before anything is fetched:

    >>> try:
    ...     cf.data.fetch_reference("scfoundation")
    ... except ValueError as err:
    ...     print(err)
    Unknown gene reference 'scfoundation'. Known references: scfoundation-19264, scgpt-default.
    """
    card = get_reference_card(name)
    path = fetch_verified(
        _reference_url(card),
        sha256=card.sha256,
        fname=card.fname,
        folder=settings.cache_dir / "references",
        what=f"gene reference {name!r}",
        env_var=REFERENCE_URL_ENV,
    )
    logger.debug(f"gene reference {name!r} at {path}")
    return path
