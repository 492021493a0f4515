"""The checkpoint format, below the models: files, checksums, weights, archives, sources and the name registry.

Nothing here imports a model. :mod:`cellformers.model` builds and reads models with it
(``model.save_pretrained`` / ``Model.from_pretrained``), and :mod:`cellformers.pretrained` is the public namespace
users call (it re-exports what they need from here).

- :mod:`._format`: the directory layout, ``checksums.json`` and :func:`verify_checkpoint`;
- :mod:`._codec`: the JSON codec of ``config.json``;
- :mod:`._weights`: safetensors weights (no pickle) and :func:`safe_torch_load` for public pickles;
- :mod:`._directory`: atomic writes and recovery of interrupted ones;
- :mod:`._archive`: one-file archives (:func:`pack_checkpoint`, :func:`extract_checkpoint`);
- :mod:`._registry`: named checkpoints (:class:`PretrainedCard`) fetched through pooch with pinned hashes;
- :mod:`._sources`: :func:`resolve_checkpoint` (name, path or URL to a verified directory);
- :mod:`._classes`: which model classes a checkpoint may name;
- :mod:`._safe_load`: checks of scvi-tools' pickled ``model.pt`` before ``Model.load`` unpickles it.
"""

from __future__ import annotations

from ._archive import ARCHIVE_SUFFIXES, extract_checkpoint, pack_checkpoint
from ._classes import MODEL_CLASSES, register_model_class, resolve_model_class
from ._codec import decode_json, encode_json
from ._format import CHECKPOINT_FILES, CONFIG_FILE, VOCAB_FILE, WEIGHTS_FILE, CheckpointError, verify_checkpoint
from ._registry import (
    PRETRAINED_URL_ENV,
    REGISTRY,
    PretrainedCard,
    fetch_pretrained,
    get_pretrained_card,
    list_pretrained,
    register_pretrained,
)
from ._sources import resolve_checkpoint
from ._weights import read_weights, safe_torch_load, write_weights

__all__ = [
    "ARCHIVE_SUFFIXES",
    "CHECKPOINT_FILES",
    "CONFIG_FILE",
    "MODEL_CLASSES",
    "PRETRAINED_URL_ENV",
    "REGISTRY",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "PretrainedCard",
    "decode_json",
    "encode_json",
    "extract_checkpoint",
    "fetch_pretrained",
    "get_pretrained_card",
    "list_pretrained",
    "pack_checkpoint",
    "read_weights",
    "register_model_class",
    "register_pretrained",
    "resolve_checkpoint",
    "resolve_model_class",
    "safe_torch_load",
    "verify_checkpoint",
    "write_weights",
]
