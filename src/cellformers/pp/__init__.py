"""Preprocessing: gene mapping, value binning, quality control and count recovery."""

from __future__ import annotations

from ._align import align_to_reference
from ._binning import bin_values
from ._map_genes import map_genes
from ._qc import check_counts, counts_from_normalized, filter_cells_by_genes

__all__ = [
    "align_to_reference",
    "bin_values",
    "check_counts",
    "counts_from_normalized",
    "filter_cells_by_genes",
    "map_genes",
]
