"""Weights I/O: the module's state dict as safetensors (no pickle), and a pickle reader that runs no code."""

from __future__ import annotations

import json
import pickle
import warnings
from typing import TYPE_CHECKING, Any

import torch

from cellformers._exceptions import UntrustedCheckpointError
from cellformers._settings import settings

from ._format import FORMAT, CheckpointError

if TYPE_CHECKING:
    import os
    from pathlib import Path

__all__ = ["read_weights", "safe_torch_load", "warn_non_finite", "weights_header", "write_weights"]

_ALIASES_KEY = "cellformers_aliases"


def write_weights(module: torch.nn.Module, path: Path) -> None:
    """The module's state dict (parameters and persistent buffers) as safetensors.

    Entries that are the very same tensor (tied weights) are stored once and listed in the file's metadata; every
    other tensor is written as its own contiguous copy, so views into a larger storage are saved too.
    """
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


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """Inverse of :func:`write_weights` (on the CPU)."""
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


def weights_header(path: Path) -> dict[str, tuple[list[int], str]]:
    """``{name: (shape, dtype)}`` of a safetensors file from its header alone (aliases resolved), without reading it."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        metadata = fh.metadata() or {}
        header = {k: (list(fh.get_slice(k).get_shape()), str(fh.get_slice(k).get_dtype())) for k in fh.keys()}
    for name, target in json.loads(metadata.get(_ALIASES_KEY, "{}")).items():
        if target in header:
            header[name] = header[target]
    return header


def warn_non_finite(state: dict[str, torch.Tensor], weights: Path) -> None:
    """Warn when weights hold NaN or infinite values (the model's outputs would be NaN)."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        msg = (
            f"{weights} holds NaN or infinite values in {len(bad)} tensors ({bad[:5]}{' …' if len(bad) > 5 else ''}); "
            "the model's outputs will be NaN. The training diverged or the file was damaged: use another checkpoint."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)


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
