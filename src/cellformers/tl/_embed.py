"""Write a model's outputs into an ``AnnData``: cell embeddings, imputed expression, gene embeddings."""

from __future__ import annotations

import inspect
import logging
from typing import TYPE_CHECKING, Any

import numpy as np

from cellformers._utils import resolve_adata
from cellformers._utils._progress import progress_bar_override

from ._chunks import model_chunks

if TYPE_CHECKING:
    from collections.abc import Callable

    from anndata import AnnData

    from cellformers.model.base import CellformersModel

logger = logging.getLogger(__name__)


def _model_name(model: CellformersModel) -> str:
    return getattr(model, "_model_name", type(model).__name__.lower())


def _model_params(model: CellformersModel, **extra: Any) -> dict[str, Any]:
    """What produced an output: model class, checkpoint or training summary, and call options."""
    params: dict[str, Any] = {"model": type(model).__name__}
    checkpoint = getattr(model, "checkpoint_name_", None)
    if checkpoint:
        params["checkpoint"] = str(checkpoint)
    history = getattr(model, "history_", None) or {}
    if history:
        params["epochs_trained"] = int(max((len(v) for v in history.values()), default=0))
    params.update({k: v for k, v in extra.items() if v is not None})
    return params


def _default_options(method: Callable, model: CellformersModel, kwargs: dict[str, Any]) -> dict[str, Any]:
    """The pooling / representation a getter uses when the caller does not choose one (recorded in ``uns``).

    A default of ``None`` in the signature means "the module's own setting" (e.g. scFormer's training pooling).
    """
    out = {}
    params = inspect.signature(method).parameters
    for name in ("pooling", "representation"):
        if name in params and name not in kwargs:
            value = params[name].default
            if value is None:
                value = getattr(getattr(model, "module", None), name, None)
            if isinstance(value, str):
                out[name] = value
    return out


def _checkpoint_genes(adata: AnnData, model: CellformersModel) -> tuple[list[str], float] | None:
    """The pretrained model's genes when ``adata`` has other genes (and the coverage ``from_pretrained`` asked).

    A checkpoint's genes are fixed: :meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained` aligns the data
    it is given to them (:func:`cellformers.pp.align_to_reference`), and so do ``tl.embed`` / ``tl.impute``, chunk
    by chunk, so that ``cf.tl.embed(adata, model)`` works on the very AnnData passed to ``from_pretrained``.
    Models trained here are not aligned to: their data must have their genes (a clear error says so).
    """
    import pandas as pd

    info = getattr(model, "pretrained_info_", None)
    if not info or model.get_anndata_manager(adata) is not None:
        return None
    genes = [str(g) for g in model.get_var_names()]
    if pd.Index(np.asarray(adata.var_names).astype(str)).equals(pd.Index(genes)):
        return None
    coverage = float(info.get("min_gene_coverage", 0.5))
    n_common = int(pd.Index(genes).isin(np.asarray(adata.var_names).astype(str)).sum())
    logger.info(
        f"`adata` has other genes than the pretrained model: aligned to its {len(genes)} genes chunk by chunk, as "
        f"`from_pretrained` does ({n_common} present, the others zero-filled; `adata` is not modified)"
    )
    return genes, coverage


def _chunked(
    adata: AnnData,
    model: CellformersModel,
    fn: Callable[[AnnData], np.ndarray],
    chunk_size: int | None,
    *,
    align: tuple[list[str], float] | None = None,
) -> np.ndarray:
    """``fn`` applied to the model-ready chunks of ``adata`` (:func:`~cellformers.tl._chunks.model_chunks`), stacked."""
    parts = [np.asarray(fn(sub)) for _, _, sub in model_chunks(adata, model, chunk_size, align=align)]
    return np.concatenate(parts, axis=0)


def embed(
    adata: AnnData,
    model: CellformersModel,
    *,
    key_added: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress_bar: bool | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """Cell embeddings of a trained model.

    Works the same for :class:`~cellformers.model.XTrimoGene`, :class:`~cellformers.model.ScFormer` and
    :class:`~cellformers.model.ScPaLM`; results do not depend on ``batch_size`` or ``chunk_size``. For a
    pretrained model (:meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained`), ``adata`` may have other
    genes than the checkpoint's: it is aligned to them chunk by chunk, as ``from_pretrained`` does, so the
    AnnData given to ``from_pretrained`` can be passed here as it is.

    Parameters
    ----------
    adata
        Cells to embed, with the genes the model was set up with (raw counts in the registered layer). May be
        backed; it is streamed in chunks of ``chunk_size`` cells.
    model
        A trained cellformers model.
    key_added
        ``adata.obsm`` key. Defaults to ``"X_<model>"`` (e.g. ``"X_xtrimogene"``).
    batch_size
        Minibatch size of the forward passes.
    chunk_size
        Cells loaded into memory at a time (default: all for in-memory data, 8192 for backed data).
    progress_bar
        Show a progress bar over the minibatches; ``None``: :attr:`cellformers.settings.progress_bar`.
    copy
        Return a modified copy instead of writing to ``adata``.
    **kwargs
        Passed to the model's ``get_latent_representation`` (e.g. ``pooling``, ``precision="bf16"``, or
        ``precision="int8"`` for int8 transformer blocks on the CPU).

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.obsm['X_<model>' | key_added]` : :class:`numpy.ndarray` (dtype ``float32``)
        The cell embeddings.
    `adata.uns['<model>' | key_added]['params']` : :class:`dict`
        The model class, checkpoint name or training summary, and the options used (the pooling, or scPaLM's
        ``representation``, also when left at its default).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.embed(adata, model)
    >>> adata.obsm["X_scformer"].shape
    (100, 16)
    >>> adata.uns["scformer"]["params"]["model"]
    'ScFormer'
    """
    adata = resolve_adata(adata)
    adata = adata.copy() if copy else adata
    name = _model_name(model)
    key = key_added or f"X_{name}"
    logger.info(f"computing {type(model).__name__} embedding")
    align = _checkpoint_genes(adata, model)
    with progress_bar_override(progress_bar):
        emb = _chunked(
            adata,
            model,
            lambda sub: model.get_latent_representation(sub, batch_size=batch_size, **kwargs),
            chunk_size,
            align=align,
        )
    adata.obsm[key] = emb.astype(np.float32, copy=False)
    options = {**_default_options(model.get_latent_representation, model, kwargs), **kwargs}
    adata.uns[key_added or name] = {"params": _model_params(model, batch_size=batch_size, **options)}
    logger.info(f"added {key!r} (adata.obsm)")
    return adata if copy else None


def impute(
    adata: AnnData,
    model: CellformersModel,
    *,
    key_added: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    progress_bar: bool | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """Imputed (denoised) expression of every gene, from the model's decoder.

    As :func:`embed`, ``adata`` may have other genes than a pretrained model's: it is aligned to them chunk by
    chunk, and the imputation is written for the genes of ``adata`` (NaN for those the model does not have).

    Parameters
    ----------
    adata
        Cells to impute (may be backed; streamed in chunks).
    model
        A trained cellformers model.
    key_added
        ``adata.layers`` key. Defaults to ``"<model>_imputed"``.
    batch_size
        Minibatch size of the forward passes.
    chunk_size
        Cells loaded into memory at a time.
    progress_bar
        Show a progress bar over the minibatches; ``None``: :attr:`cellformers.settings.progress_bar`.
    copy
        Return a modified copy instead of writing to ``adata``.
    **kwargs
        Passed to the model's ``get_imputed_expression``.

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.layers['<model>_imputed' | key_added]` : :class:`numpy.ndarray` (dtype ``float32``)
        Predicted expression on the log1p(1e4-normalized) scale; genes outside the model's vocabulary are NaN.
    `adata.uns['<model>_imputed' | key_added]['params']` : :class:`dict`
        The model and options used.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.impute(adata, model)
    >>> adata.layers["scformer_imputed"].shape  # log1p(1e4-normalized) scale
    (100, 50)
    """
    adata = resolve_adata(adata)
    adata = adata.copy() if copy else adata
    name = _model_name(model)
    key = key_added or f"{name}_imputed"
    logger.info(f"imputing expression with {type(model).__name__}")
    align = _checkpoint_genes(adata, model)
    with progress_bar_override(progress_bar):
        values = _chunked(
            adata,
            model,
            lambda sub: model.get_imputed_expression(sub, batch_size=batch_size, **kwargs),
            chunk_size,
            align=align,
        )
    if align is not None:  # back to the genes of `adata`
        import pandas as pd

        col = pd.Index(align[0]).get_indexer(np.asarray(adata.var_names).astype(str))
        out = np.full((values.shape[0], adata.n_vars), np.nan, dtype=np.float32)
        out[:, col >= 0] = values[:, col[col >= 0]]
        values = out
    adata.layers[key] = values.astype(np.float32, copy=False)
    adata.uns[key] = {"params": _model_params(model, batch_size=batch_size, **kwargs)}
    logger.info(f"added {key!r} (adata.layers)")
    return adata if copy else None


def gene_embeddings(
    adata: AnnData,
    model: CellformersModel,
    *,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """The model's learned gene (token) embeddings, one row per gene of ``adata``.

    Parameters
    ----------
    adata
        Annotated data whose ``var_names`` are looked up in the model's gene embeddings.
    model
        A cellformers model.
    key_added
        ``adata.varm`` key. Defaults to ``"<model>_gene_embeddings"``.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.varm['<model>_gene_embeddings' | key_added]` : :class:`numpy.ndarray`
        Gene embeddings; rows of genes the model does not know are NaN.
    `adata.uns['<model>_gene_embeddings' | key_added]['params']` : :class:`dict`
        The model used and how many genes were found.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.gene_embeddings(adata, model)
    >>> adata.varm["scformer_gene_embeddings"].shape
    (50, 16)
    """
    adata = resolve_adata(adata)
    adata = adata.copy() if copy else adata
    name = _model_name(model)
    key = key_added or f"{name}_gene_embeddings"
    table = model.get_gene_embeddings()
    values = table.reindex(adata.var_names).to_numpy(dtype=np.float32)
    adata.varm[key] = values
    n_found = int(np.isfinite(values).all(axis=1).sum())
    adata.uns[key] = {"params": _model_params(model, n_genes_found=n_found)}
    logger.info(f"added {key!r} (adata.varm), {n_found} of {adata.n_vars} genes found")
    return adata if copy else None
