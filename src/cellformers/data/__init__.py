"""Gene vocabularies, named gene references, value binning and synthetic data."""

from __future__ import annotations

from ._binning import bin_expression
from ._references import REFERENCES, ReferenceCard, available_references, fetch_reference
from ._synthetic import synthetic_counts, synthetic_gene_symbols
from ._vocab import GeneVocab, looks_like_ensembl, strip_ensembl_version

__all__ = [
    "REFERENCES",
    "GeneVocab",
    "ReferenceCard",
    "available_references",
    "bin_expression",
    "fetch_reference",
    "looks_like_ensembl",
    "strip_ensembl_version",
    "synthetic_counts",
    "synthetic_gene_symbols",
]
