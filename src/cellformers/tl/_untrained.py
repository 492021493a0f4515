"""The untrained reference: the same architecture with fresh weights, embedded beside the trained model."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._embed import _model_name, embed

if TYPE_CHECKING:
    from anndata import AnnData

    from cellformers.model.base import CellformersModel


def embed_untrained(
    adata: AnnData,
    model: CellformersModel,
    *,
    key_added: str | None = None,
    seed: int | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """Cell embeddings of ``model``'s architecture with untrained weights, the reference for "what training added".

    A random transformer already maps expression to an embedding with some structure, so a trained model's
    benchmark score means little alone: read it beside this one (:func:`cellformers.tl.benchmark` on both keys).

    Parameters
    ----------
    adata
        Cells to embed, as for :func:`cellformers.tl.embed`.
    model
        A cellformers model; its class and constructor options are reused (:meth:`~cellformers.model.CellformersModel.untrained_copy`), not its weights.
    key_added
        ``adata.obsm`` key. Defaults to ``"X_<model>_untrained"``.
    seed
        Seed of the weight initialisation (``None``: :attr:`cellformers.settings.seed`).
    copy
        Return a modified copy instead of writing to ``adata``.
    **kwargs
        Passed to :func:`cellformers.tl.embed` (``batch_size``, ``pooling``, ...).

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.obsm['X_<model>_untrained' | key_added]` : :class:`numpy.ndarray` (dtype ``float32``)
        The untrained network's cell embeddings.
    `adata.uns['<model>_untrained' | key_added]['params']` : :class:`dict`
        The model class and options, with ``untrained=True`` and the seed.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=80, n_genes=40)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.embed(adata, model)
    >>> cf.tl.embed_untrained(adata, model)
    >>> sorted(adata.obsm)
    ['X_scformer', 'X_scformer_untrained']
    >>> adata.uns["scformer_untrained"]["params"]["untrained"]
    True
    """
    from cellformers._settings import settings

    name = f"{_model_name(model)}_untrained"
    key = key_added or f"X_{name}"
    reference = model.untrained_copy(seed=seed)
    out = embed(adata, reference, key_added=key, copy=copy, **kwargs)
    target = out if copy else adata
    uns_key = key_added or name
    # `embed` files its parameters under the obsm key it was given; keep them under the usual name instead
    params = dict(target.uns.pop(key, {}).get("params", {}))
    params.update({"untrained": True, "seed": settings.seed if seed is None else int(seed)})
    params.pop("epochs_trained", None)
    target.uns[uns_key] = {"params": params}
    return out
