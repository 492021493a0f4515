"""Pretrained checkpoints: the checkpoint format, one-file archives, and a registry of named checkpoints.

The public namespace for checkpoints: the format, archives and registry live in :mod:`cellformers.checkpoint`
(which imports no model), saving and loading models beside the model base (:class:`PretrainedMixin`), and the
converters of public upstream weights and the pre-training recipe (:func:`pretrain`, ``python -m cellformers
pretrain``, reading a corpus of ``.h5ad`` files) here.

A checkpoint is a directory written by ``model.save_pretrained(path)`` (``config.json``, ``model.safetensors``,
``vocab.json``, ``checksums.json``) and read by ``Model.from_pretrained(name_or_path_or_url, adata)``.
:func:`pack_checkpoint` makes the one archive a :class:`PretrainedCard` points at; :func:`register_pretrained`
gives a local or private checkpoint a name. The built-in registry is empty until a checkpoint with a verifiable
public URL and sha256 exists. :func:`convert_scfoundation` and :func:`convert_scgpt` turn the public scFoundation and
scGPT weights into :class:`~cellformers.model.XTrimoGene` and :class:`~cellformers.model.ScFormer` models.
"""

from __future__ import annotations

from cellformers.checkpoint import (
    ARCHIVE_SUFFIXES,
    MODEL_CLASSES,
    PRETRAINED_URL_ENV,
    REGISTRY,
    CheckpointError,
    PretrainedCard,
    extract_checkpoint,
    fetch_pretrained,
    get_pretrained_card,
    list_pretrained,
    pack_checkpoint,
    register_pretrained,
    resolve_checkpoint,
    safe_torch_load,
    verify_checkpoint,
)
from cellformers.model.base import PretrainedMixin, load_pretrained, save_pretrained

from ._convert_scfoundation import SCFOUNDATION_KEYS, SCFOUNDATION_OPTIONS, convert_scfoundation
from ._convert_scgpt import SCGPT_OPTIONS, convert_scgpt
from ._recipe import PRETRAIN_MODELS, pretrain

__all__ = [
    "ARCHIVE_SUFFIXES",
    "MODEL_CLASSES",
    "PRETRAINED_URL_ENV",
    "PRETRAIN_MODELS",
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
    "pretrain",
    "register_pretrained",
    "resolve_checkpoint",
    "safe_torch_load",
    "save_pretrained",
    "verify_checkpoint",
]
