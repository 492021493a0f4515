"""Per-gene context embeddings of a model, streamed to a ``.npy`` file and/or pooled into ``adata.obsm``."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from cellformers._exceptions import InvalidExpressionError
from cellformers._utils import resolve_adata
from cellformers._utils._progress import progress_bar_override
from cellformers._utils._validation import check_batch_size

from ._chunks import model_chunks
from ._embed import _checkpoint_genes, _model_name, _model_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from cellformers.model.base import CellformersModel

logger = logging.getLogger(__name__)

__all__ = ["context_embedding"]

_DEFAULT_CHUNK = 512


def context_embedding(
    adata: AnnData,
    model: CellformersModel,
    *,
    genes: Sequence[str] | None = None,
    path: str | os.PathLike | None = None,
    pooled: Literal["mean", "max"] | None = "mean",
    key_added: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress_bar: bool | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """Per-gene context embeddings of a trained model, streamed over chunks of cells.

    The context embedding of a cell is the model's output at each of its genes, ``(n_genes, d)``: what the
    xTrimoGene paper feeds GEARS (perturbation response, App. 8.2) and DeepDDS (drug synergy, App. 8.3) in place
    of raw expression. It comes from the model's ``get_context_embedding``
    (:meth:`XTrimoGene <cellformers.model.XTrimoGene.get_context_embedding>`: the decoder's per-gene output by
    default; :meth:`ScFormer <cellformers.model.ScFormer.get_context_embedding>`: the transformer's gene rows).

    **Memory.** One cell's context embedding takes ``n_genes x d x 4`` bytes (float32): 19.7 MB for 19,264 genes
    of a 256-wide decoder, so 10,000 cells take 197 GB. The full tensor is therefore never held in memory: it is
    written chunk by chunk (``chunk_size`` cells at a time, peak ``chunk_size x n_genes x d x 4`` bytes plus the
    model's activations) into a ``.npy`` file at ``path`` (open it with ``np.load(path, mmap_mode="r")``), and/or
    pooled over the genes into one ``(n_cells, d)`` matrix in ``adata.obsm``. ``genes`` bounds both (e.g. the
    genes a downstream model uses).

    Parameters
    ----------
    adata
        Cells (or bulk samples) with the genes the model was set up with; may be backed (read in chunks) or a
        MuData (its ``"rna"`` modality).
    model
        A trained model with ``get_context_embedding`` (:class:`~cellformers.model.XTrimoGene`,
        :class:`~cellformers.model.ScFormer`).
    genes
        Gene names to return, in this order; ``None`` for every gene of the model in its vocabulary.
    path
        Where to write the full tensor ``(n_cells, n_genes_selected, d)`` as a ``.npy`` file; ``None`` writes
        none (then ``pooled`` must be set).
    pooled
        ``"mean"`` or ``"max"`` over the selected genes, written to ``adata.obsm``; ``None`` for none.
    key_added
        ``adata.obsm`` / ``adata.uns`` key. Defaults to ``"X_<model>_context"``.
    batch_size
        Minibatch size of the forward passes.
    chunk_size
        Cells computed (and held in memory) at a time (default 512).
    progress_bar
        Show a progress bar over the minibatches; ``None``: :attr:`cellformers.settings.progress_bar`.
    copy
        Return a modified copy instead of writing to ``adata``.
    **kwargs
        Passed to ``get_context_embedding`` (e.g. ``layer="encoder"``, ``precision="bf16"``).

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.obsm['X_<model>_context' | key_added]` : :class:`numpy.ndarray` (dtype ``float32``)
        With ``pooled``: the context embeddings pooled over the selected genes, ``(n_cells, d)``.
    `adata.uns['X_<model>_context' | key_added]['params']` : :class:`dict`
        The model, options, ``genes`` (the names, in the order of the second axis of the file), ``shape`` of the
        full tensor and ``path`` of the file (if written).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.XTrimoGene.setup_anndata(adata)
    >>> model = cf.model.XTrimoGene(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.context_embedding(adata, model, genes=adata.var_names[:10])
    >>> adata.obsm["X_xtrimogene_context"].shape  # mean over the 10 genes of each cell's decoder outputs
    (60, 8)
    >>> adata.uns["X_xtrimogene_context"]["params"]["shape"]  # the full tensor (written only with `path=`)
    [60, 10, 8]
    """
    if path is None and pooled is None:
        msg = "Nothing to write: pass `path=` (a .npy file for the full tensor) and/or `pooled='mean'|'max'`."
        raise ValueError(msg)
    if pooled not in (None, "mean", "max"):
        msg = f"`pooled` must be 'mean', 'max' or None, got {pooled!r}."
        raise ValueError(msg)
    if not hasattr(model, "get_context_embedding"):
        msg = f"{type(model).__name__} has no per-gene context embedding (`get_context_embedding`)."
        raise TypeError(msg)
    check_batch_size(chunk_size, arg="chunk_size")
    adata = resolve_adata(adata)
    adata = adata.copy() if copy else adata
    if adata.n_obs == 0:
        msg = f"`adata` has no cells (shape {adata.shape}); there is nothing to compute."
        raise InvalidExpressionError(msg)
    from cellformers.model.base._context import context_genes

    _, names = context_genes(model, genes)
    name = _model_name(model)
    key = key_added or f"X_{name}_context"
    align = _checkpoint_genes(adata, model)
    n = adata.n_obs
    out = pool = None
    logger.info(f"computing {type(model).__name__} context embeddings of {len(names)} genes")
    with progress_bar_override(progress_bar):
        for start, stop, sub in model_chunks(adata, model, chunk_size, align=align, default_chunk=_DEFAULT_CHUNK):
            emb = np.asarray(model.get_context_embedding(sub, genes=genes, batch_size=batch_size, **kwargs))
            if path is not None and out is None:
                out = np.lib.format.open_memmap(os.fspath(path), mode="w+", dtype=np.float32, shape=(n, *emb.shape[1:]))
            if out is not None:
                out[start:stop] = emb
            if pooled is not None:
                if pool is None:
                    pool = np.empty((n, emb.shape[-1]), dtype=np.float32)
                pool[start:stop] = emb.mean(axis=1) if pooled == "mean" else emb.max(axis=1)
            d = emb.shape[-1]
    if out is not None:
        out.flush()
        del out
        logger.info(f"wrote the context embeddings ({n} x {len(names)} x {d}) to {os.fspath(path)!r}")
    if pool is not None:
        adata.obsm[key] = pool
        logger.info(f"added {key!r} (adata.obsm)")
    adata.uns[key] = {
        "params": _model_params(
            model,
            batch_size=batch_size,
            pooled=pooled,
            path=None if path is None else os.fspath(path),
            shape=[int(n), len(names), int(d)],
            genes=list(names),
            **kwargs,
        )
    }
    return adata if copy else None
