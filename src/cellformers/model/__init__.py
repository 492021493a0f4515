"""User-facing models."""

from __future__ import annotations

from ._scformer import ScFormer
from ._scformer_perturbation import ScFormerPerturbation
from ._scpalm import SCPALM_PRESETS, SCPALM_QUANTIZERS, ScPaLM
from ._xtrimogene import XTrimoGene
from .base import CellformersModel, CellTypeAnnotator

__all__ = [
    "CellformersModel",
    "CellTypeAnnotator",
    "XTrimoGene",
    "SCPALM_PRESETS",
    "SCPALM_QUANTIZERS",
    "ScFormer",
    "ScFormerPerturbation",
    "ScPaLM",
]
