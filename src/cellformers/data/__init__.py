"""Gene vocabularies, named gene references, value binning, perturb-seq datasets and synthetic data."""

from __future__ import annotations

from ._binning import bin_expression
from ._perturbation import (
    PERTURBATION_DATASETS,
    PerturbationDatasetCard,
    canonical_perturbation,
    gears_dataset,
    gears_de_genes,
    read_gears_h5ad,
    synthetic_perturbation,
)
from ._references import REFERENCES, ReferenceCard, available_references, fetch_reference
from ._synthetic import synthetic_counts, synthetic_gene_symbols
from ._vocab import GeneVocab, looks_like_ensembl, strip_ensembl_version

__all__ = [
    "PERTURBATION_DATASETS",
    "PerturbationDatasetCard",
    "REFERENCES",
    "GeneVocab",
    "ReferenceCard",
    "available_references",
    "bin_expression",
    "canonical_perturbation",
    "fetch_reference",
    "gears_dataset",
    "gears_de_genes",
    "looks_like_ensembl",
    "read_gears_h5ad",
    "strip_ensembl_version",
    "synthetic_counts",
    "synthetic_gene_symbols",
    "synthetic_perturbation",
]
