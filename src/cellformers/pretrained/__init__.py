"""Pretrained checkpoints: the checkpoint format, one-file archives, and a registry of named checkpoints.

A checkpoint is a directory written by ``model.save_pretrained(path)`` (``config.json``, ``model.safetensors``,
``vocab.json``, ``checksums.json``) and read by ``Model.from_pretrained(name_or_path_or_url, adata)``.
:func:`pack_checkpoint` makes the one archive a :class:`PretrainedCard` points at; :func:`register_pretrained`
gives a local or private checkpoint a name. The built-in registry is empty until a checkpoint with a verifiable
public URL and sha256 exists. :func:`convert_scfoundation` and :func:`convert_scgpt` turn the public scFoundation and
scGPT weights into :class:`~cellformers.model.XTrimoGene` and :class:`~cellformers.model.ScFormer` models.
"""

from __future__ import annotations

from ._archive import ARCHIVE_SUFFIXES, extract_checkpoint, pack_checkpoint
from ._checkpoint import (
    MODEL_CLASSES,
    PretrainedMixin,
    load_pretrained,
    resolve_checkpoint,
    safe_torch_load,
    save_pretrained,
)
from ._convert_scfoundation import SCFOUNDATION_KEYS, SCFOUNDATION_OPTIONS, convert_scfoundation
from ._convert_scgpt import SCGPT_OPTIONS, convert_scgpt
from ._format import CheckpointError, verify_checkpoint
from ._registry import (
    PRETRAINED_URL_ENV,
    REGISTRY,
    PretrainedCard,
    fetch_pretrained,
    get_pretrained_card,
    list_pretrained,
    register_pretrained,
)

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MODEL_CLASSES",
    "PRETRAINED_URL_ENV",
    "REGISTRY",
    "SCFOUNDATION_KEYS",
    "SCFOUNDATION_OPTIONS",
    "SCGPT_OPTIONS",
    "CheckpointError",
    "PretrainedCard",
    "PretrainedMixin",
    "convert_scfoundation",
    "convert_scgpt",
    "extract_checkpoint",
    "fetch_pretrained",
    "get_pretrained_card",
    "list_pretrained",
    "load_pretrained",
    "pack_checkpoint",
    "register_pretrained",
    "resolve_checkpoint",
    "safe_torch_load",
    "save_pretrained",
    "verify_checkpoint",
]
