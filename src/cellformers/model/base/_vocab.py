"""Which gene vocabulary a model uses, and the token id of each gene of its data."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._constants import UNS_KEYS, VAR_KEYS
from cellformers._exceptions import GeneMappingError, MissingKeyError
from cellformers._settings import settings
from cellformers._utils import check_key
from cellformers.data import GeneVocab

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["check_gene_mapping_key", "mapped_vocab_name", "resolve_vocab"]


def resolve_vocab(
    adata: AnnData, vocab: GeneVocab | str | dict | None, mapping_key: str | None = None
) -> tuple[GeneVocab, np.ndarray]:
    """The vocabulary and the token id of each gene of ``adata`` (``-1`` when absent).

    ``mapping_key`` is the ``key_added`` of :func:`cellformers.pp.map_genes` registered by ``setup_anndata``
    (``gene_mapping_key``); ``None`` stands for map_genes' default keys (``var['cellformers_token_id']``,
    ``uns['cellformers_gene_mapping']``). ``vocab=None`` uses the vocabulary ``map_genes`` recorded there when
    ``adata`` was mapped (and says so), else builds one from the data's genes (scFormer section 3.1). The token ids
    ``map_genes`` wrote are used when present (they resolve Ensembl ids and case), else the var names are looked up
    directly; a vocabulary other than the one ``map_genes`` used is an error.
    """
    column = mapping_key or VAR_KEYS.TOKEN_ID
    mapped_with = mapped_vocab_name(adata, mapping_key)
    if vocab is None and mapped_with is not None:
        vocab = load_mapped_vocab(mapped_with, adata, column)
        logger.info(
            f"using the vocabulary {mapped_with!r} that `cellformers.pp.map_genes` recorded in "
            f"adata.uns[{mapping_key or UNS_KEYS.GENE_MAPPING!r}] (pass `vocab=` to choose another)"
        )
    elif vocab is None:
        vocab = GeneVocab.from_adata(adata)
    elif isinstance(vocab, str):
        vocab = GeneVocab.load(vocab)
    elif isinstance(vocab, dict):  # as recorded in `init_params_` (`GeneVocab.to_dict`)
        vocab = GeneVocab.from_dict(vocab)
    elif not isinstance(vocab, GeneVocab):
        msg = f"`vocab` must be a GeneVocab, a reference name, its dict form or None, got {type(vocab).__name__}."
        raise TypeError(msg)
    if mapped_with is not None and vocab.name not in (None, "custom") and vocab.name != mapped_with:
        msg = (
            f"`adata` was mapped with `cellformers.pp.map_genes` against the vocabulary {mapped_with!r}, but the "
            f"model is given {vocab.name!r}: the token ids in adata.var[{column!r}] would mean other "
            f"genes. Pass `vocab={mapped_with!r}` (or leave `vocab` out), or rerun `map_genes` with "
            f"`vocab={vocab.name!r}`."
        )
        raise GeneMappingError(msg)
    if column in adata.var.columns:
        ids = adata.var[column].to_numpy(dtype=np.int64)
        if ids.max(initial=-1) >= len(vocab):
            msg = (
                f"`adata.var[{column!r}]` holds token ids beyond this vocabulary ({len(vocab)} "
                "tokens): it was mapped against another vocabulary. Rerun `cellformers.pp.map_genes` with "
                "the model's vocabulary."
            )
            raise GeneMappingError(msg)
    else:
        ids = vocab.lookup(adata.var_names)
    repeated = (ids >= 0) & pd.Series(ids).duplicated().to_numpy()
    if repeated.any():
        msg = (
            f"{int(repeated.sum())} genes of `adata` map to a token another gene already has (repeated names, "
            f"e.g. {adata.var_names[repeated][:5].tolist()}); only the first of each is used as model input. "
            "Run `adata.var_names_make_unique()` or sum the repeated genes to silence this."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
        ids = np.where(repeated, -1, ids)
    n_mapped = int((ids >= 0).sum())
    if n_mapped == 0:
        msg = (
            "None of the genes of `adata` is in the vocabulary. Check that `adata.var_names` are gene symbols "
            "(or run `cellformers.pp.map_genes(adata, vocab, gene_symbols=...)`)."
        )
        raise GeneMappingError(msg)
    if n_mapped < ids.size:
        logger.info(f"{n_mapped} of {ids.size} genes are in the vocabulary; the others are ignored")
    return vocab, ids


def mapped_vocab_name(adata: AnnData, mapping_key: str | None = None) -> str | None:
    """Name of the vocabulary :func:`cellformers.pp.map_genes` mapped ``adata`` to (``"custom"`` if unnamed).

    ``mapping_key`` is map_genes' ``key_added`` (``None``: its default keys).
    """
    column = mapping_key or VAR_KEYS.TOKEN_ID
    if column not in adata.var.columns:
        return None
    record = adata.uns.get(mapping_key or UNS_KEYS.GENE_MAPPING)
    params = record.get("params") if isinstance(record, dict) else None
    if not isinstance(params, dict) or params.get("var_key", VAR_KEYS.TOKEN_ID) != column:
        return None
    name = params.get("vocab")
    return str(name) if name is not None else None


def load_mapped_vocab(name: str, adata: AnnData, column: str = VAR_KEYS.TOKEN_ID) -> GeneVocab:
    """The vocabulary ``name`` recorded by :func:`cellformers.pp.map_genes`, or a clear error.

    A named reference is loaded. Another vocabulary cannot be rebuilt, except the data's own genes
    (``GeneVocab.from_adata(adata)``), recognised by giving exactly the recorded token ids.
    """
    from cellformers.data._references import REFERENCES

    if name not in REFERENCES:
        own = GeneVocab.from_adata(adata)
        if np.array_equal(own.lookup(adata.var_names), adata.var[column].to_numpy(dtype=np.int64)):
            return own
        msg = (
            f"`adata` was mapped with `cellformers.pp.map_genes` against a vocabulary that is not a named reference "
            f"({name!r}), so the model cannot rebuild it: pass the same vocabulary, `vocab=<the GeneVocab given to "
            "map_genes>`."
        )
        raise GeneMappingError(msg)
    return GeneVocab.load(name)


def check_gene_mapping_key(adata: AnnData, mapping_key: str | None) -> None:
    """Fail unless ``mapping_key`` names a :func:`cellformers.pp.map_genes` result of ``adata`` (column and record)."""
    if mapping_key is None:
        return
    check_key(adata, "var", mapping_key, arg="gene_mapping_key")
    record = adata.uns.get(mapping_key)
    params = record.get("params") if isinstance(record, dict) else None
    if not isinstance(params, dict) or params.get("var_key") != mapping_key:
        msg = (
            f"`gene_mapping_key={mapping_key!r}`: adata.uns[{mapping_key!r}] is not the record "
            f"`cellformers.pp.map_genes(adata, vocab, key_added={mapping_key!r})` writes beside the token ids; run "
            "map_genes with that `key_added`, or leave `gene_mapping_key` out to look the genes up by name."
        )
        raise MissingKeyError(msg)
