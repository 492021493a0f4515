"""Checks of a checkpoint's config against the model class before anything is allocated.

Hyperparameters are compared with the constructors' signatures (names, types, ranges), then the model is built on
PyTorch's ``meta`` device and its shapes compared with the weights' header, so a hostile or edited config is refused
with a message naming the field instead of allocating a huge model or failing deep inside a constructor.
"""

from __future__ import annotations

import inspect
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellformers._exceptions import UntrustedCheckpointError
from cellformers.checkpoint._format import SCVI_UUID_KEY, CheckpointError
from cellformers.checkpoint._weights import weights_header

if TYPE_CHECKING:
    from pathlib import Path

    from anndata import AnnData

__all__ = ["check_hyperparameters", "check_shapes_before_allocating"]

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


def check_hyperparameters(model_cls: type, params: dict[str, Any], where: Path) -> None:
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


class _Skeleton(Exception):  # not an error: carries the module built on the meta device
    def __init__(self, module: torch.nn.Module):
        super().__init__("module built on the meta device")
        self.module = module


def check_shapes_before_allocating(
    model_cls: type, placeholder: AnnData, registry: dict, setup_args: dict, params: dict, weights: Path, where: Path
) -> None:
    """Build the model on PyTorch's ``meta`` device (no memory) and compare its shapes with the weights' header.

    A config whose hyperparameters describe a larger model than the weights (``d_model=65536``) is refused here,
    before any parameter is allocated; a config that does not build at all is refused naming the error.
    """
    from safetensors import SafetensorError

    try:
        header = weights_header(weights)
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
        uuid_ = placeholder.uns.get(SCVI_UUID_KEY)
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
