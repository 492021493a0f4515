"""Fit a user's AnnData to a checkpoint: check its setup, align its genes, build a placeholder, undo a failed setup."""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._constants import VAR_KEYS
from cellformers._exceptions import GeneMappingError, MissingKeyError
from cellformers.checkpoint._format import (
    CATEGORICAL_MAPPING,
    FIELD_REGISTRIES_KEY,
    ORIGINAL_KEY,
    SCVI_UUID_KEY,
    STATE_REGISTRY_KEY,
    CheckpointError,
)
from cellformers.pp import align_to_reference

if TYPE_CHECKING:
    from collections.abc import Iterator

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

__all__ = ["adata_for_checkpoint", "check_setup", "placeholder_adata", "undo_setup_on_error"]


def registry_categoricals(registry: dict, setup_args: dict) -> list[tuple[str, str | None, np.ndarray]]:
    """``(registry key, obs column or None for a default field, categories)`` of each categorical field."""
    out = []
    for key, field in registry.get(FIELD_REGISTRIES_KEY, {}).items():
        state = field.get(STATE_REGISTRY_KEY, {})
        if CATEGORICAL_MAPPING not in state:
            continue
        mapping = np.asarray(state[CATEGORICAL_MAPPING])
        column = setup_args.get(f"{key}_key", state.get(ORIGINAL_KEY))
        if column is None or str(column) == f"_scvi_{key}":
            column = None
        out.append((key, column, mapping))
    return out


def check_setup(adata: AnnData, registry: dict, setup_args: dict) -> None:
    """Fail before anything is written when ``adata`` lacks what the checkpoint's setup needs."""
    layer = setup_args.get("layer")
    if layer is not None and layer not in adata.layers:
        msg = (
            f"The checkpoint was trained on `adata.layers[{layer!r}]`, which this AnnData does not have (layers: "
            f"{list(adata.layers) or 'none'}). Add the raw counts there, or pass `setup_kwargs={{'layer': None}}` "
            "(or another layer) to `from_pretrained`."
        )
        raise MissingKeyError(msg)
    for key, column, mapping in registry_categoricals(registry, setup_args):
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


def placeholder_adata(var_names: list[str], token_ids: np.ndarray, registry: dict, setup_args: dict) -> AnnData:
    """A two-cell AnnData with the checkpoint's genes and covariates, used to build a model without data."""
    from anndata import AnnData

    n_obs = 2
    X = np.ones((n_obs, len(var_names)), dtype=np.float32)
    obs = pd.DataFrame(index=[f"placeholder_{i}" for i in range(n_obs)])
    for _key, column, mapping in registry_categoricals(registry, setup_args):
        if column is not None and mapping.size:
            obs[column] = [mapping[0]] * n_obs
    var = pd.DataFrame(index=pd.Index(var_names, dtype=object))
    var[VAR_KEYS.TOKEN_ID] = np.asarray(token_ids, dtype=np.int64)
    layer = setup_args.get("layer")
    return AnnData(X=X, obs=obs, var=var, layers={layer: X.copy()} if layer is not None else None)


def adata_for_checkpoint(
    adata: AnnData, var_names: list[str], token_ids: np.ndarray, vocab: GeneVocab, min_gene_coverage: float
) -> tuple[AnnData, bool]:
    """``adata`` itself when its genes and token ids are the checkpoint's, else an aligned copy (and True)."""
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
def undo_setup_on_error(adata: AnnData) -> Iterator[None]:
    """Remove the ``obs`` columns and ``uns`` entries a failed load added to the caller's AnnData."""
    obs_before = set(adata.obs.columns)
    uns_before = {k: adata.uns[k] for k in adata.uns if k in (SCVI_UUID_KEY, "_scvi_manager_uuid")}
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
