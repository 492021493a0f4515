"""Gene vocabulary: gene tokens in a fixed order, followed by special tokens."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from cellformers._constants import SPECIAL_TOKENS
from cellformers._settings import settings

from ._references import fetch_reference, get_reference_card

if TYPE_CHECKING:
    from collections.abc import Iterable, Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["GeneVocab", "looks_like_ensembl", "strip_ensembl_version"]

_FORMAT = "cellformers-gene-vocab"
_FORMAT_VERSION = 1
# ENSG00000111640.15, ENSMUSG00000000001, ENSG00000182378.15_PAR_Y
_ENSEMBL_RE = re.compile(r"^(ENS[A-Z]*\d{11})(?:\.\d+)?(_PAR_Y)?$")
_SPECIAL_RE = re.compile(r"^<[^<>]+>$")


def looks_like_ensembl(name: object) -> bool:
    """Whether ``name`` is an Ensembl gene id such as ``ENSG00000111640`` or ``ENSMUSG00000000001.4``.

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.data.looks_like_ensembl("ENSG00000111640.15"), cf.data.looks_like_ensembl("GAPDH")
    (True, False)
    """
    return isinstance(name, str) and _ENSEMBL_RE.match(name.strip()) is not None


def strip_ensembl_version(name: str) -> str:
    """Ensembl id without its version suffix (``ENSG00000111640.15`` -> ``ENSG00000111640``).

    ``_PAR_Y`` suffixes are kept, so pseudo-autosomal copies stay distinct. Other strings are returned stripped of
    surrounding whitespace.

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.data.strip_ensembl_version("ENSG00000111640.15")
    'ENSG00000111640'
    >>> cf.data.strip_ensembl_version("ENSG00000002586.20_PAR_Y")
    'ENSG00000002586_PAR_Y'
    """
    name = name.strip()
    m = _ENSEMBL_RE.match(name)
    if m is None:
        return name
    return m.group(1) + (m.group(2) or "")


def _clean(values: Iterable[Any]) -> list[str | None]:
    """Strings stripped of whitespace; missing values (None, NaN, empty) become None."""
    out: list[str | None] = []
    for v in values:
        if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA:
            out.append(None)
            continue
        s = str(v).strip()
        out.append(s or None)
    return out


class GeneVocab:
    """Ordered gene tokens followed by special tokens.

    Token ids are positions: gene ``i`` has id ``i`` (``0 … n_genes-1``), and the special tokens follow
    (``<pad>``, ``<cls>``, ``<mask>`` by default, ids ``n_genes …``). Keeping genes first means a reference's own
    gene ids stay valid (scFoundation's gene index, scGPT's token ids) and ``n_genes`` is the size of any
    per-gene output layer. ``len(vocab)`` counts all tokens, i.e. the size of an embedding table.

    Genes are looked up by symbol (exact, or case-insensitively for mouse-style symbols such as ``Cd4``) and,
    when the vocabulary carries them, by Ensembl id with the version suffix stripped.

    Parameters
    ----------
    genes
        Gene symbols in token-id order; unique and non-empty.
    ensembl_ids
        Optional Ensembl gene id of each gene (``None`` where unknown); version suffixes are stripped.
    specials
        Special tokens placed after the genes. ``<pad>``, ``<cls>`` and ``<mask>`` are always present: those
        missing from ``specials`` are appended.
    name
        Name of the vocabulary (a reference name such as ``"scfoundation-19264"``), stored by
        :func:`cellformers.pp.map_genes`.

    Examples
    --------
    >>> from cellformers.data import GeneVocab
    >>> vocab = GeneVocab(["CD4", "CD8A", "ACTB"])
    >>> vocab["CD8A"], vocab.pad_id, len(vocab)
    (1, 3, 6)
    >>> vocab.lookup(["Cd4", "Actb", "Foo"], case_sensitive=False).tolist()
    [0, 2, -1]
    """

    def __init__(
        self,
        genes: Sequence[str],
        *,
        ensembl_ids: Sequence[str | None] | None = None,
        specials: Sequence[str] | None = None,
        name: str | None = None,
    ) -> None:
        genes_clean = _clean(genes)
        if not genes_clean:
            msg = "`genes` is empty; a vocabulary needs at least one gene."
            raise ValueError(msg)
        if any(g is None for g in genes_clean):
            pos = next(i for i, g in enumerate(genes_clean) if g is None)
            msg = f"`genes` must be non-empty strings; entry {pos} is {list(genes)[pos]!r}."
            raise ValueError(msg)
        self._genes: list[str] = genes_clean  # type: ignore[assignment]
        self._gene_index: dict[str, int] = {}
        dups: list[str] = []
        for i, g in enumerate(self._genes):
            if g in self._gene_index:
                dups.append(g)
            else:
                self._gene_index[g] = i
        if dups:
            msg = (
                f"`genes` must be unique; {len(dups)} are repeated (e.g. {dups[:5]}). "
                "Deduplicate them first, e.g. `list(dict.fromkeys(genes))`."
            )
            raise ValueError(msg)

        specials_list = [] if specials is None else [str(s) for s in specials]
        for tok in SPECIAL_TOKENS:
            if tok not in specials_list:
                specials_list.append(tok)
        if len(set(specials_list)) != len(specials_list):
            msg = f"`specials` must be unique, got {specials_list}."
            raise ValueError(msg)
        clash = [s for s in specials_list if s in self._gene_index]
        if clash:
            msg = f"Special tokens {clash} are also gene names; rename the genes or the special tokens."
            raise ValueError(msg)
        self._specials: tuple[str, ...] = tuple(specials_list)
        n = len(self._genes)
        self._special_index = {s: n + j for j, s in enumerate(self._specials)}

        self._ensembl: list[str | None] | None = None
        self._ensembl_index: dict[str, int] = {}
        if ensembl_ids is not None:
            ids = _clean(ensembl_ids)
            if len(ids) != n:
                msg = f"`ensembl_ids` has {len(ids)} entries but there are {n} genes."
                raise ValueError(msg)
            self._ensembl = [None if e is None else strip_ensembl_version(e) for e in ids]
            for i, e in enumerate(self._ensembl):
                if e is not None:
                    self._ensembl_index.setdefault(e, i)  # first gene wins when two share an id
        self._upper_index: dict[str, int] | None = None
        self.name = name

    # ------------------------------------------------------------------ basic properties
    @property
    def genes(self) -> list[str]:
        """Gene symbols in token-id order (a copy)."""
        return list(self._genes)

    @property
    def specials(self) -> tuple[str, ...]:
        """Special tokens, in token-id order after the genes."""
        return self._specials

    @property
    def tokens(self) -> list[str]:
        """All tokens in id order: genes, then specials."""
        return self._genes + list(self._specials)

    @property
    def n_genes(self) -> int:
        """Number of gene tokens (ids ``0 … n_genes-1``)."""
        return len(self._genes)

    @property
    def ensembl_ids(self) -> list[str | None] | None:
        """Ensembl id of each gene without version (``None`` where unknown), or ``None`` if the vocab has none."""
        return None if self._ensembl is None else list(self._ensembl)

    @property
    def has_ensembl_ids(self) -> bool:
        """Whether at least one gene has an Ensembl id."""
        return bool(self._ensembl_index)

    @property
    def pad_id(self) -> int:
        """Id of ``<pad>``."""
        return self._special_index[SPECIAL_TOKENS.PAD]

    @property
    def cls_id(self) -> int:
        """Id of ``<cls>``."""
        return self._special_index[SPECIAL_TOKENS.CLS]

    @property
    def mask_id(self) -> int:
        """Id of ``<mask>``."""
        return self._special_index[SPECIAL_TOKENS.MASK]

    def __len__(self) -> int:
        return len(self._genes) + len(self._specials)

    def __contains__(self, token: object) -> bool:
        return token in self._gene_index or token in self._special_index

    def __getitem__(self, token: str) -> int:
        if token in self._gene_index:
            return self._gene_index[token]
        if token in self._special_index:
            return self._special_index[token]
        msg = f"{token!r} is not a token of this vocabulary ({self!r}); use `lookup` to get -1 for unknown genes."
        raise KeyError(msg)

    def __iter__(self):
        return iter(self.tokens)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, GeneVocab):
            return NotImplemented
        return (
            self._genes == other._genes
            and self._specials == other._specials
            and self._ensembl == other._ensembl
            and self.name == other.name
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        name = f"{self.name!r}, " if self.name else ""
        ens = ", with Ensembl ids" if self.has_ensembl_ids else ""
        return f"GeneVocab({name}{self.n_genes} genes + {len(self._specials)} specials{ens})"

    # ------------------------------------------------------------------ lookups
    def _upper(self) -> dict[str, int]:
        if self._upper_index is None:
            idx: dict[str, int] = {}
            for i, g in enumerate(self._genes):
                idx.setdefault(g.upper(), i)  # on a case-only clash the lower id wins
            self._upper_index = idx
        return self._upper_index

    def lookup(self, symbols: Iterable[Any], *, case_sensitive: bool = True) -> np.ndarray:
        """Token ids of gene symbols, ``-1`` where a symbol is not a gene of the vocabulary.

        Special tokens are never returned. Missing values (``None``, NaN) give ``-1``.

        Parameters
        ----------
        symbols
            Gene symbols.
        case_sensitive
            If ``False``, a symbol without an exact match is matched ignoring case (``Cd4`` -> ``CD4``). When two
            genes of the vocabulary differ only by case, the one with the lower id is taken.

        Returns
        -------
        ``int64`` array of token ids.
        """
        exact = self._gene_index
        upper = None if case_sensitive else self._upper()
        out = []
        for s in _clean(symbols):
            if s is None:
                out.append(-1)
                continue
            i = exact.get(s, -1)
            if i < 0 and upper is not None:
                i = upper.get(s.upper(), -1)
            out.append(i)
        return np.asarray(out, dtype=np.int64)

    def lookup_ensembl(self, ids: Iterable[Any]) -> np.ndarray:
        """Token ids of Ensembl gene ids (version suffixes ignored), ``-1`` where unknown.

        All ``-1`` when the vocabulary has no Ensembl ids (see :meth:`add_ensembl_ids`).
        """
        index = self._ensembl_index
        return np.asarray(
            [-1 if e is None else index.get(strip_ensembl_version(e), -1) for e in _clean(ids)], dtype=np.int64
        )

    def id_to_token(self, ids: Iterable[int]) -> list[str]:
        """Tokens of the given ids."""
        toks = self.tokens
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < len(toks):
                msg = f"token id {i} is out of range for a vocabulary of {len(toks)} tokens."
                raise IndexError(msg)
            out.append(toks[i])
        return out

    # ------------------------------------------------------------------ Ensembl ids
    def add_ensembl_ids(self, mapping: Mapping[str, str] | pd.DataFrame | str | os.PathLike) -> GeneVocab:
        """A copy of the vocabulary with an Ensembl id for each gene found in ``mapping``.

        Parameters
        ----------
        mapping
            Symbol -> Ensembl id, as a mapping, or a table (``DataFrame`` or path of a csv/tsv, compressed or not)
            with columns ``gene_name`` and ``gene_id``, such as a GENCODE gene table. When a symbol has several
            ids, the first row wins; ``_PAR_Y`` copies are skipped. Versions are stripped.

        Returns
        -------
        New :class:`GeneVocab`; genes absent from ``mapping`` keep no Ensembl id (or their current one).
        """
        if isinstance(mapping, str | os.PathLike):
            path = Path(mapping)
            sep = "\t" if ".tsv" in path.suffixes or ".txt" in path.suffixes else ","
            mapping = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)  # a gene may be called "NA"
        if isinstance(mapping, pd.DataFrame):
            missing = {"gene_name", "gene_id"} - set(mapping.columns)
            if missing:
                msg = f"The Ensembl table needs columns 'gene_name' and 'gene_id' (missing {sorted(missing)})."
                raise ValueError(msg)
            table = mapping[["gene_name", "gene_id"]].dropna()
            table = table[(table["gene_name"] != "") & (table["gene_id"] != "")]
            table = table[~table["gene_id"].astype(str).str.endswith("_PAR_Y")]
            table = table.drop_duplicates("gene_name", keep="first")
            mapping = dict(zip(table["gene_name"].astype(str), table["gene_id"].astype(str), strict=True))
        current = self._ensembl or [None] * self.n_genes
        new_ids = [mapping.get(g, current[i]) for i, g in enumerate(self._genes)]
        n_found = sum(e is not None for e in new_ids)
        logger.info(f"Ensembl ids for {n_found} of {self.n_genes} genes")
        return GeneVocab(self._genes, ensembl_ids=new_ids, specials=self._specials, name=self.name)

    # ------------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable description (read back by :meth:`from_dict`)."""
        return {
            "format": _FORMAT,
            "version": _FORMAT_VERSION,
            "name": self.name,
            "genes": list(self._genes),
            "specials": list(self._specials),
            "ensembl_ids": None if self._ensembl is None else list(self._ensembl),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> GeneVocab:
        """Inverse of :meth:`to_dict`."""
        if data.get("format") != _FORMAT:
            msg = f"Not a cellformers gene vocabulary (format {data.get('format')!r}, expected {_FORMAT!r})."
            raise ValueError(msg)
        if int(data.get("version", 0)) > _FORMAT_VERSION:
            msg = (
                f"This vocabulary was written by a newer cellformers (format version {data['version']}); "
                "upgrade cellformers to read it."
            )
            raise ValueError(msg)
        return cls(data["genes"], ensembl_ids=data.get("ensembl_ids"), specials=data["specials"], name=data.get("name"))

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the vocabulary as JSON (see :meth:`from_json`)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n", encoding="utf-8")

    @classmethod
    def from_json(cls, path: str | os.PathLike, *, name: str | None = None) -> GeneVocab:
        """Read a vocabulary written by :meth:`to_json`, or a ``{token: id}`` JSON object (scGPT's layout).

        See :meth:`from_token_ids` for how a ``{token: id}`` object is read.
        """
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        if isinstance(data, dict) and data.get("format") == _FORMAT:
            vocab = cls.from_dict(data)
            if name is not None:
                vocab.name = name
            return vocab
        if isinstance(data, dict) and data and all(isinstance(v, int) for v in data.values()):
            return cls.from_token_ids(data, name=name)
        msg = f"{path} is neither a cellformers gene vocabulary nor a JSON object mapping tokens to integer ids."
        raise ValueError(msg)

    @classmethod
    def from_token_ids(cls, mapping: Mapping[str, int], *, name: str | None = None) -> GeneVocab:
        """Vocabulary from a ``{token: id}`` mapping, keeping the ids where the layout allows it.

        Tokens written like ``<pad>`` are special tokens, the rest are genes. The ids are kept when genes hold
        ``0 … n_genes-1`` and the specials follow (scGPT's files: its default gene vocabulary has no specials,
        its checkpoint vocabularies end with ``<pad>``, ``<cls>``, ``<eoc>``). Missing ``<pad>``, ``<cls>`` and
        ``<mask>`` are appended. Any other layout is renumbered in id order, with a warning.
        """
        items = sorted(mapping.items(), key=lambda kv: (int(kv[1]), kv[0]))
        ids = [int(i) for _, i in items]
        genes = [t for t, _ in items if not _SPECIAL_RE.match(t)]
        specials = [t for t, _ in items if _SPECIAL_RE.match(t)]
        vocab = cls(genes, specials=specials, name=name)
        expected = genes + specials
        contiguous = ids == list(range(len(ids)))
        if not contiguous or [t for t, _ in items] != expected:
            msg = (
                "The token ids are not `0 … n_genes-1` followed by the special tokens; they were renumbered in "
                "id order (genes first). Models trained with the original ids need them remapped."
            )
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
        return vocab

    # ------------------------------------------------------------------ constructors
    @classmethod
    def load(cls, name: str) -> GeneVocab:
        """Named reference vocabulary, downloaded on first use (see :func:`cellformers.data.available_references`).

        Parameters
        ----------
        name
            ``"scfoundation-19264"`` (xTrimoGene/scFoundation's 19,264 genes, ids = the model's gene index) or
            ``"scgpt-default"`` (scGPT's 48,292-gene default vocabulary, ids kept).

        Returns
        -------
        The vocabulary, with ``vocab.name == name``.
        """
        card = get_reference_card(name)
        path = fetch_reference(name)
        if card.format == "gene_index_tsv":
            table = pd.read_csv(path, sep="\t", dtype={"gene_name": str}, keep_default_na=False)
            table = table.sort_values("index", kind="stable")
            if not np.array_equal(table["index"].to_numpy(), np.arange(len(table))):
                msg = f"The gene index of reference {name!r} ({path}) is not 0 … n-1."
                raise ValueError(msg)
            vocab = cls(table["gene_name"].tolist(), name=name)
        else:
            with open(path, encoding="utf-8") as fh:
                vocab = cls.from_token_ids(json.load(fh), name=name)
        if vocab.n_genes != card.n_genes:
            msg = f"Reference {name!r} ({path}) has {vocab.n_genes} genes, expected {card.n_genes}."
            raise ValueError(msg)
        return vocab

    @classmethod
    def from_adata(
        cls,
        adatas: AnnData | Sequence[AnnData] | Mapping[str, AnnData],
        *,
        gene_symbols: str | None = None,
        specials: Sequence[str] | None = None,
        name: str | None = None,
    ) -> GeneVocab:
        """Vocabulary of the union of the genes of one or several datasets (scFormer section 3.1).

        Genes keep the order of first appearance: all genes of the first dataset, then the new genes of the
        second, and so on. When ``gene_symbols`` names a column and ``var_names`` are Ensembl ids, those ids are
        recorded too.

        Parameters
        ----------
        adatas
            One ``AnnData``, a sequence of them or a mapping of names to them.
        gene_symbols
            Column of ``adata.var`` holding the gene symbols; ``None`` uses ``var_names``.
        specials
            Special tokens (see :class:`GeneVocab`).
        name
            Name of the vocabulary.
        """
        from anndata import AnnData

        from cellformers._utils import check_key

        if isinstance(adatas, AnnData):
            adatas = [adatas]
        elif isinstance(adatas, Mapping):
            adatas = list(adatas.values())
        genes: dict[str, str | None] = {}
        for adata in adatas:
            if gene_symbols is None:
                symbols = _clean(adata.var_names)
                ens: list[str | None] = [None] * len(symbols)
            else:
                check_key(adata, "var", gene_symbols, arg="gene_symbols")
                symbols = _clean(adata.var[gene_symbols])
                ens = [n if looks_like_ensembl(n) else None for n in adata.var_names]
            for s, e in zip(symbols, ens, strict=True):
                if s is not None and s not in genes:
                    genes[s] = e
                elif s is not None and genes[s] is None and e is not None:
                    genes[s] = e
        if not genes:
            msg = "The datasets passed to `GeneVocab.from_adata` have no gene names."
            raise ValueError(msg)
        ensembl = list(genes.values())
        return cls(
            list(genes),
            ensembl_ids=ensembl if any(e is not None for e in ensembl) else None,
            specials=specials,
            name=name,
        )
