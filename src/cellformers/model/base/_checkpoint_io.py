"""Save a model as a checkpoint directory and build a model from one (``save_pretrained`` / ``from_pretrained``)."""

from __future__ import annotations

import contextlib
import inspect
import logging
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scvi
import torch

from cellformers._utils._debris import temp_name
from cellformers._version import __version__
from cellformers.checkpoint._classes import class_name_for, resolve_model_class
from cellformers.checkpoint._codec import decode_json, encode_json
from cellformers.checkpoint._directory import fsync, recover_checkpoint, replace_directory
from cellformers.checkpoint._format import (
    CHECKPOINT_FILES,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    MODEL_NAME_KEY,
    SCVI_UUID_KEY,
    SETUP_ARGS_KEY,
    SETUP_METHOD_NAME,
    VOCAB_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    _write_json,
    verify_checkpoint,
    write_checksums,
)
from cellformers.checkpoint._sources import resolve_checkpoint
from cellformers.checkpoint._weights import read_weights, warn_non_finite, write_weights
from cellformers.data import GeneVocab

from ._checkpoint_adata import adata_for_checkpoint, check_setup, placeholder_adata, undo_setup_on_error
from ._checkpoint_checks import check_hyperparameters, check_shapes_before_allocating

if TYPE_CHECKING:
    import os

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = ["load_model", "load_pretrained", "save_pretrained"]

_VOCAB_ARG = "vocab"


# ---------------------------------------------------------------------------------------------------- loading
def load_model(
    cls: type | None,
    name_or_path_or_url: str | os.PathLike,
    adata: AnnData | None,
    *,
    sha256: str | None,
    accelerator: str,
    device: int | str,
    min_gene_coverage: float,
    setup_kwargs: dict | None,
):
    from anndata import AnnData
    from safetensors import SafetensorError
    from scvi.data import AnnDataManager
    from scvi.model._utils import parse_device_args

    if adata is not None and not isinstance(adata, AnnData):
        msg = f"`adata` must be an AnnData or None, got {type(adata).__name__}."
        raise TypeError(msg)
    if setup_kwargs and adata is None:
        msg = "`setup_kwargs` only applies when `adata` is passed."
        raise ValueError(msg)
    directory, origin = resolve_checkpoint(name_or_path_or_url, sha256=sha256)
    config = verify_checkpoint(directory)
    model_cls = resolve_model_class(config.get("model_class"), cls)
    if origin["card_class"] is not None and origin["card_class"] != config["model_class"]:
        msg = (
            f"The card {origin['name']!r} announces a {origin['card_class']} but its checkpoint holds a "
            f"{config['model_class']}; the card is wrong."
        )
        raise CheckpointError(msg)
    try:
        vocab = GeneVocab.from_json(directory / VOCAB_FILE)
    except (KeyError, TypeError, ValueError, AttributeError) as err:
        msg = (
            f"{directory / VOCAB_FILE} is not a valid gene vocabulary ({type(err).__name__}: {err}); the checkpoint "
            "is damaged or was edited."
        )
        raise CheckpointError(msg) from err
    try:
        registry = decode_json(config["registry"])
        registry.setdefault(SCVI_UUID_KEY, str(uuid.uuid4()))
        init_params = decode_json(config["init_params"])
        genes = config["genes"]
        var_names = [str(g) for g in genes["var_names"]]
        token_ids = np.asarray(genes["token_ids"], dtype=np.int64)
        summary = config.get("training_summary", {})
        setup_args = dict(registry[SETUP_ARGS_KEY])
        non_kwargs = dict(init_params["non_kwargs"])
        kwargs = {k: v for group in init_params["kwargs"].values() for k, v in group.items()}
        # a checkpoint written before an argument existed was made with the behaviour of its old default
        for name, value in getattr(model_cls, "_defaults_before", {}).items():
            non_kwargs.setdefault(name, value)
    except (KeyError, TypeError, ValueError) as err:
        msg = f"{directory / CONFIG_FILE} is incomplete or malformed ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    if token_ids.shape != (len(var_names),):
        msg = f"{directory / CONFIG_FILE}: `genes.token_ids` does not have one id per gene."
        raise CheckpointError(msg)
    if token_ids.size and (token_ids.min() < -1 or token_ids.max() >= vocab.n_genes):
        msg = (
            f"{directory / VOCAB_FILE} does not match {CONFIG_FILE}: it has {vocab.n_genes} genes, but the "
            f"checkpoint's genes have token ids from {token_ids.min()} to {token_ids.max()}. The vocabulary file "
            "was replaced or edited; the checkpoint is damaged."
        )
        raise CheckpointError(msg)
    if registry.get(SETUP_METHOD_NAME, "setup_anndata") != "setup_anndata":
        msg = f"{directory / CONFIG_FILE}: only checkpoints set up with `setup_anndata` can be loaded."
        raise CheckpointError(msg)
    if setup_kwargs:
        unknown = sorted(set(setup_kwargs) - set(setup_args))
        if unknown:
            msg = (
                f"`setup_kwargs` has {unknown}, which are not setup arguments of the checkpoint ({sorted(setup_args)})."
            )
            raise ValueError(msg)
        setup_args.update(setup_kwargs)
    vocab_arg = config.get("vocab_argument")
    if vocab_arg is not None:
        non_kwargs[vocab_arg] = vocab
    _, _, torch_device = parse_device_args(
        accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
    )
    params = {**non_kwargs, **kwargs}
    check_hyperparameters(model_cls, {k: v for k, v in params.items() if k != vocab_arg}, directory / CONFIG_FILE)
    check_shapes_before_allocating(
        model_cls,
        placeholder_adata(var_names, token_ids, registry, setup_args),
        registry,
        setup_args,
        params,
        directory / WEIGHTS_FILE,
        directory / CONFIG_FILE,
    )
    try:
        state = read_weights(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as err:
        msg = f"Cannot read the weights in {directory / WEIGHTS_FILE} ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    warn_non_finite(state, directory / WEIGHTS_FILE)

    if adata is None:
        data, copied = placeholder_adata(var_names, token_ids, registry, setup_args), True
    else:
        data, copied = adata_for_checkpoint(adata, var_names, token_ids, vocab, min_gene_coverage)
        check_setup(data, registry, setup_args)
    guard = contextlib.nullcontext() if copied else undo_setup_on_error(data)
    with guard, warnings.catch_warnings():
        # the placeholder and small query sets trip scvi-tools' "fewer than 3 cells" warning about training
        warnings.filterwarnings("ignore", message=r".*has fewer than \d+ cells", category=UserWarning)
        model_cls.setup_anndata(data, source_registry=registry, **setup_args)
        model = model_cls(data, **non_kwargs, **kwargs)
        try:
            model.module.load_state_dict(state, strict=True)
        except RuntimeError as err:
            msg = (
                f"The weights in {directory / WEIGHTS_FILE} do not fit the {model_cls.__name__} built from its "
                f"config (written by cellformers {config.get('cellformers_version')}): {err}"
            )
            raise CheckpointError(msg) from err
    model.is_trained_ = bool(summary.get("is_trained", True))
    model.pretrained_info_ = {
        "name": origin["name"],
        "source": origin["source"],
        "sha256": origin["sha256"],
        "directory": str(directory),
        "model_class": config["model_class"],
        "cellformers_version": config.get("cellformers_version"),
        "vocabulary": config.get("vocabulary"),
        "training_summary": summary,
        # `adata` had other genes: the model is attached to an aligned copy (tl.embed/tl.impute align the same way)
        "aligned_copy": bool(copied and adata is not None),
        "min_gene_coverage": float(min_gene_coverage),
    }
    model.to_device(torch_device)
    model.module.eval()
    if adata is None:
        # scvi-tools' "loaded without AnnData" state: the saved registry sets up the AnnData passed later
        uuid_ = data.uns.get(SCVI_UUID_KEY)
        type(model)._setup_adata_manager_store.pop(uuid_, None)
        type(model)._per_instance_manager_store.get(model.id, {}).pop(uuid_, None)
        model._adata = None
        model._adata_manager = None
        model.registry_ = registry
        model.summary_stats = AnnDataManager._get_summary_stats_from_registry(registry)
    label = origin["name"] or origin["source"]
    logger.info(f"loaded {model_cls.__name__} from {label}")
    return model


def load_pretrained(
    name_or_path_or_url: str | os.PathLike,
    adata: AnnData | None = None,
    *,
    sha256: str | None = None,
    accelerator: str = "auto",
    device: int | str = "auto",
    min_gene_coverage: float = 0.5,
    setup_kwargs: dict | None = None,
):
    """Load a checkpoint into the cellformers model class it names (see :meth:`PretrainedMixin.from_pretrained`).

    Same as ``cellformers.model.<Class>.from_pretrained(...)`` when the class is not known in advance; only the
    package's own model classes (:data:`MODEL_CLASSES`) can be loaded this way.

    Parameters
    ----------
    name_or_path_or_url
        Registered name, checkpoint directory or archive, or archive URL.
    adata
        Data to attach; see :meth:`PretrainedMixin.from_pretrained`.
    sha256
        sha256 of the archive (required for URLs).
    accelerator
        Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
    device
        Device index or ``"auto"``.
    min_gene_coverage
        Smallest fraction of the checkpoint's genes ``adata`` must contain.
    setup_kwargs
        Overrides of the saved ``setup_anndata`` arguments.

    Returns
    -------
    The model.

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
    >>> loaded = cf.pretrained.load_pretrained(path, adata)  # the class is read from the checkpoint
    >>> type(loaded).__name__
    'ScFormer'
    """
    return load_model(
        None,
        name_or_path_or_url,
        adata,
        sha256=sha256,
        accelerator=accelerator,
        device=device,
        min_gene_coverage=min_gene_coverage,
        setup_kwargs=setup_kwargs,
    )


# ---------------------------------------------------------------------------------------------------- saving
def training_summary(model) -> dict[str, Any]:
    history = getattr(model, "history_", None) or {}
    final: dict[str, float] = {}
    n_epochs = 0
    for key, frame in history.items():
        if not isinstance(frame, pd.DataFrame) or frame.shape[1] == 0:
            continue
        values = pd.to_numeric(frame.iloc[:, 0], errors="coerce").dropna()
        if len(values):
            final[str(key)] = float(values.iloc[-1])
        if str(key) == "train_loss_epoch":
            n_epochs = len(frame)
    if not n_epochs and history:
        n_epochs = max(len(f) for f in history.values() if isinstance(f, pd.DataFrame))
    return {"is_trained": bool(getattr(model, "is_trained_", False)), "n_epochs": int(n_epochs), "final": final}


def checkpoint_vocab(model) -> GeneVocab:
    vocab = getattr(model, "vocab", None)
    if vocab is None:
        vocab = model.init_params_.get("non_kwargs", {}).get(_VOCAB_ARG)
        if isinstance(vocab, dict):
            vocab = GeneVocab.from_dict(vocab)
    if not isinstance(vocab, GeneVocab):
        msg = f"{type(model).__name__} has no gene vocabulary (`model.vocab`); it cannot be saved as a checkpoint."
        raise CheckpointError(msg)
    return vocab


def checkpoint_config(model, vocab: GeneVocab) -> dict[str, Any]:
    init_params = getattr(model, "init_params_", None)
    if not isinstance(init_params, dict) or "non_kwargs" not in init_params:
        msg = f"{type(model).__name__} has no `init_params_`; set it as the last line of `__init__`."
        raise CheckpointError(msg)
    signature = inspect.signature(type(model).__init__).parameters
    vocab_arg = _VOCAB_ARG if _VOCAB_ARG in signature else None
    non_kwargs = {k: v for k, v in init_params["non_kwargs"].items() if k != vocab_arg}
    params = {"non_kwargs": non_kwargs, "kwargs": init_params.get("kwargs", {})}
    var_names = [str(g) for g in np.asarray(model.get_var_names())]
    module = model.module
    if hasattr(module, "input_columns") and hasattr(module, "input_gene_ids"):
        token_ids = np.full(len(var_names), -1, dtype=np.int64)
        token_ids[module.input_columns.cpu().numpy()] = module.input_gene_ids.cpu().numpy()
    else:
        token_ids = vocab.lookup(var_names)
    state = {
        k: {"shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
        for k, v in module.state_dict().items()
    }
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "model_class": class_name_for(type(model)),
        "cellformers_version": __version__,
        "scvi_tools_version": scvi.__version__,
        "torch_version": torch.__version__,
        "vocabulary": vocab.name,
        "vocab_argument": vocab_arg,
        "init_params": encode_json(params, "init_params_"),
        "setup_method_args": encode_json(
            {k: model.registry_.get(k) for k in (MODEL_NAME_KEY, SETUP_METHOD_NAME, SETUP_ARGS_KEY)},
            "setup_method_args",
        ),
        # scvi-tools' random AnnData id would make two identical trainings hash differently; loading assigns one
        "registry": encode_json({k: v for k, v in model.registry_.items() if k != SCVI_UUID_KEY}, "registry_"),
        "genes": {"var_names": var_names, "token_ids": token_ids.tolist()},
        "training_summary": training_summary(model),
        "n_parameters": int(sum(p.numel() for p in module.parameters())),
        "module_state": state,
    }


def save_pretrained(model, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write a model as a checkpoint directory (``config.json``, ``model.safetensors``, ``vocab.json``).

    Everything is written into a temporary folder beside ``path`` and renamed into place at the end, so an
    interrupted save leaves no checkpoint at ``path`` (and, with ``overwrite=True``, the previous one intact).
    ``checksums.json`` lists the sha256 of each file (also logged); :func:`~cellformers.pretrained.pack_checkpoint`
    makes the single archive a registry card points at. ``model.save_pretrained(path)`` calls this function.

    Parameters
    ----------
    model
        A cellformers model: a trained scvi-tools model with a :class:`~cellformers.module.GeneTokenModule`, a
        ``vocab`` and ``init_params_``.
    path
        Directory to create.
    overwrite
        Replace an existing checkpoint at ``path``. A directory that is not a cellformers checkpoint is never
        replaced.

    Returns
    -------
    ``path``.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = cf.pretrained.save_pretrained(model, Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> sorted(p.name for p in path.iterdir())
    ['checksums.json', 'config.json', 'model.safetensors', 'vocab.json']
    >>> loaded = cf.model.ScFormer.from_pretrained(path, adata)
    >>> np.allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    True
    """
    path = Path(path)
    recover_checkpoint(path)
    if path.exists():
        if not overwrite:
            msg = f"{path} already exists; pass `overwrite=True` to replace it."
            raise CheckpointError(msg)
        if not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).is_file()):
            msg = f"{path} exists and is not a cellformers checkpoint; it is not replaced. Choose another path."
            raise CheckpointError(msg)
    vocab = checkpoint_vocab(model)
    config = checkpoint_config(model, vocab)  # fails on non-JSON-able parameters before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name, "tmp")
    tmp.mkdir()
    try:
        write_weights(model.module, tmp / WEIGHTS_FILE)
        fsync(tmp / WEIGHTS_FILE)
        vocab.to_json(tmp / VOCAB_FILE)
        fsync(tmp / VOCAB_FILE)
        _write_json(tmp / CONFIG_FILE, config)
        sums = write_checksums(tmp, tuple(n for n in CHECKPOINT_FILES if n != CHECKSUMS_FILE))
        replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"saved {type(model).__name__} checkpoint to {path}")
    for name, digest in sums.items():
        logger.debug(f"  {name}: sha256 {digest}")
    return path


def restore_defaults_before(model, saved: Any) -> None:
    """Give a model loaded from scvi-tools' ``model.pt`` the old defaults of arguments its saved call lacks.

    ``saved`` is what the file holds; ``type(model)._defaults_before`` names the arguments added with a default that
    changed the behaviour, and the value that gives the behaviour of models saved before. scvi-tools has already
    built the model with today's defaults, so it is constructed again with its saved arguments plus the old values
    (what :func:`load_model` passes before construction) and the loaded weights move into the new module.
    """
    try:
        saved_args = saved["attr_dict"]["init_params_"]["non_kwargs"]
    except (KeyError, TypeError):
        return
    missing = {k: v for k, v in type(model)._defaults_before.items() if k not in saved_args}
    if not missing:
        return
    params = model.init_params_
    kwargs = {k: v for group in params.get("kwargs", {}).values() for k, v in group.items()}
    rebuilt = type(model)(model.adata, **{**params["non_kwargs"], **missing}, **kwargs)
    rebuilt.module.load_state_dict(model.module.state_dict())
    model.module = rebuilt.module.to(model.device).eval()
    model.init_params_ = rebuilt.init_params_
