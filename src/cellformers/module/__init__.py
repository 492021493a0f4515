"""scvi-tools modules (tensors in, ``LossOutput`` out)."""

from __future__ import annotations

from ._base import GeneTokenModule
from ._classifier import CellTypeClassifier
from ._scformer import ScFormerModule
from ._scformer_perturbation import ScFormerPerturbationModule
from ._scpalm import ScPaLMModule
from ._xtrimogene import XTrimoGeneModule

__all__ = [
    "CellTypeClassifier",
    "GeneTokenModule",
    "XTrimoGeneModule",
    "ScFormerModule",
    "ScFormerPerturbationModule",
    "ScPaLMModule",
]
