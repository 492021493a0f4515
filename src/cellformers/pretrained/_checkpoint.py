"""``save_pretrained`` / ``from_pretrained``: portable, pickle-free checkpoints of cellformers models."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import pickle
import shutil
import uuid
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import torch

from cellformers._constants import VAR_KEYS
from cellformers._exceptions import ChecksumError, GeneMappingError, MissingKeyError, UntrustedCheckpointError
from cellformers._settings import settings
from cellformers._utils._debris import clean_stale, stale_entries, temp_name

from ._archive import _extract, archive_suffix
from ._format import (
    CHECKPOINT_FILES,
    CHECKSUMS_FILE,
    CONFIG_FILE,
    FORMAT,
    FORMAT_VERSION,
    VOCAB_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    _write_json,
    verify_checkpoint,
    write_checksums,
)

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

__all__ = [
    "MODEL_CLASSES",
    "PretrainedMixin",
    "load_pretrained",
    "resolve_checkpoint",
    "safe_torch_load",
    "save_pretrained",
]

#: The package's model classes a checkpoint may name (``"cellformers.model.<name>"``). They are looked up by name in
#: :mod:`cellformers.model`; nothing named in a checkpoint is ever imported.
MODEL_CLASSES = ("XTrimoGene", "ScFormer", "ScPaLM")
_MODEL_PREFIX = "cellformers.model."
_URL_SCHEMES = ("http", "https", "ftp", "file")
# scvi-tools registry keys (scvi.data._constants)
_SETUP_ARGS_KEY = "setup_args"
_SETUP_METHOD_NAME = "setup_method_name"
_MODEL_NAME_KEY = "model_name"
_FIELD_REGISTRIES_KEY = "field_registries"
_STATE_REGISTRY_KEY = "state_registry"
_SCVI_UUID_KEY = "_scvi_uuid"
_CATEGORICAL_MAPPING = "categorical_mapping"
_ORIGINAL_KEY = "original_key"
_VOCAB_ARG = "vocab"


# ---------------------------------------------------------------------------------------------------- JSON values
def _encode(value: Any, where: str) -> Any:
    """A JSON-able form of hyperparameters and registries: arrays and tuples are tagged so they come back as such."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, int | float):
        return value
    if isinstance(value, np.ndarray):
        if value.dtype.kind not in "biufUO":
            msg = f"{where}: arrays of dtype {value.dtype} cannot be stored in {CONFIG_FILE}."
            raise CheckpointError(msg)
        dtype = "object" if value.dtype.kind in "UO" else value.dtype.str
        return {"__ndarray__": [_encode(v, where) for v in value.tolist()], "dtype": dtype, "shape": list(value.shape)}
    if isinstance(value, pd.Index):
        return _encode(value.to_numpy(), where)
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"{where}: dictionary keys must be strings to be stored in {CONFIG_FILE}, got {k!r}."
                raise CheckpointError(msg)
            if k.startswith("__") and k.endswith("__"):
                msg = f"{where}: the key {k!r} is reserved in {CONFIG_FILE}."
                raise CheckpointError(msg)
            out[k] = _encode(v, f"{where}[{k!r}]")
        return out
    msg = (
        f"{where} is a {type(value).__name__}, which cannot be stored in {CONFIG_FILE}; checkpoints keep "
        "hyperparameters and setup arguments as numbers, strings, lists, dicts and arrays only."
    )
    raise CheckpointError(msg)


def _decode(value: Any) -> Any:
    """Inverse of :func:`_encode`; only builds plain Python values, tuples and NumPy arrays."""
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(_decode(v) for v in value["__tuple__"])
        if set(value) == {"__ndarray__", "dtype", "shape"}:
            items = _decode(value["__ndarray__"])
            dtype = np.dtype(object) if value["dtype"] == "object" else np.dtype(value["dtype"])
            if dtype.kind not in "biufO":
                msg = f"unsupported array dtype {value['dtype']!r} in {CONFIG_FILE}"
                raise CheckpointError(msg)
            if dtype.kind == "O":
                arr = np.empty(len(items), dtype=object)
                arr[:] = items
                return arr.reshape(value["shape"])
            return np.asarray(items, dtype=dtype).reshape(value["shape"])
        return {k: _decode(v) for k, v in value.items()}
    return value


# ---------------------------------------------------------------------------------------------------- classes
def _qualified_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _package_model_class(name: str) -> type | None:
    """The package's model class called ``name`` (``"cellformers.model.XTrimoGene"``), or None."""
    if not isinstance(name, str) or not name.startswith(_MODEL_PREFIX):
        return None
    short = name[len(_MODEL_PREFIX) :]
    if short not in MODEL_CLASSES:
        return None
    from cellformers import model as package_models

    return getattr(package_models, short, None)


def _class_name_for(cls: type) -> str:
    """Name written to ``config.json``: ``cellformers.model.<Name>`` for the package's models."""
    if cls.__name__ in MODEL_CLASSES and _package_model_class(_MODEL_PREFIX + cls.__name__) is cls:
        return _MODEL_PREFIX + cls.__name__
    return _qualified_name(cls)


def _resolve_class(name: Any, cls: type | None) -> type:
    """The class to build: one of the package's models, or ``cls`` itself when the checkpoint names exactly it.

    Nothing is imported from the name: either it is in :data:`MODEL_CLASSES` (looked up in ``cellformers.model``),
    or it equals the qualified name of the class the caller chose.
    """
    trusted = _package_model_class(name)
    if trusted is None and cls is not None and name == _qualified_name(cls):
        trusted = cls
    if trusted is None:
        allowed = ", ".join(_MODEL_PREFIX + n for n in MODEL_CLASSES)
        msg = (
            f"The checkpoint names the model class {name!r}, which is not one of cellformers' models ({allowed}); "
            "it is refused, because loading it would run code the checkpoint chooses. If it is your own subclass "
            "and you trust the checkpoint, call `from_pretrained` on that class."
        )
        raise UntrustedCheckpointError(msg)
    if cls is None or issubclass(trusted, cls):
        return trusted
    if issubclass(cls, trusted):
        return cls
    msg = (
        f"The checkpoint holds a {name} model, not a {cls.__name__}; load it with "
        f"`{trusted.__name__}.from_pretrained(...)` or `cellformers.pretrained.load_pretrained(...)`."
    )
    raise CheckpointError(msg)


# ---------------------------------------------------------------------------------------------------- sources
def _is_url(source: str) -> bool:
    return urlparse(source).scheme in _URL_SCHEMES


def resolve_checkpoint(name_or_path_or_url: str | os.PathLike, *, sha256: str | None = None) -> tuple[Path, dict]:
    """The verified checkpoint directory of a registered name, a path or a URL, fetching and extracting as needed.

    Parameters
    ----------
    name_or_path_or_url
        A name registered in :data:`~cellformers.pretrained.REGISTRY`; a checkpoint directory or archive
        (``.tar``, ``.tar.gz``, ``.zip``) on disk; or an ``https``/``http``/``ftp``/``file`` URL of an archive.
    sha256
        sha256 of the archive. Required for URLs (unverified downloads are refused), optional for archive paths,
        and not used for registered names (their card pins it) or directories (their ``checksums.json`` does).

    Returns
    -------
    The checkpoint directory and a description of where it came from (``name``, ``source``, ``sha256``,
    ``model_class`` of the card).

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)  # a tiny model
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> archive = cf.pretrained.pack_checkpoint(path)
    >>> card = cf.pretrained.PretrainedCard.from_archive(archive, name="scformer-tiny", license="CC-BY-4.0")
    >>> cf.pretrained.register_pretrained(card)
    >>> directory, info = cf.pretrained.resolve_checkpoint("scformer-tiny")
    >>> info["name"], info["card_class"]
    ('scformer-tiny', 'cellformers.model.ScFormer')
    >>> directory, info = cf.pretrained.resolve_checkpoint(path)  # a directory is used in place
    >>> directory == path
    True
    """
    from cellformers._settings import settings
    from cellformers.data._references import fetch_verified

    from ._registry import REGISTRY, fetch_pretrained

    source = os.fspath(name_or_path_or_url)
    if sha256 is not None:
        sha256 = str(sha256).lower()
        if len(sha256) != 64 or any(c not in "0123456789abcdef" for c in sha256):
            msg = f"`sha256` must be 64 hex digits, got {sha256!r}."
            raise ValueError(msg)
    if isinstance(name_or_path_or_url, str) and source in REGISTRY:
        card = REGISTRY[source]
        archive = fetch_pretrained(source)
        directory, _ = _extract(archive, sha256=card.sha256)
        return directory, {"name": card.name, "source": card.url, "sha256": card.sha256, "card_class": card.model_class}
    if _is_url(source):
        if sha256 is None:
            msg = (
                f"Refusing to download {source} without a hash: pass `sha256=` (the sha256 its host publishes) or "
                "register a card with `cellformers.pretrained.register_pretrained`."
            )
            raise UntrustedCheckpointError(msg)
        parsed = urlparse(source)
        basename = Path(parsed.path).name
        if archive_suffix(basename) is None:
            msg = f"{source} must point at a checkpoint archive (.tar, .tar.gz, .tgz or .zip, from `pack_checkpoint`)."
            raise CheckpointError(msg)
        if parsed.scheme == "file":
            from ._registry import _local_path

            archive = _local_path(source)
        else:
            archive = fetch_verified(
                source,
                sha256=sha256,
                fname=f"{sha256[:16]}-{basename}",
                folder=settings.cache_dir / "pretrained" / "urls",
                what=f"checkpoint {basename!r}",
            )
        directory, _ = _extract(archive, sha256=sha256)
        return directory, {"name": None, "source": source, "sha256": sha256, "card_class": None}
    path = Path(source).expanduser()
    _recover_checkpoint(path)
    if path.is_dir():
        if sha256 is not None:
            msg = "`sha256` applies to archive files; a checkpoint directory is checked against its checksums.json."
            raise ValueError(msg)
        return path, {"name": None, "source": str(path), "sha256": None, "card_class": None}
    if path.is_file():
        directory, digest = _extract(path, sha256=sha256)
        return directory, {"name": None, "source": str(path), "sha256": digest, "card_class": None}
    known = ", ".join(sorted(REGISTRY)) or "none"
    msg = (
        f"{source!r} is neither a registered pretrained model (registered: {known}) nor an existing checkpoint "
        "directory or archive, nor a URL. See `cellformers.pretrained.list_pretrained()`."
    )
    raise CheckpointError(msg)


# ---------------------------------------------------------------------------------------------------- data
def _registry_categoricals(registry: dict, setup_args: dict) -> list[tuple[str, str | None, np.ndarray]]:
    """``(registry key, obs column or None for a default field, categories)`` of each categorical field."""
    out = []
    for key, field in registry.get(_FIELD_REGISTRIES_KEY, {}).items():
        state = field.get(_STATE_REGISTRY_KEY, {})
        if _CATEGORICAL_MAPPING not in state:
            continue
        mapping = np.asarray(state[_CATEGORICAL_MAPPING])
        column = setup_args.get(f"{key}_key", state.get(_ORIGINAL_KEY))
        if column is None or str(column) == f"_scvi_{key}":
            column = None
        out.append((key, column, mapping))
    return out


def _check_setup(adata: AnnData, registry: dict, setup_args: dict) -> None:
    """Fail before anything is written when ``adata`` lacks what the checkpoint's setup needs."""
    layer = setup_args.get("layer")
    if layer is not None and layer not in adata.layers:
        msg = (
            f"The checkpoint was trained on `adata.layers[{layer!r}]`, which this AnnData does not have (layers: "
            f"{list(adata.layers) or 'none'}). Add the raw counts there, or pass `setup_kwargs={{'layer': None}}` "
            "(or another layer) to `from_pretrained`."
        )
        raise MissingKeyError(msg)
    for key, column, mapping in _registry_categoricals(registry, setup_args):
        if column is None:
            continue
        shown = mapping[:10].tolist()
        if column not in adata.obs.columns:
            msg = (
                f"The checkpoint's {key!r} covariate comes from `adata.obs[{column!r}]`, which this AnnData does not "
                f"have. Add that column with values among the checkpoint's categories ({shown}"
                f"{' …' if mapping.size > 10 else ''}), or pass `setup_kwargs={{'{key}_key': '<column>'}}`."
            )
            raise MissingKeyError(msg)
        values = pd.Index(pd.unique(adata.obs[column].astype(object)))
        unknown = values.difference(pd.Index(mapping, dtype=object))
        if unknown.size:
            msg = (
                f"`adata.obs[{column!r}]` holds categories the checkpoint does not know ({unknown[:10].tolist()}); "
                f"the model's {key!r} covariate has a fixed set of categories: {shown}"
                f"{' …' if mapping.size > 10 else ''}. Map the cells to known categories first."
            )
            raise CheckpointError(msg)


def _placeholder_adata(var_names: list[str], token_ids: np.ndarray, registry: dict, setup_args: dict) -> AnnData:
    """A two-cell AnnData with the checkpoint's genes and covariates, used to build a model without data."""
    from anndata import AnnData

    n_obs = 2
    X = np.ones((n_obs, len(var_names)), dtype=np.float32)
    obs = pd.DataFrame(index=[f"placeholder_{i}" for i in range(n_obs)])
    for _key, column, mapping in _registry_categoricals(registry, setup_args):
        if column is not None and mapping.size:
            obs[column] = [mapping[0]] * n_obs
    var = pd.DataFrame(index=pd.Index(var_names, dtype=object))
    var[VAR_KEYS.TOKEN_ID] = np.asarray(token_ids, dtype=np.int64)
    layer = setup_args.get("layer")
    return AnnData(X=X, obs=obs, var=var, layers={layer: X.copy()} if layer is not None else None)


def _adata_for_checkpoint(
    adata: AnnData, var_names: list[str], token_ids: np.ndarray, vocab: GeneVocab, min_gene_coverage: float
) -> tuple[AnnData, bool]:
    """``adata`` itself when its genes and token ids are the checkpoint's, else an aligned copy (and True)."""
    from cellformers.pp import align_to_reference

    if adata.n_vars == len(var_names) and np.array_equal(np.asarray(adata.var_names.astype(str)), var_names):
        if VAR_KEYS.TOKEN_ID in adata.var.columns:
            current = adata.var[VAR_KEYS.TOKEN_ID].to_numpy(dtype=np.int64)
        else:
            current = vocab.lookup(adata.var_names)
        if np.array_equal(current, token_ids):
            if adata.is_view:
                msg = "`adata` is a view; pass `adata.copy()` (the model's setup writes into it)."
                raise ValueError(msg)
            return adata, False
        logger.info("the genes match the checkpoint but map to other token ids; using a copy with the checkpoint's")
    try:
        aligned = align_to_reference(adata, var_names, min_coverage=min_gene_coverage)
    except GeneMappingError as err:
        msg = f"{err} (`min_gene_coverage` of `from_pretrained`)"
        raise GeneMappingError(msg) from err
    aligned.var[VAR_KEYS.TOKEN_ID] = np.asarray(token_ids, dtype=np.int64)
    n_common = int(pd.Index(var_names).isin(np.asarray(adata.var_names).astype(str)).sum())
    logger.info(
        f"the data's genes differ from the checkpoint's: the model is attached to an aligned copy, `model.adata` "
        f"(same cells, the checkpoint's {len(var_names)} genes, {n_common} of them in `adata`, the others "
        "zero-filled); `adata` is not modified. `cellformers.tl.embed(adata, model)` and `tl.impute` take `adata` "
        "as it is and align it the same way"
    )
    return aligned, True


@contextlib.contextmanager
def _undo_setup_on_error(adata: AnnData) -> Iterator[None]:
    """Remove the ``obs`` columns and ``uns`` entries a failed load added to the caller's AnnData."""
    obs_before = set(adata.obs.columns)
    uns_before = {k: adata.uns[k] for k in adata.uns if k in (_SCVI_UUID_KEY, "_scvi_manager_uuid")}
    uns_keys = set(adata.uns.keys())
    try:
        yield
    except BaseException:
        added = [c for c in adata.obs.columns if c not in obs_before]
        if added:
            adata.obs.drop(columns=added, inplace=True)
        for k in [k for k in adata.uns if k not in uns_keys]:
            del adata.uns[k]
        for k, v in uns_before.items():
            adata.uns[k] = v
        raise


# ---------------------------------------------------------------------------------------------------- weights
_ALIASES_KEY = "cellformers_aliases"


def _write_weights(module: torch.nn.Module, path: Path) -> None:
    """The module's state dict (parameters and persistent buffers) as safetensors.

    Entries that are the very same tensor (tied weights) are stored once and listed in the file's metadata; every
    other tensor is written as its own contiguous copy, so views into a larger storage are saved too.
    """
    import json

    from safetensors.torch import save_file

    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple, str] = {}
    for name, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor):
            msg = f"state dict entry {name!r} is a {type(value).__name__}, not a tensor; it cannot be saved."
            raise CheckpointError(msg)
        value = value.detach()
        if value.numel():
            key = (
                value.device,
                value.untyped_storage().data_ptr(),
                value.storage_offset(),
                tuple(value.shape),
                value.stride(),
                value.dtype,
            )
            if key in seen:
                aliases[name] = seen[key]
                continue
            seen[key] = name
        tensors[name] = value.to("cpu").clone(memory_format=torch.contiguous_format)
    save_file(tensors, str(path), metadata={"format": "pt", "cellformers": FORMAT, _ALIASES_KEY: json.dumps(aliases)})


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`_write_weights` (on the CPU)."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
    state = load_file(str(path), device="cpu")
    for name, target in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        if target not in state:
            msg = f"{path}: {name!r} is stored as an alias of {target!r}, which the file does not hold."
            raise CheckpointError(msg)
        state[name] = state[target]
    return state


# ---------------------------------------------------------------------------------------------------- config checks
_SKIPPED_PARAMETERS = ("self", "adata", "gene_token_ids", "n_tokens", "n_output_genes")
_MAX_INT = 1 << 31


def _signature_parameters(fn) -> tuple[dict[str, inspect.Parameter], bool]:
    """Named parameters of ``fn`` (without the data arguments) and whether it takes ``**kwargs``."""
    params = inspect.signature(fn).parameters
    named = {
        k: p
        for k, p in params.items()
        if k not in _SKIPPED_PARAMETERS and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
    }
    return named, any(p.kind == p.VAR_KEYWORD for p in params.values())


def _annotation_allows(value: Any, annotation: Any, namespace: dict) -> bool | None:
    """Whether ``value`` fits a (string) annotation: True, False, or None when the annotation is not understood."""
    import ast
    import typing

    if isinstance(annotation, str):
        try:
            node = ast.parse(annotation, mode="eval").body
        except SyntaxError:
            return None
    else:
        return None

    def fits(node) -> bool | None:
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            results = [fits(node.left), fits(node.right)]
            if any(r is True for r in results):
                return True
            return None if any(r is None for r in results) else False
        if isinstance(node, ast.Constant) and node.value is None:
            return value is None
        if isinstance(node, ast.Name):
            basic = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "bool": isinstance(value, bool),
                "str": isinstance(value, str),
                "dict": isinstance(value, dict),
                "None": value is None,
            }
            if node.id in basic:
                return basic[node.id]
            alias = namespace.get(node.id)  # e.g. `Pooling = Literal[...]` in the module
            if typing.get_origin(alias) is typing.Literal:
                return value in typing.get_args(alias)
            return None
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            if node.value.id == "Literal":
                items = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
                options = [i.value for i in items if isinstance(i, ast.Constant)]
                return len(options) == len(items) and value in options and type(value) in {type(o) for o in options}
            if node.value.id in ("Sequence", "list", "tuple"):
                return isinstance(value, list | tuple | np.ndarray) or None
        return None

    return fits(node)


def _check_hyperparameters(model_cls: type, params: dict[str, Any], where: Path) -> None:
    """Refuse hyperparameters of a checkpoint that the model's (or module's) constructor would choke on.

    Unknown keywords, values of the wrong type (``"16"`` for an ``int``, ``1.5`` for a ``Literal``), negative
    sizes and non-finite numbers are refused with :class:`CheckpointError` naming the field.
    """
    named, open_kwargs = _signature_parameters(model_cls.__init__)
    module_cls = getattr(model_cls, "_module_cls", None)
    if module_cls is not None and open_kwargs:
        module_named, open_kwargs = _signature_parameters(module_cls.__init__)
        named = {**module_named, **named}
        namespace = {**vars(inspect.getmodule(module_cls)), **vars(inspect.getmodule(model_cls))}
    else:
        namespace = dict(vars(inspect.getmodule(model_cls)))
    for name, value in params.items():
        field = f"{where}: `init_params` field {name!r}"
        param = named.get(name)
        if param is None:
            if open_kwargs:
                continue
            msg = (
                f"{field} is not a hyperparameter of {model_cls.__name__} (known: {sorted(named)}); the checkpoint "
                "was written by another version or edited."
            )
            raise CheckpointError(msg)
        allowed = _annotation_allows(value, param.annotation, namespace)
        if allowed is None and param.default is not inspect.Parameter.empty and param.default is not None:
            default = param.default
            allowed = (
                isinstance(value, bool)
                if isinstance(default, bool)
                else isinstance(value, type(default)) and not isinstance(value, bool)
                if isinstance(default, int | str)
                else None
            )
        if allowed is False:
            msg = f"{field} has the invalid value {value!r} (expected {param.annotation})."
            raise CheckpointError(msg)
        numbers = [value] if isinstance(value, int | float) and not isinstance(value, bool) else []
        if isinstance(value, list | tuple):
            numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
        default = param.default if isinstance(param.default, int | float) else 0
        for v in numbers:
            # sizes and counts are integers: a negative one where the default is not is corrupt; floats (values such
            # as scGPT's `cls_value=-2`) may be negative and are checked by the constructors themselves
            if not np.isfinite(v) or abs(v) >= _MAX_INT or (v < 0 and default >= 0 and isinstance(v, int)):
                msg = f"{field} has the out-of-range value {value!r}; it must be finite (and non-negative for a size)."
                raise CheckpointError(msg)


def _weights_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """``{name: (shape, dtype)}`` of a safetensors file from its header alone (aliases resolved), without reading it."""
    import json

    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        header = {k: (list(fh.get_slice(k).get_shape()), str(fh.get_slice(k).get_dtype())) for k in fh.keys()}
    for name, target in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        if target in header:
            header[name] = header[target]
    return header


class _Skeleton(Exception):  # not an error: carries the module built on the meta device
    def __init__(self, module: torch.nn.Module):
        super().__init__("module built on the meta device")
        self.module = module


def _check_shapes_before_allocating(
    model_cls: type, placeholder: AnnData, registry: dict, setup_args: dict, params: dict, weights: Path, where: Path
) -> None:
    """Build the model on PyTorch's ``meta`` device (no memory) and compare its shapes with the weights' header.

    A config whose hyperparameters describe a larger model than the weights (``d_model=65536``) is refused here,
    before any parameter is allocated; a config that does not build at all is refused naming the error.
    """
    from safetensors import SafetensorError

    try:
        header = _weights_header(weights)
    except (SafetensorError, OSError, ValueError) as err:
        msg = f"Cannot read the weights in {weights} ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    module_cls = getattr(model_cls, "_module_cls", None)

    def build_on_meta(*args, **kwargs):
        # the module alone, on the meta device; the model's data-dependent initialisation is skipped
        with torch.device("meta"):
            raise _Skeleton(module_cls(*args, **kwargs))

    skeleton_cls = model_cls if module_cls is None else type(model_cls.__name__, (model_cls,), {})
    if module_cls is not None:
        skeleton_cls._module_cls = staticmethod(build_on_meta)
    try:
        with warnings.catch_warnings(), torch.device("meta" if module_cls is None else "cpu"):
            warnings.simplefilter("ignore")
            skeleton_cls.setup_anndata(placeholder, source_registry=registry, **setup_args)
            module = skeleton_cls(placeholder, **params).module
    except _Skeleton as built:
        module = built.module
    except (CheckpointError, UntrustedCheckpointError):
        raise
    except Exception as err:  # whatever the constructor raises on a hostile config: only the checkpoint is used here
        msg = (
            f"{where}: the hyperparameters in `init_params` do not build a {model_cls.__name__} "
            f"({type(err).__name__}: {err})."
        )
        raise CheckpointError(msg) from err
    finally:  # forget the placeholder's registration (scvi-tools keeps one per AnnData id)
        uuid_ = placeholder.uns.get(_SCVI_UUID_KEY)
        model_cls._setup_adata_manager_store.pop(uuid_, None)
        for managers in model_cls._per_instance_manager_store.values():
            managers.pop(uuid_, None)
    expected = {k: list(v.shape) for k, v in module.state_dict().items()}
    missing = sorted(set(expected) - set(header))
    unexpected = sorted(set(header) - set(expected))
    wrong = [
        f"{k}: {header[k][0]} in the weights, {v} from the config"
        for k, v in expected.items()
        if k in header and header[k][0] != v
    ]
    if missing or unexpected or wrong:
        msg = (
            f"The weights in {weights} do not fit the {model_cls.__name__} its config describes: "
            f"{len(missing)} missing ({missing[:5]}), {len(unexpected)} unexpected ({unexpected[:5]}), "
            f"{len(wrong)} of another shape ({wrong[:3]}). The config or the weights were edited."
        )
        raise CheckpointError(msg)


def _warn_non_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    """Warn when weights hold NaN or infinite values (the model's outputs would be NaN)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        msg = (
            f"{weights} holds NaN or infinite values in {len(bad)} tensors ({bad[:5]}{' …' if len(bad) > 5 else ''}); "
            "the model's outputs will be NaN. The training diverged or the file was damaged: use another checkpoint."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)


# ---------------------------------------------------------------------------------------------------- loading
def _load(
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

    from cellformers.data import GeneVocab

    if adata is not None and not isinstance(adata, AnnData):
        msg = f"`adata` must be an AnnData or None, got {type(adata).__name__}."
        raise TypeError(msg)
    if setup_kwargs and adata is None:
        msg = "`setup_kwargs` only applies when `adata` is passed."
        raise ValueError(msg)
    directory, origin = resolve_checkpoint(name_or_path_or_url, sha256=sha256)
    config = verify_checkpoint(directory)
    model_cls = _resolve_class(config.get("model_class"), cls)
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
        registry = _decode(config["registry"])
        registry.setdefault(_SCVI_UUID_KEY, str(uuid.uuid4()))
        init_params = _decode(config["init_params"])
        genes = config["genes"]
        var_names = [str(g) for g in genes["var_names"]]
        token_ids = np.asarray(genes["token_ids"], dtype=np.int64)
        summary = config.get("training_summary", {})
        setup_args = dict(registry[_SETUP_ARGS_KEY])
        non_kwargs = dict(init_params["non_kwargs"])
        kwargs = {k: v for group in init_params["kwargs"].values() for k, v in group.items()}
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
    if registry.get(_SETUP_METHOD_NAME, "setup_anndata") != "setup_anndata":
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
    _check_hyperparameters(model_cls, {k: v for k, v in params.items() if k != vocab_arg}, directory / CONFIG_FILE)
    _check_shapes_before_allocating(
        model_cls,
        _placeholder_adata(var_names, token_ids, registry, setup_args),
        registry,
        setup_args,
        params,
        directory / WEIGHTS_FILE,
        directory / CONFIG_FILE,
    )
    try:
        state = _read_weights(directory / WEIGHTS_FILE)
    except (SafetensorError, OSError, ValueError) as err:
        msg = f"Cannot read the weights in {directory / WEIGHTS_FILE} ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    _warn_non_finite(state, directory / WEIGHTS_FILE)

    if adata is None:
        data, copied = _placeholder_adata(var_names, token_ids, registry, setup_args), True
    else:
        data, copied = _adata_for_checkpoint(adata, var_names, token_ids, vocab, min_gene_coverage)
        _check_setup(data, registry, setup_args)
    guard = contextlib.nullcontext() if copied else _undo_setup_on_error(data)
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
        uuid_ = data.uns.get(_SCVI_UUID_KEY)
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
    >>> model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)  # a tiny model
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> loaded = cf.pretrained.load_pretrained(path, adata)  # the class is read from the checkpoint
    >>> type(loaded).__name__
    'ScFormer'
    """
    return _load(
        None,
        name_or_path_or_url,
        adata,
        sha256=sha256,
        accelerator=accelerator,
        device=device,
        min_gene_coverage=min_gene_coverage,
        setup_kwargs=setup_kwargs,
    )


def safe_torch_load(path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Any:
    """Read a pickled PyTorch file (``.pt``, ``.pth``, ``.ckpt``) without running code from it.

    ``torch.load(weights_only=True)``: only tensors and plain containers are unpickled; anything else (classes,
    functions, ``__reduce__`` payloads) is refused. For converters of public checkpoints distributed as pickles;
    cellformers' own checkpoints hold no pickle at all.

    Parameters
    ----------
    path
        The file.
    map_location
        Device the tensors are loaded on.

    Returns
    -------
    The unpickled tensors and containers (usually a state dict).

    Raises
    ------
    UntrustedCheckpointError
        The file holds objects other than tensors and plain containers.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> import cellformers as cf
    >>> path = Path(tempfile.mkdtemp()) / "weights.pt"
    >>> torch.save({"linear.weight": torch.ones(2, 3)}, path)
    >>> state = cf.pretrained.safe_torch_load(path)
    >>> state["linear.weight"].shape
    torch.Size([2, 3])
    """
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        msg = (
            f"{path} holds pickled objects other than tensors and plain containers; it is not unpickled, because "
            f"that could run arbitrary code. Re-save its state dict alone (`torch.save(model.state_dict(), ...)`) "
            f"from a trusted environment. Details: {err}"
        )
        raise UntrustedCheckpointError(msg) from err


# ---------------------------------------------------------------------------------------------------- saving
def _fsync(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _training_summary(model) -> dict[str, Any]:
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


def _replace_directory(tmp: Path, path: Path) -> None:
    """Move the finished ``tmp`` directory to ``path``, replacing a previous checkpoint there.

    The previous checkpoint is renamed to ``.<name>.old-<pid>-<random>`` first; a process killed between the two
    renames leaves it there, and the next :func:`save_pretrained` or load of ``path`` puts it back
    (:func:`_recover_checkpoint`).
    """
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.with_name(temp_name(path.name, "old"))
    os.replace(path, old)
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _recover_checkpoint(path: Path) -> None:
    """Put back a checkpoint an interrupted ``save_pretrained(overwrite=True)`` left renamed, and clean debris.

    When ``path`` is missing and a killed writer left the previous checkpoint as ``.<name>.old-<pid>-<random>``,
    the newest of those that verifies against its ``checksums.json`` is renamed back to ``path``. Then the stale
    temporary folders of ``path`` (``.<name>.tmp-*``, ``.<name>.old-*`` of processes that are gone, or older than an
    hour) are removed.
    """
    parent = path.parent
    if not parent.is_dir():
        return
    if not path.exists():
        olds = sorted(stale_entries(parent, f".{path.name}.old-"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in olds:
            try:
                verify_checkpoint(old)
            except (CheckpointError, ChecksumError):
                continue
            try:
                os.replace(old, path)
            except OSError:  # another process restored it (or saved a new one) meanwhile
                break
            logger.warning(f"restored the checkpoint {path}, left renamed by an interrupted `save_pretrained`")
            break
    for kind in ("tmp", "old"):
        clean_stale(parent, f".{path.name}.{kind}-")


def _checkpoint_vocab(model) -> GeneVocab:
    from cellformers.data import GeneVocab

    vocab = getattr(model, "vocab", None)
    if vocab is None:
        vocab = model.init_params_.get("non_kwargs", {}).get(_VOCAB_ARG)
        if isinstance(vocab, dict):
            vocab = GeneVocab.from_dict(vocab)
    if not isinstance(vocab, GeneVocab):
        msg = f"{type(model).__name__} has no gene vocabulary (`model.vocab`); it cannot be saved as a checkpoint."
        raise CheckpointError(msg)
    return vocab


def _checkpoint_config(model, vocab: GeneVocab) -> dict[str, Any]:
    import scvi

    import cellformers

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
        "model_class": _class_name_for(type(model)),
        "cellformers_version": cellformers.__version__,
        "scvi_tools_version": scvi.__version__,
        "torch_version": torch.__version__,
        "vocabulary": vocab.name,
        "vocab_argument": vocab_arg,
        "init_params": _encode(params, "init_params_"),
        "setup_method_args": _encode(
            {k: model.registry_.get(k) for k in (_MODEL_NAME_KEY, _SETUP_METHOD_NAME, _SETUP_ARGS_KEY)},
            "setup_method_args",
        ),
        # scvi-tools' random AnnData id would make two identical trainings hash differently; loading assigns one
        "registry": _encode({k: v for k, v in model.registry_.items() if k != _SCVI_UUID_KEY}, "registry_"),
        "genes": {"var_names": var_names, "token_ids": token_ids.tolist()},
        "training_summary": _training_summary(model),
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
    >>> model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)  # a tiny model
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> path = cf.pretrained.save_pretrained(model, Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> sorted(p.name for p in path.iterdir())
    ['checksums.json', 'config.json', 'model.safetensors', 'vocab.json']
    >>> loaded = cf.model.ScFormer.from_pretrained(path, adata)
    >>> np.allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    True
    """
    path = Path(path)
    _recover_checkpoint(path)
    if path.exists():
        if not overwrite:
            msg = f"{path} already exists; pass `overwrite=True` to replace it."
            raise CheckpointError(msg)
        if not path.is_dir() or (any(path.iterdir()) and not (path / CONFIG_FILE).is_file()):
            msg = f"{path} exists and is not a cellformers checkpoint; it is not replaced. Choose another path."
            raise CheckpointError(msg)
    vocab = _checkpoint_vocab(model)
    config = _checkpoint_config(model, vocab)  # fails on non-JSON-able parameters before anything is written
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / temp_name(path.name, "tmp")
    tmp.mkdir()
    try:
        _write_weights(model.module, tmp / WEIGHTS_FILE)
        _fsync(tmp / WEIGHTS_FILE)
        vocab.to_json(tmp / VOCAB_FILE)
        _fsync(tmp / VOCAB_FILE)
        _write_json(tmp / CONFIG_FILE, config)
        sums = write_checksums(tmp, tuple(n for n in CHECKPOINT_FILES if n != CHECKSUMS_FILE))
        _replace_directory(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    logger.info(f"saved {type(model).__name__} checkpoint to {path}")
    for name, digest in sums.items():
        logger.debug(f"  {name}: sha256 {digest}")
    return path


class PretrainedMixin:
    """``save_pretrained`` / ``from_pretrained`` for cellformers models.

    A checkpoint is a directory with

    - ``config.json``: the model class, its hyperparameters (``init_params_``), the ``setup_anndata`` arguments and
      scvi-tools registry (covariate categories), the genes and their token ids, the package versions and a
      training summary;
    - ``model.safetensors``: the module's parameters and buffers (no pickle);
    - ``vocab.json``: the gene vocabulary (:meth:`~cellformers.data.GeneVocab.to_json`);
    - ``checksums.json``: the sha256 of the three files above, written last.

    It is written atomically (into a temporary folder beside the target, then renamed), and loading verifies every
    file against ``checksums.json``, so a half-written or damaged checkpoint never loads. Nothing in a checkpoint is
    executed or unpickled: the model class must be one of :data:`MODEL_CLASSES` (or the class ``from_pretrained``
    is called on), and weights are read with safetensors. :func:`~cellformers.pretrained.pack_checkpoint` turns the
    directory into one archive with a sha256 for a :class:`~cellformers.pretrained.PretrainedCard`.

    Notes
    -----
    To give a local or private checkpoint a name, pack it and register a card for the archive::

        path = cf.pretrained.pack_checkpoint("xtg_pbmc/")  # also writes xtg_pbmc.tar.sha256
        card = cf.pretrained.PretrainedCard.from_archive(path, name="xtg-pbmc", license="CC-BY-4.0")
        cf.pretrained.register_pretrained(card)
        model = cf.model.XTrimoGene.from_pretrained("xtg-pbmc", adata)

    To publish one, upload the archive and build the card with ``url=`` its public address and ``sha256=`` the hash
    in ``<archive>.sha256`` (which the host should publish too, e.g. the sha256 of a Hugging Face LFS pointer).
    Without a card, ``from_pretrained(url, sha256=...)`` loads it directly.

    Examples
    --------
    Every cellformers model has these methods:

    >>> import tempfile
    >>> import numpy as np
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)  # a tiny model
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> issubclass(cf.model.ScFormer, cf.pretrained.PretrainedMixin)
    True
    >>> path = model.save_pretrained(Path(tempfile.mkdtemp()) / "scformer_tiny")
    >>> loaded = cf.model.ScFormer.from_pretrained(path, adata)
    >>> loaded.pretrained_info_["model_class"], loaded.pretrained_info_["training_summary"]["n_epochs"]
    ('cellformers.model.ScFormer', 1)
    >>> np.allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5)
    True
    """

    #: Where the model was loaded from (set by :meth:`from_pretrained`; ``None`` otherwise).
    pretrained_info_: dict | None = None

    def save_pretrained(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the model as a checkpoint directory (``config.json``, ``model.safetensors``, ``vocab.json``).

        Everything is written into a temporary folder beside ``path`` and renamed into place at the end, so an
        interrupted save leaves no checkpoint at ``path`` (and, with ``overwrite=True``, the previous one intact).
        ``checksums.json`` lists the sha256 of each file (also logged); :func:`~cellformers.pretrained.pack_checkpoint`
        makes the single archive a registry card points at. See :func:`~cellformers.pretrained.save_pretrained`.

        Parameters
        ----------
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
        >>> model.save_pretrained("xtg_pbmc/")  # doctest: +SKIP
        >>> model = cf.model.XTrimoGene.from_pretrained("xtg_pbmc/", adata)  # doctest: +SKIP
        """
        return save_pretrained(self, path, overwrite=overwrite)

    @classmethod
    def from_pretrained(
        cls,
        name_or_path_or_url: str | os.PathLike,
        adata: AnnData | None = None,
        *,
        sha256: str | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        min_gene_coverage: float = 0.5,
        setup_kwargs: dict | None = None,
    ):
        """Load a checkpoint written by :meth:`save_pretrained`: registered name, directory, archive or URL.

        Sources, in this order: a name in :func:`~cellformers.pretrained.list_pretrained` (downloaded once into
        ``settings.cache_dir`` and checked against the card's sha256); an existing directory or archive; an
        ``https``/``http``/``ftp``/``file`` URL of an archive, which requires ``sha256``. Every file is checked
        against the checkpoint's ``checksums.json``. The model class must be one of cellformers' models (looked up
        by name, never imported from the checkpoint) or ``cls`` itself; weights are read with safetensors, with
        strict key and shape checks.

        **With** ``adata``: the data are set up by replaying the checkpoint's ``setup_anndata`` arguments against
        its saved registry (as scvi-tools' ``load`` does), so batch and label categories keep their encoding; the
        checkpoint's ``batch_key``/``labels_key`` columns must exist and hold known categories (otherwise an error
        says what to add; ``setup_kwargs`` renames a column or the layer). When the genes or their token ids differ
        from the checkpoint's, the model is attached to an aligned copy (:func:`cellformers.pp.align_to_reference`:
        same cells, the checkpoint's genes in its order, missing ones zero-filled), available as ``model.adata``;
        ``adata`` itself is then left untouched, ``pretrained_info_['aligned_copy']`` is ``True`` and a message
        says so. :func:`cellformers.tl.embed` and :func:`cellformers.tl.impute` take ``adata`` itself and align it
        the same way (``cf.tl.embed(adata, model)`` writes into ``adata.obsm``); the model's own getters need
        ``model.adata`` or an aligned AnnData. When they match, ``adata`` is set up in place, as by
        ``setup_anndata``.

        **Without** ``adata``: the module is built from the checkpoint alone (on a two-cell placeholder that is
        discarded) and the model is returned in scvi-tools' "loaded without AnnData" state: ``model.adata`` is
        ``None`` and getters need an ``adata`` argument, which is set up from the saved registry on first use. Its
        genes must then be the checkpoint's (``adata = cf.pp.align_to_reference(adata, model.get_var_names())``).

        Parameters
        ----------
        name_or_path_or_url
            Registered name, checkpoint directory, archive path, or archive URL.
        adata
            Data to attach (raw counts), or ``None``.
        sha256
            sha256 of the archive; required for URLs, optional for archive paths.
        accelerator
            Lightning accelerator (``"auto"``, ``"cpu"``, ``"gpu"``, ``"mps"``).
        device
            Device index, or ``"auto"`` for the first one of ``accelerator``.
        min_gene_coverage
            Smallest fraction of the checkpoint's genes ``adata`` must contain when its genes differ
            (:class:`~cellformers.GeneMappingError` below it).
        setup_kwargs
            Overrides of the saved ``setup_anndata`` arguments, e.g. ``{"layer": None}`` when the counts are in
            ``adata.X`` or ``{"batch_key": "donor"}``.

        Returns
        -------
        The model, in eval mode, with ``is_trained_`` from the checkpoint and ``pretrained_info_`` (name, source,
        sha256, versions, training summary).

        Examples
        --------
        >>> model = cf.model.XTrimoGene.from_pretrained("xtg_pbmc/", adata)  # doctest: +SKIP
        >>> adata.obsm["X_xtrimogene"] = model.get_latent_representation()  # doctest: +SKIP
        """
        return _load(
            cls,
            name_or_path_or_url,
            adata,
            sha256=sha256,
            accelerator=accelerator,
            device=device,
            min_gene_coverage=min_gene_coverage,
            setup_kwargs=setup_kwargs,
        )
