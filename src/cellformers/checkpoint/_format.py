"""The checkpoint directory layout: file names, checksums and their verification."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from cellformers._exceptions import CheckpointError, ChecksumError

logger = logging.getLogger(__name__)

__all__ = [
    "CHECKPOINT_FILES",
    "CHECKSUMS_FILE",
    "CONFIG_FILE",
    "CheckpointError",
    "FORMAT",
    "FORMAT_VERSION",
    "VOCAB_FILE",
    "WEIGHTS_FILE",
    "file_sha256",
    "read_checksums",
    "verify_checkpoint",
]

FORMAT = "cellformers-checkpoint"
FORMAT_VERSION = 1
#: The model class, hyperparameters, setup, genes, versions and training summary of a checkpoint (JSON).
CONFIG_FILE = "config.json"
#: The module's parameters and buffers (safetensors: no pickle).
WEIGHTS_FILE = "model.safetensors"
#: The gene vocabulary (:meth:`~cellformers.data.GeneVocab.to_json`).
VOCAB_FILE = "vocab.json"
#: The sha256 of the three other files, written last.
CHECKSUMS_FILE = "checksums.json"
#: Files a checkpoint directory holds; ``checksums.json`` lists the sha256 of the other three.
CHECKPOINT_FILES = (CONFIG_FILE, WEIGHTS_FILE, VOCAB_FILE, CHECKSUMS_FILE)
_CHECKSUMS_FORMAT = "cellformers-checksums"
# scvi-tools' registry keys (scvi.data._constants) read from and written to ``config.json``
SETUP_ARGS_KEY = "setup_args"
SETUP_METHOD_NAME = "setup_method_name"
MODEL_NAME_KEY = "model_name"
FIELD_REGISTRIES_KEY = "field_registries"
STATE_REGISTRY_KEY = "state_registry"
SCVI_UUID_KEY = "_scvi_uuid"
CATEGORICAL_MAPPING = "categorical_mapping"
ORIGINAL_KEY = "original_key"
# files that look like pickled weights: never read by the loader, named in its error message
_PICKLE_SUFFIXES = (".pt", ".pth", ".ckpt", ".bin", ".pkl", ".pickle")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file (read in chunks)."""
    import pooch

    return pooch.file_hash(str(path), alg="sha256")


def write_checksums(directory: Path, names: tuple[str, ...]) -> dict[str, str]:
    """Write ``checksums.json`` listing the sha256 of ``names`` in ``directory``; return the mapping."""
    sums = {name: file_sha256(directory / name) for name in names}
    payload = {"format": _CHECKSUMS_FORMAT, "algorithm": "sha256", "files": sums}
    _write_json(directory / CHECKSUMS_FILE, payload)
    return sums


def _write_json(path: Path, data: Any) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def read_checksums(directory: str | os.PathLike) -> dict[str, str]:
    """The ``{file name: sha256}`` mapping of a checkpoint directory's ``checksums.json``."""
    path = Path(directory) / CHECKSUMS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = f"Cannot read {path} ({type(err).__name__}: {err}); the checkpoint is incomplete or damaged."
        raise CheckpointError(msg) from err
    files = data.get("files") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get("format") != _CHECKSUMS_FORMAT
        or data.get("algorithm") != "sha256"
        or not isinstance(files, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items())
    ):
        msg = f"{path} is not a cellformers checksum list; the checkpoint is damaged."
        raise CheckpointError(msg)
    return dict(files)


def verify_checkpoint(directory: str | os.PathLike) -> dict[str, Any]:
    """Check that a checkpoint directory is complete and intact, and return its ``config.json``.

    Every file of the format must be present and match the sha256 recorded in ``checksums.json`` (written last by
    :meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`), so a truncated or partly copied checkpoint
    is refused before anything is read from it.

    Parameters
    ----------
    directory
        A directory written by :meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`.

    Returns
    -------
    The parsed ``config.json``.

    Raises
    ------
    CheckpointError
        A file is missing, the format is unknown or newer than this cellformers.
    ChecksumError
        A file does not match its recorded sha256.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> config = cf.pretrained.verify_checkpoint(path)
    >>> config["model_class"], config["genes"]["var_names"] == list(adata.var_names)
    ('cellformers.model.ScFormer', True)
    """
    directory = Path(directory)
    if not directory.is_dir():
        msg = f"{directory} is not a checkpoint directory."
        raise CheckpointError(msg)
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if missing:
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in _PICKLE_SUFFIXES)
        hint = (
            f" It holds {pickles}: pickled files are never loaded; convert them with one of the converters of "
            "`cellformers.pretrained` or save the model with `save_pretrained`."
            if pickles
            else ""
        )
        msg = (
            f"{directory} is not a complete cellformers checkpoint: {missing} missing (a checkpoint holds "
            f"{list(CHECKPOINT_FILES)}, written by `model.save_pretrained`).{hint}"
        )
        raise CheckpointError(msg)
    sums = read_checksums(directory)
    unlisted = [name for name in CHECKPOINT_FILES if name != CHECKSUMS_FILE and name not in sums]
    if unlisted:
        msg = f"{directory / CHECKSUMS_FILE} does not list {unlisted}; the checkpoint is damaged."
        raise CheckpointError(msg)
    for name in CHECKPOINT_FILES:
        if name == CHECKSUMS_FILE:
            continue
        digest = file_sha256(directory / name)
        if digest != sums[name]:
            msg = (
                f"{directory / name} does not match the sha256 recorded in {CHECKSUMS_FILE} ({sums[name][:12]}…, "
                f"found {digest[:12]}…): the checkpoint was modified or only partly written. Save or download it "
                "again."
            )
            raise ChecksumError(msg)
    try:
        config = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except ValueError as err:
        msg = f"{directory / CONFIG_FILE} is not valid JSON ({err})."
        raise CheckpointError(msg) from err
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        msg = f"{directory / CONFIG_FILE} is not a cellformers checkpoint configuration (format {FORMAT!r})."
        raise CheckpointError(msg)
    version = config.get("format_version")
    if not isinstance(version, int) or version < 1:
        msg = f"{directory / CONFIG_FILE} has an invalid `format_version` ({version!r})."
        raise CheckpointError(msg)
    if version > FORMAT_VERSION:
        msg = (
            f"{directory} was written by a newer cellformers (checkpoint format {version}, this version reads "
            f"{FORMAT_VERSION}); upgrade cellformers to load it."
        )
        raise CheckpointError(msg)
    return config
