"""Label transfer from an annotated reference to a query by k-nearest neighbours in an embedding."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from natsort import natsorted

from cellformers._exceptions import InvalidExpressionError, InvalidLabelsError
from cellformers._utils import check_key, resolve_adata

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)


def transfer_labels(
    adata: AnnData,
    reference: AnnData,
    *,
    labels_key: str,
    use_rep: str,
    n_neighbors: int = 15,
    key_added: str | None = None,
    copy: bool = False,
) -> AnnData | None:
    """Transfer cell labels from ``reference`` to ``adata`` by a distance-weighted vote of nearest neighbours.

    Both objects must hold embeddings of the same model in ``obsm[use_rep]`` (e.g. from :func:`cellformers.tl.embed`
    with a model trained on the reference; align the query's genes first with
    :func:`cellformers.pp.align_to_reference`). Each query cell gets the label with the largest sum of weights
    ``1 / (distance + eps)`` over its ``n_neighbors`` nearest reference cells, and the share of that weight as its
    confidence.

    Parameters
    ----------
    adata
        Query cells with ``obsm[use_rep]``.
    reference
        Annotated reference cells with ``obsm[use_rep]`` and ``obs[labels_key]``.
    labels_key
        Column of ``reference.obs`` with the labels to transfer.
    use_rep
        Embedding key in ``obsm`` of both objects.
    n_neighbors
        Number of reference neighbours voting for each query cell.
    key_added
        ``adata.obs`` key of the transferred labels. Defaults to ``"<labels_key>_transferred"``.
    copy
        Return a modified copy instead of writing to ``adata``.

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.obs['<labels_key>_transferred' | key_added]` : :class:`pandas.Categorical`
        The transferred labels.
    `adata.obs['<labels_key>_transferred_confidence' | key_added + '_confidence']` : :class:`numpy.ndarray`
        Share of the neighbours' vote that went to the chosen label (0 to 1).
    `adata.uns['<labels_key>_transferred' | key_added]['params']` : :class:`dict`
        The parameters used.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.embed(adata, model)
    >>> query = cf.data.synthetic_counts(n_cells=30, n_genes=50, random_state=1)
    >>> cf.tl.embed(query, model)
    >>> cf.tl.transfer_labels(query, adata, labels_key="labels", use_rep="X_scformer")
    >>> query.obs[["labels_transferred", "labels_transferred_confidence"]].shape
    (30, 2)
    """
    from sklearn.neighbors import NearestNeighbors

    adata = resolve_adata(adata)
    reference = resolve_adata(reference)
    check_key(adata, "obsm", use_rep, arg="use_rep")
    check_key(reference, "obsm", use_rep, arg="use_rep")
    check_key(reference, "obs", labels_key, arg="labels_key")
    query_emb = np.asarray(adata.obsm[use_rep], dtype=np.float64)
    ref_emb = np.asarray(reference.obsm[use_rep], dtype=np.float64)
    if query_emb.shape[1] != ref_emb.shape[1]:
        msg = (
            f"`use_rep={use_rep!r}` has {query_emb.shape[1]} dimensions in `adata` but {ref_emb.shape[1]} in "
            "`reference`: embed both with the same model."
        )
        raise ValueError(msg)
    for name, emb in (("adata", query_emb), ("reference", ref_emb)):
        if not np.isfinite(emb).all():
            msg = f"`{name}.obsm[{use_rep!r}]` contains NaN or infinite values; recompute the embedding."
            raise InvalidExpressionError(msg)
    labels = reference.obs[labels_key]
    known = labels.notna().to_numpy()
    if known.sum() == 0:
        msg = f"`reference.obs[{labels_key!r}]` has no labels (all missing)."
        raise InvalidLabelsError(msg)
    if n_neighbors < 1:
        msg = f"`n_neighbors` must be at least 1, got {n_neighbors}."
        raise ValueError(msg)
    ref_labels = labels[known].astype(str).to_numpy()
    classes, codes = np.unique(ref_labels, return_inverse=True)
    k = min(n_neighbors, int(known.sum()))

    adata = adata.copy() if copy else adata
    n_query = query_emb.shape[0]
    if n_query:
        nn = NearestNeighbors(n_neighbors=k).fit(ref_emb[known])
        dist, idx = nn.kneighbors(query_emb)
    else:  # no query cells: empty columns (scikit-learn refuses an empty query)
        dist, idx = np.zeros((0, k)), np.zeros((0, k), dtype=np.int64)
    weights = 1.0 / (dist + 1e-8)
    votes = np.zeros((n_query, classes.size))
    np.add.at(votes, (np.repeat(np.arange(n_query), k), codes[idx].ravel()), weights.ravel())
    best = votes.argmax(axis=1)
    confidence = votes[np.arange(n_query), best] / votes.sum(axis=1)

    key = key_added or f"{labels_key}_transferred"
    adata.obs[key] = pd.Categorical(classes[best], categories=natsorted(classes))
    adata.obs[f"{key}_confidence"] = confidence.astype(np.float32)
    adata.uns[key] = {"params": {"labels_key": labels_key, "use_rep": use_rep, "n_neighbors": int(k)}}
    logger.info(f"added {key!r} and {key + '_confidence'!r} (adata.obs)")
    return adata if copy else None
