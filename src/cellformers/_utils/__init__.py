"""Internal helpers shared across cellformers (not public API)."""

from __future__ import annotations

from ._anndata import (
    check_key,
    get_matrix,
    iter_row_chunks,
    resolve_adata,
    row_nnz,
    to_dense_rows,
)
from ._heap import heap_retained, retained_heap
from ._random import cell_generator, cell_seed, counter_uniform, counter_uniform_at, registered_cell_seeds
from ._torch import autocast_context, bf16_hardware, int8_copy, resolve_precision, training_device
from ._validation import check_block_values, check_counts, check_expression_values, looks_like_counts
