"""Align the genes of an ``AnnData`` to a gene vocabulary."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np

from cellformers._constants import UNS_KEYS, VAR_KEYS
from cellformers._docs import doc_dsp
from cellformers._exceptions import GeneMappingError
from cellformers._settings import settings
from cellformers._utils import check_key, resolve_adata
from cellformers.data._vocab import GeneVocab, looks_like_ensembl

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["map_genes"]

# match kinds, best first; a token claimed by several genes goes to the best kind, then the first gene
_EXACT, _ENSEMBL, _CASE = 1, 2, 3
_N_EXAMPLES = 20


def _examples(names, mask, n: int = _N_EXAMPLES) -> list[str]:
    return [str(x) for x in np.asarray(names, dtype=object)[mask][:n]]


@doc_dsp.dedent
def map_genes(
    adata: AnnData,
    vocab: GeneVocab | str,
    *,
    gene_symbols: str | None = None,
    case_sensitive: bool = True,
    min_coverage: float = 0.5,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Map the genes of ``adata`` to the token ids of a gene vocabulary.

    Each gene is matched, in this order, by exact symbol, by Ensembl id (version suffix ignored; only when the
    vocabulary has Ensembl ids, see :meth:`~cellformers.data.GeneVocab.add_ensembl_ids`), and, with
    ``case_sensitive=False``, by symbol ignoring case (mouse ``Cd4`` -> ``CD4``). Genes without a match get
    ``-1``; models treat the vocabulary's genes that the data lacks as zeros (xTrimoGene App. 1). When several
    genes match the same token (repeated names, or ``CD4`` and ``Cd4``), the best match kind wins, then the first
    gene; the others get ``-1``, with a warning. ``X`` is never read.

    Parameters
    ----------
    %(adata)s
    vocab
        A :class:`~cellformers.data.GeneVocab` or the name of a reference (``"scfoundation-19264"``,
        ``"scgpt-default"``; see :func:`cellformers.data.available_references`).
    gene_symbols
        Column of ``adata.var`` holding gene symbols, as in scanpy. ``None`` matches ``var_names``. With a column,
        ``var_names`` are still tried as Ensembl ids (10x files index genes by Ensembl id).
    case_sensitive
        Whether symbols must match case. Set ``False`` for mouse data against a human vocabulary.
    min_coverage
        Smallest fraction of the data's genes that must be mapped; below it :class:`~cellformers.GeneMappingError`
        is raised and ``adata`` is left unchanged.
    key_added
        Name of the ``adata.var`` column and ``adata.uns`` entry written. ``None`` writes
        ``var['cellformers_token_id']`` and ``uns['cellformers_gene_mapping']``.
    %(copy)s

    Returns
    -------
    Returns ``None`` or, with ``copy=True``, a copy of ``adata``. Sets these fields:

    `adata.var['cellformers_token_id' | key_added]` : :class:`numpy.ndarray` (dtype ``int64``)
        Token id of each gene, ``-1`` when unmapped.
    `adata.uns['cellformers_gene_mapping' | key_added]` : :class:`dict`
        ``params`` (vocabulary name, arguments, ``var_key``), ``n_genes``, ``n_mapped``, ``coverage`` (fraction of
        the data's genes mapped), ``vocab_coverage`` (fraction of the vocabulary's genes present), counts per match
        kind (``n_exact``, ``n_ensembl``, ``n_case_insensitive``), ``n_duplicates`` and ``unmapped_examples``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=50, n_genes=20)
    >>> vocab = cf.data.GeneVocab(adata.var_names[:15])  # or a reference name, e.g. "scfoundation-19264"
    >>> cf.pp.map_genes(adata, vocab)
    >>> adata.uns["cellformers_gene_mapping"]["coverage"]
    0.75
    >>> adata.var.filter(like="token").iloc[[0, -1]]  # doctest: +NORMALIZE_WHITESPACE
          cellformers_token_id
    CD3E                     0
    GZMB                    -1
    """
    adata = resolve_adata(adata)
    if isinstance(vocab, str):
        vocab = GeneVocab.load(vocab)
    elif not isinstance(vocab, GeneVocab):
        msg = f"`vocab` must be a GeneVocab or a reference name, got {type(vocab).__name__}."
        raise TypeError(msg)
    if not 0.0 <= float(min_coverage) <= 1.0:
        msg = f"`min_coverage` must be between 0 and 1, got {min_coverage!r}."
        raise ValueError(msg)
    var_key = key_added or VAR_KEYS.TOKEN_ID
    uns_key = key_added or UNS_KEYS.GENE_MAPPING

    var_names = np.asarray(adata.var_names, dtype=object)
    n_genes = len(var_names)
    if n_genes == 0:
        msg = "`adata` has no genes (adata.n_vars == 0); there is nothing to map."
        raise GeneMappingError(msg)
    if gene_symbols is None:
        symbols = var_names
        id_sources = [var_names]
    else:
        check_key(adata, "var", gene_symbols, arg="gene_symbols")
        symbols = np.asarray(adata.var[gene_symbols].astype(object), dtype=object)
        id_sources = [symbols, var_names]

    ids = vocab.lookup(symbols)
    kind = np.where(ids >= 0, _EXACT, 0)
    if vocab.has_ensembl_ids:
        for source in id_sources:
            todo = ids < 0
            if not todo.any():
                break
            found = vocab.lookup_ensembl(source[todo])
            idx = np.flatnonzero(todo)[found >= 0]
            ids[idx], kind[idx] = found[found >= 0], _ENSEMBL
    if not case_sensitive:
        todo = ids < 0
        if todo.any():
            found = vocab.lookup(symbols[todo], case_sensitive=False)
            idx = np.flatnonzero(todo)[found >= 0]
            ids[idx], kind[idx] = found[found >= 0], _CASE

    # one gene per token: best kind first, then the first gene
    mapped = np.flatnonzero(ids >= 0)
    order = mapped[np.lexsort((mapped, kind[mapped]))]
    _, first = np.unique(ids[order], return_index=True)
    keep = np.zeros(n_genes, dtype=bool)
    keep[order[first]] = True
    dup = (ids >= 0) & ~keep
    n_dup = int(dup.sum())
    ids[dup] = -1
    kind[dup] = 0

    n_mapped = int((ids >= 0).sum())
    coverage = n_mapped / n_genes
    vocab_coverage = n_mapped / vocab.n_genes
    vocab_name = vocab.name or "custom"
    unmapped = ids < 0
    examples = _examples(symbols, unmapped & ~dup)

    if coverage < min_coverage:
        hints = []
        ensembl_like = np.mean([looks_like_ensembl(s) for s in symbols[:200]]) > 0.5
        if ensembl_like:
            if vocab.has_ensembl_ids:
                hints.append("the Ensembl ids may be from another species")
            else:
                hints.append(
                    "the genes look like Ensembl ids but the vocabulary has symbols only: pass "
                    "`gene_symbols='<column of adata.var with symbols>'`, or add ids with "
                    "`GeneVocab.add_ensembl_ids(table)`"
                )
        elif gene_symbols is None:
            hints.append("if another column of `adata.var` holds the gene symbols, pass `gene_symbols=` naming it")
        if case_sensitive:
            hints.append("for mouse (or lower-case) symbols pass `case_sensitive=False`")
        hints.append(f"lower `min_coverage` (now {min_coverage}) to accept the mapping as it is")
        msg = (
            f"Only {n_mapped} of {n_genes} genes ({coverage:.1%}) map to vocabulary {vocab_name!r}, below "
            f"`min_coverage={min_coverage}`. Unmapped examples: {examples[:8]}. Fixes: " + "; ".join(hints) + "."
        )
        raise GeneMappingError(msg)

    if n_dup:
        dup_examples = _examples(symbols, dup, 8)
        msg = (
            f"{n_dup} genes match a token already taken by another gene (repeated names or case variants, e.g. "
            f"{dup_examples}); only the best, then first, match keeps the token, the others get -1."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)

    adata = adata.copy() if copy else adata
    adata.var[var_key] = ids.astype(np.int64)
    params: dict[str, object] = {
        "vocab": vocab_name,
        "vocab_size": len(vocab),
        "vocab_n_genes": vocab.n_genes,
        "case_sensitive": case_sensitive,
        "min_coverage": float(min_coverage),
        "var_key": var_key,
    }
    if gene_symbols is not None:
        params["gene_symbols"] = gene_symbols
    adata.uns[uns_key] = {
        "params": params,
        "n_genes": n_genes,
        "n_mapped": n_mapped,
        "coverage": float(coverage),
        "vocab_coverage": float(vocab_coverage),
        "n_exact": int((kind == _EXACT).sum()),
        "n_ensembl": int((kind == _ENSEMBL).sum()),
        "n_case_insensitive": int((kind == _CASE).sum()),
        "n_duplicates": n_dup,
        "unmapped_examples": examples,
    }
    logger.info(
        f"mapped {n_mapped} of {n_genes} genes ({coverage:.1%}) to {vocab_name!r}, covering {vocab_coverage:.1%} "
        f"of its {vocab.n_genes} genes"
    )
    logger.info(f"added {var_key!r} (adata.var) and {uns_key!r} (adata.uns)")
    return adata if copy else None
