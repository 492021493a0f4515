"""Check scvi-tools model files (``model.pt``, a pickle) before scvi-tools unpickles them."""

from __future__ import annotations

import os
import pickle
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from cellformers._exceptions import UntrustedCheckpointError

if TYPE_CHECKING:
    from pathlib import Path

# What a cellformers model's `save` pickles besides tensors: NumPy arrays and dtypes, pandas frames and indexes
# (training history, registry), the gene vocabulary, and the builtins and containers these use. Each only rebuilds
# data; none runs code named by the file.
_ALLOWED = {
    "builtins": {"dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray", "slice", "complex", "range"},
    "collections": {"OrderedDict", "defaultdict", "Counter"},
    "_codecs": {"encode"},
    "numpy": {"ndarray", "dtype"},
    "numpy.core.multiarray": {"_reconstruct", "scalar"},
    "numpy._core.multiarray": {"_reconstruct", "scalar"},
    "pandas.core.frame": {"DataFrame"},
    "pandas.core.series": {"Series"},
    "pandas.core.indexes.base": {"Index", "_new_Index"},
    "pandas.core.indexes.range": {"RangeIndex"},
    "pandas.core.internals.managers": {"BlockManager", "SingleBlockManager"},
    "pandas._libs.internals": {"_unpickle_block"},
    "cellformers.data._vocab": {"GeneVocab"},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the classes and functions above, torch's tensor rebuilding and dtypes."""

    def find_class(self, module: str, name: str):
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        allowed = name in _ALLOWED.get(module, ())
        allowed |= module == "torch" and (name.endswith("Storage") or name in {"Size", "device"})
        allowed |= module == "torch._utils" and name.startswith("_rebuild_")
        allowed |= module == "numpy.dtypes" and name.endswith("DType")
        allowed |= module == "torch" and _is_torch_dtype(name)
        if not allowed:
            msg = f"{module}.{name}"
            raise pickle.UnpicklingError(msg)
        return super().find_class(module, name)


def _is_torch_dtype(name: str) -> bool:
    import torch

    return isinstance(getattr(torch, name, None), torch.dtype)


def check_model_file(path: str | os.PathLike | Path) -> Any:
    """Raise :class:`~cellformers.UntrustedCheckpointError` when ``path`` would need more than data to unpickle.

    The file is read once with an unpickler that resolves only the types a cellformers model saves, so a crafted
    pickle that names any other callable (``os.system``, ``builtins.eval``, ...) is refused before scvi-tools
    unpickles the file in full. Returns what the file holds (``None`` when there is no file).
    """
    import torch

    if not os.path.isfile(path):
        return  # scvi-tools reports the missing file
    restricted = SimpleNamespace(Unpickler=_RestrictedUnpickler, load=pickle.load, __name__="restricted_pickle")
    try:
        return torch.load(path, map_location="cpu", pickle_module=restricted, weights_only=False)
    except pickle.UnpicklingError as err:
        msg = (
            f"{path} names {err}, which is not part of a cellformers model; it is not loaded, because unpickling it "
            "could run arbitrary code. Load only model files you trust (a model file is a pickle), and share models "
            "with `save_pretrained`, which writes no pickle."
        )
        raise UntrustedCheckpointError(msg) from err
