"""Reorder the genes of an ``AnnData`` to a fixed gene list (zero-filling the missing ones)."""

from __future__ import annotations

import copy
import logging
import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from cellformers._docs import doc_dsp
from cellformers._exceptions import GeneMappingError
from cellformers._settings import settings
from cellformers._utils import check_key, resolve_adata

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["ALIGNMENT_UNS_KEY", "align_to_reference"]

#: ``adata.uns`` entry of the aligned copy describing the alignment.
ALIGNMENT_UNS_KEY = "cellformers_alignment"
_N_EXAMPLES = 20
# scvi-tools' ids of an AnnData that was set up (``_SCVI_UUID_KEY``, ``_MANAGER_UUID_KEY``)
_SCVI_UNS_KEYS = ("_scvi_uuid", "_scvi_manager_uuid")


def _reindex_columns(X, src: np.ndarray, dst: np.ndarray, n_out: int):
    """Columns ``src`` of ``X`` placed at ``dst`` of an ``(n_obs, n_out)`` matrix, zeros elsewhere.

    Sparse input stays sparse (CSR) and dense input stays dense; the dtype is kept.
    """
    n_obs = X.shape[0]
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        select = sparse.csr_matrix(
            (np.ones(src.size, dtype=X.dtype), (src, dst)),
            shape=(X.shape[1], n_out),
        )
        out = (X @ select).tocsr()
        out.sort_indices()
        return out
    X = np.asarray(X)
    out = np.zeros((n_obs, n_out), dtype=X.dtype)
    out[:, dst] = X[:, src]
    return out


@doc_dsp.dedent
def align_to_reference(
    adata: AnnData,
    genes: Sequence[str] | pd.Index,
    *,
    gene_symbols: str | None = None,
    min_coverage: float = 0.5,
) -> AnnData:
    """A copy of ``adata`` whose genes are exactly ``genes``, in that order.

    Genes of ``genes`` that ``adata`` lacks are added as all-zero columns (xTrimoGene App. 1 treats unmeasured
    genes as zeros); genes of ``adata`` outside ``genes`` are dropped. ``X`` and every layer are reindexed the same
    way (sparse stays sparse); ``obs``, ``obsm``, ``obsp`` and ``uns`` are copied; ``varm``/``varp`` are dropped
    (they cannot be filled for the added genes). This is how a model checkpoint is applied to data measured on
    another gene panel (:meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained` calls it when the genes
    differ). ``adata`` itself is never modified.

    Parameters
    ----------
    adata
        Annotated data matrix with cells as observations and genes as variables; for a
        :class:`~mudata.MuData`, its ``"rna"`` modality is aligned (the result is that modality's aligned copy).
    genes
        The reference gene list, e.g. ``model.get_var_names()`` of a trained model; unique names.
    gene_symbols
        Column of ``adata.var`` holding the names to match against ``genes``; ``None`` matches ``var_names``.
        When several genes of ``adata`` carry the same name, the first one is kept (with a warning).
    min_coverage
        Smallest fraction of ``genes`` that ``adata`` must contain; below it a
        :class:`~cellformers.GeneMappingError` is raised. Data restricted to highly variable genes cover few of a
        foundation model's genes: pass all measured genes, or lower ``min_coverage`` knowingly.

    Returns
    -------
    A new :class:`~anndata.AnnData` with ``n_vars == len(genes)`` and ``var_names == genes``. Sets these fields:

    `adata.var['cellformers_present']` : :class:`numpy.ndarray` (dtype ``bool``)
        Whether the gene was measured in the input (``False`` for the zero-filled genes).
    `adata.uns['cellformers_alignment']` : :class:`dict`
        ``n_reference``, ``n_present`` (reference genes found), ``coverage`` (their fraction), ``n_dropped``
        (input genes outside the reference), ``missing_examples`` and ``gene_symbols``.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=10, n_genes=5)
    >>> ref = list(adata.var_names[::-1]) + ["NEWGENE"]
    >>> aligned = cf.pp.align_to_reference(adata, ref)
    >>> aligned.var_names.tolist() == ref, aligned.uns["cellformers_alignment"]["n_present"]
    (True, 5)
    """
    from anndata import AnnData

    adata = resolve_adata(adata)  # a MuData: its "rna" modality
    if adata.isbacked:
        msg = "`adata` is backed on disk; load it with `adata = adata.to_memory()` before aligning its genes."
        raise ValueError(msg)
    if not 0.0 <= float(min_coverage) <= 1.0:
        msg = f"`min_coverage` must be between 0 and 1, got {min_coverage!r}."
        raise ValueError(msg)
    ref = pd.Index([str(g) for g in genes])
    if ref.size == 0:
        msg = "`genes` is empty; pass the reference gene list (e.g. `model.get_var_names()`)."
        raise ValueError(msg)
    if ref.has_duplicates:
        dups = ref[ref.duplicated()].unique().tolist()
        msg = f"`genes` must be unique; {len(dups)} are repeated (e.g. {dups[:5]})."
        raise ValueError(msg)

    if gene_symbols is None:
        names = pd.Index(adata.var_names.astype(str))
    else:
        check_key(adata, "var", gene_symbols, arg="gene_symbols")
        names = pd.Index(adata.var[gene_symbols].astype(str))
    if names.has_duplicates:
        n_dup = int(names.duplicated().sum())
        msg = (
            f"{n_dup} gene names of `adata` are repeated (e.g. {names[names.duplicated()][:5].tolist()}); the first "
            "occurrence of each is used. Run `adata.var_names_make_unique()` or aggregate them to silence this."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
        first = ~names.duplicated()
        lookup = pd.Index(names[first])
        positions = np.flatnonzero(first)
    else:
        lookup = names
        positions = np.arange(names.size)

    idx = lookup.get_indexer(ref)
    present = idx >= 0
    dst = np.flatnonzero(present)
    src = positions[idx[present]]
    n_present = int(dst.size)
    coverage = n_present / ref.size
    n_dropped = int(adata.n_vars - n_present)
    missing_examples = ref[~present][:_N_EXAMPLES].tolist()
    key = "var_names" if gene_symbols is None else f"adata.var[{gene_symbols!r}]"
    if coverage < min_coverage:
        msg = (
            f"Only {n_present} of the {ref.size} reference genes ({coverage:.1%}) are in {key}, below "
            f"`min_coverage={min_coverage}`. Missing, e.g.: {missing_examples[:10]}. Check that the identifiers "
            "match (gene symbols vs Ensembl ids: pass `gene_symbols=` naming the column with the reference's kind "
            "of name), pass all measured genes rather than a highly-variable subset, or lower `min_coverage`."
        )
        raise GeneMappingError(msg)

    n_out = ref.size
    X = None if adata.X is None else _reindex_columns(adata.X, src, dst, n_out)
    layers = {k: _reindex_columns(v, src, dst, n_out) for k, v in adata.layers.items()}
    var = pd.DataFrame(index=ref.copy())
    var["cellformers_present"] = present
    out = AnnData(
        X=X,
        obs=adata.obs.copy(),
        var=var,
        obsm={k: v.copy() for k, v in adata.obsm.items()},
        obsp={k: v.copy() for k, v in adata.obsp.items()},
        layers=layers,
        # a deep copy, so the caller's uns cannot change through the new object; scvi-tools' ids are left out so
        # the new object is not mistaken for the (already set up) input
        uns={k: copy.deepcopy(v) for k, v in adata.uns.items() if k not in _SCVI_UNS_KEYS},
    )
    out.uns[ALIGNMENT_UNS_KEY] = {
        "n_reference": int(ref.size),
        "n_present": n_present,
        "coverage": float(coverage),
        "n_dropped": n_dropped,
        "missing_examples": missing_examples,
        "gene_symbols": gene_symbols,
    }
    logger.info(
        f"aligned to {ref.size} reference genes: {n_present} present ({coverage:.1%}), "
        f"{ref.size - n_present} zero-filled, {n_dropped} input genes dropped"
    )
    return out
