"""User-facing models."""

from __future__ import annotations

from cellformers.checkpoint import register_model_class

from ._scformer import SCFORMER_PRESETS, ScFormer
from ._scformer_perturbation import ScFormerPerturbation
from ._scpalm import SCPALM_PRESETS, SCPALM_QUANTIZERS, SCPALM_STAGE2, ScPaLM
from ._xtrimogene import XTRIMOGENE_PRESETS, XTrimoGene
from .base import CellformersModel, CellTypeAnnotator

# the classes a checkpoint's `model_class` may name (cellformers.checkpoint never imports a name it reads)
for _cls in (XTrimoGene, ScFormer, ScPaLM):
    register_model_class(_cls)
del _cls

__all__ = [
    "CellformersModel",
    "CellTypeAnnotator",
    "XTrimoGene",
    "SCFORMER_PRESETS",
    "SCPALM_PRESETS",
    "SCPALM_QUANTIZERS",
    "SCPALM_STAGE2",
    "ScFormer",
    "ScFormerPerturbation",
    "ScPaLM",
    "XTRIMOGENE_PRESETS",
]
