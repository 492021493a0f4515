"""The JSON codec of ``config.json``: hyperparameters and registries with arrays and tuples that come back as such."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from ._format import CONFIG_FILE, CheckpointError

__all__ = ["decode_json", "encode_json"]


def encode_json(value: Any, where: str) -> Any:
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
        return {
            "__ndarray__": [encode_json(v, where) for v in value.tolist()],
            "dtype": dtype,
            "shape": list(value.shape),
        }
    if isinstance(value, pd.Index):
        return encode_json(value.to_numpy(), where)
    if isinstance(value, tuple):
        return {"__tuple__": [encode_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [encode_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                msg = f"{where}: dictionary keys must be strings to be stored in {CONFIG_FILE}, got {k!r}."
                raise CheckpointError(msg)
            if k.startswith("__") and k.endswith("__"):
                msg = f"{where}: the key {k!r} is reserved in {CONFIG_FILE}."
                raise CheckpointError(msg)
            out[k] = encode_json(v, f"{where}[{k!r}]")
        return out
    msg = (
        f"{where} is a {type(value).__name__}, which cannot be stored in {CONFIG_FILE}; checkpoints keep "
        "hyperparameters and setup arguments as numbers, strings, lists, dicts and arrays only."
    )
    raise CheckpointError(msg)


def decode_json(value: Any) -> Any:
    """Inverse of :func:`encode_json`; only builds plain Python values, tuples and NumPy arrays."""
    if isinstance(value, list):
        return [decode_json(v) for v in value]
    if isinstance(value, dict):
        if set(value) == {"__tuple__"}:
            return tuple(decode_json(v) for v in value["__tuple__"])
        if set(value) == {"__ndarray__", "dtype", "shape"}:
            items = decode_json(value["__ndarray__"])
            dtype = np.dtype(object) if value["dtype"] == "object" else np.dtype(value["dtype"])
            if dtype.kind not in "biufO":
                msg = f"unsupported array dtype {value['dtype']!r} in {CONFIG_FILE}"
                raise CheckpointError(msg)
            if dtype.kind == "O":
                arr = np.empty(len(items), dtype=object)
                arr[:] = items
                return arr.reshape(value["shape"])
            return np.asarray(items, dtype=dtype).reshape(value["shape"])
        return {k: decode_json(v) for k, v in value.items()}
    return value
