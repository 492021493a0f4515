"""Exceptions raised for user mistakes.

Each kind of mistake has its own type, and every message names the argument at fault and the fix.
All inherit from :class:`CellformersError` and from the matching built-in type, so ``except ValueError``
keeps working.
"""

from __future__ import annotations

__all__ = [
    "CellformersError",
    "CheckpointError",
    "ChecksumError",
    "GeneMappingError",
    "InvalidExpressionError",
    "InvalidLabelsError",
    "MissingKeyError",
    "NotCountsError",
    "UnknownCategoryError",
    "UntrustedCheckpointError",
]


class CellformersError(Exception):
    """Base class of every error raised by cellformers for bad input.

    Examples
    --------
    Every error cellformers raises for bad input is a ``CellformersError``:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=40, n_genes=20)
    >>> try:
    ...     cf.model.ScFormer.setup_anndata(adata, batch_key="donor")
    ... except cf.CellformersError as err:
    ...     print(type(err).__name__, "-", err)
    MissingKeyError - `batch_key='donor'` is not a key of `adata.obs` (available: 'batch', 'labels').
    """


class InvalidExpressionError(CellformersError, ValueError):
    """The expression matrix holds values the method cannot use (NaN, inf, negative, empty cells).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=40, n_genes=20, sparse=False)
    >>> adata.X[0, 0] = -1
    >>> try:
    ...     cf.pp.check_counts(adata)
    ... except cf.InvalidExpressionError as err:
    ...     print(err)
    adata.X contains negative values (min -1); it looks scaled or centred (e.g. by `sc.pp.scale`). ...
    """


class NotCountsError(InvalidExpressionError):
    """Raw counts were expected but the data looks normalized or log-transformed.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=40, n_genes=20)
    >>> adata.X = adata.X / 2
    >>> try:
    ...     cf.pp.check_counts(adata)
    ... except cf.NotCountsError as err:
    ...     print(err)
    adata.X does not look like raw counts (it has non-integer values): ...
    >>> issubclass(cf.NotCountsError, (cf.InvalidExpressionError, ValueError))
    True
    """


class GeneMappingError(CellformersError, ValueError):
    """Genes of the data could not be matched to the vocabulary well enough.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=40, n_genes=20)
    >>> try:
    ...     cf.pp.map_genes(adata, cf.data.GeneVocab(["FOO", "BAR"]))
    ... except cf.GeneMappingError as err:
    ...     print(err)
    Only 0 of 20 genes (0.0%) map to vocabulary 'custom', below `min_coverage=0.5`. ...
    """


class InvalidLabelsError(CellformersError, ValueError):
    """A labels column cannot be used as asked: every label is missing, or fewer than two cell types are left.

    Examples
    --------
    A classifier needs at least two cell types:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    >>> adata.obs["cell_type"] = "T cell"
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> try:
    ...     model.train_annotator("cell_type", max_epochs=1)
    ... except cf.InvalidLabelsError as err:
    ...     print(err)
    `labels_key='cell_type'` has 1 distinct label(s) among the labelled cells; at least two cell types are needed to train a classifier.
    """


class MissingKeyError(CellformersError, KeyError):
    """A key named by the caller is not in the ``AnnData`` (obs, obsm, layers, var, uns).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=40, n_genes=20)
    >>> try:
    ...     cf.model.ScFormer.setup_anndata(adata, labels_key="cell_type")
    ... except KeyError as err:  # a MissingKeyError is a KeyError too
    ...     print(type(err).__name__, "-", err)
    MissingKeyError - `labels_key='cell_type'` is not a key of `adata.obs` (available: 'batch', 'labels').
    """

    def __str__(self) -> str:
        # KeyError quotes its message; show it as written.
        return str(self.args[0]) if self.args else ""


class UnknownCategoryError(CellformersError, ValueError):
    """A categorical covariate (e.g. the ``batch_key`` column) holds categories the model was not set up with.

    Examples
    --------
    A trained model meets cells of a batch it was not trained with:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    >>> cf.model.ScFormer.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> query = cf.data.synthetic_counts(n_cells=10, n_genes=20, random_state=1)
    >>> query.obs["batch"] = "new_batch"
    >>> try:
    ...     model.get_latent_representation(query)
    ... except cf.UnknownCategoryError as err:
    ...     print(err)
    `adata.obs['batch']` (`batch_key='batch'` of the model's setup) holds categories the ScFormer model was not trained with (['new_batch']); ...
    """


class ChecksumError(CellformersError, OSError):
    """A downloaded file does not match its pinned sha256 hash.

    Examples
    --------
    A checkpoint file changed after it was written is refused:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "checkpoint")
    >>> with open(path / "vocab.json", "a") as f:
    ...     _ = f.write(" ")
    >>> try:
    ...     cf.pretrained.verify_checkpoint(path)
    ... except cf.ChecksumError as err:
    ...     print(err)
    /.../checkpoint/vocab.json does not match the sha256 recorded in checksums.json (...): the checkpoint was modified or only partly written. Save or download it again.
    """


class UntrustedCheckpointError(CellformersError, ValueError):
    """A checkpoint names a class outside cellformers or would need unpickling arbitrary objects.

    Examples
    --------
    >>> import datetime, tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> import cellformers as cf
    >>> path = Path(tempfile.mkdtemp()) / "weights.pt"
    >>> torch.save({"weight": torch.ones(2), "date": datetime.date(2024, 1, 1)}, path)  # a pickled object
    >>> try:
    ...     cf.pretrained.safe_torch_load(path)
    ... except cf.UntrustedCheckpointError as err:
    ...     print(err)
    /.../weights.pt holds pickled objects other than tensors and plain containers; it is not unpickled, ...
    """


class CheckpointError(CellformersError, ValueError):
    """A checkpoint directory or archive is incomplete, damaged or of an unsupported format version.

    Examples
    --------
    >>> import tempfile
    >>> import cellformers as cf
    >>> try:
    ...     cf.pretrained.verify_checkpoint(tempfile.mkdtemp())  # an empty directory
    ... except cf.CheckpointError as err:
    ...     print(err)
    /... is not a complete cellformers checkpoint: ['config.json', 'model.safetensors', 'vocab.json', 'checksums.json'] missing ...
    """
