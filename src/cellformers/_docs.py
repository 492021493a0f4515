"""Shared docstring fragments (docrep), as in scvi-tools' ``setup_anndata_dsp``."""

from __future__ import annotations

from docrep import DocstringProcessor

_adata = """\
adata
    Annotated data matrix with cells as observations and genes as variables."""

_copy = """\
copy
    Return a modified copy instead of writing to ``adata``."""

_layer = """\
layer
    Layer of ``adata`` holding raw counts. ``None`` uses ``adata.X``."""

_batch_key = """\
batch_key
    Column of ``adata.obs`` with the batch of each cell. ``None`` treats all cells as one batch."""

_labels_key = """\
labels_key
    Column of ``adata.obs`` with cell labels (used by annotation heads and benchmarks)."""

_random_state = """\
random_state
    Seed of the random number generator."""

doc_dsp = DocstringProcessor(
    adata=_adata,
    copy=_copy,
    layer=_layer,
    batch_key=_batch_key,
    labels_key=_labels_key,
    random_state=_random_state,
)
