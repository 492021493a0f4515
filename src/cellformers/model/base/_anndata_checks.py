"""Checks of the AnnData passed to a model's getters: genes, counts, covariates, cells and indices."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._exceptions import (
    GeneMappingError,
    InvalidExpressionError,
    MissingKeyError,
    NotCountsError,
    UnknownCategoryError,
)
from cellformers._settings import settings
from cellformers._utils import check_counts, get_matrix

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base import CellformersModel

__all__ = ["check_has_cells", "check_indices", "check_new_anndata", "warn_unused_categories"]


def check_new_anndata(model: CellformersModel, adata: AnnData) -> None:
    """Raise a clear error when ``adata`` does not match the model's genes, counts layer or covariates."""
    registry = model.registry_
    setup_args = registry.get("setup_args", {})
    name = type(model).__name__
    genes = pd.Index(np.asarray(model.get_var_names()).astype(str))
    var_names = pd.Index(np.asarray(adata.var_names).astype(str))
    if not var_names.equals(genes):
        n_common = int(var_names.isin(genes).sum())
        msg = (
            f"`adata` has other genes than the {name} model ({adata.n_vars} genes, {n_common} of them among the "
            f"model's {genes.size}{', in another order' if n_common == genes.size == adata.n_vars else ''}). "
            "Align it first: `adata = cellformers.pp.align_to_reference(adata, model.get_var_names())`."
        )
        raise GeneMappingError(msg)
    layer = setup_args.get("layer")
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    if layer is not None and layer not in adata.layers:
        msg = (
            f"The {name} model reads raw counts from {where}, which `adata` does not have (layers: "
            f"{list(adata.layers) or 'none'}). Put this data's raw counts there."
        )
        raise MissingKeyError(msg)
    try:
        check_counts(get_matrix(adata, layer), arg="layer", layer=layer)
    except NotCountsError as err:
        msg = (
            f"`adata` does not hold raw counts in {where}, where the {name} model reads them (it has non-integer "
            "values: normalized or log-transformed?). Put this data's raw counts there, e.g. from "
            "`adata.raw.X` or a counts layer, or recover them with `cellformers.pp.counts_from_normalized`."
        )
        raise NotCountsError(msg) from err
    for field in registry.get("field_registries", {}).values():
        state = field.get("state_registry", {})
        column = state.get("original_key")
        if "categorical_mapping" not in state or column is None or str(column).startswith("_scvi_"):
            continue
        arg = next(
            (f"{k}={v!r}" for k, v in setup_args.items() if k.endswith("_key") and isinstance(v, str) and v == column),
            None,
        )
        what = f"`adata.obs[{column!r}]`" + (f" (`{arg}` of the model's setup)" if arg else "")
        if column not in adata.obs.columns:
            msg = (
                f"The {name} model was set up with the covariate {what}, which `adata` does not have. Add that "
                "column with categories the model knows."
            )
            raise MissingKeyError(msg)
        mapping = pd.Index(np.asarray(state["categorical_mapping"]).astype(object))
        values = pd.Index(pd.unique(adata.obs[column].astype(object)))
        unknown = values.difference(mapping)
        if unknown.size:
            known = mapping[:10].tolist()
            msg = (
                f"{what} holds categories the {name} model was not trained with ({unknown[:10].tolist()}); it "
                f"knows {known}{' …' if mapping.size > 10 else ''}. Relabel those cells with a known category "
                "(e.g. the most similar batch), or train a model that includes them."
            )
            raise UnknownCategoryError(msg)


def check_indices(indices, n_obs: int) -> None:
    """Raise a ``ValueError`` unless ``indices`` are cell positions in ``range(n_obs)`` or a mask of ``n_obs`` cells."""
    idx = np.asarray(indices)
    if idx.dtype == bool:
        if idx.shape != (n_obs,):
            msg = f"`indices` is a boolean mask of shape {idx.shape}; it must have one entry per cell ({n_obs})."
            raise ValueError(msg)
        return
    if idx.size and (idx.dtype.kind not in "iu" or idx.min() < 0 or idx.max() >= n_obs):
        msg = (
            f"`indices` must be integer cell positions from 0 to {n_obs - 1} (or a boolean mask), got {indices!r:.80}."
        )
        raise ValueError(msg)


def check_has_cells(adata: AnnData) -> None:
    """Raise :class:`~cellformers.InvalidExpressionError` for an AnnData without cells, before anything is written."""
    if adata.n_obs == 0:
        msg = (
            f"`adata` has no cells (shape {adata.shape}); there is nothing to compute. Check the filtering or "
            "subsetting that produced it."
        )
        raise InvalidExpressionError(msg)


def warn_unused_categories(column: pd.Series, key: str, arg: str) -> None:
    """Warn when a categorical ``adata.obs`` column has categories no cell has (scvi-tools registers them all)."""
    if not isinstance(column.dtype, pd.CategoricalDtype):
        return
    used = pd.unique(column.dropna())
    unused = [c for c in column.cat.categories if c not in set(used)]
    if unused:
        msg = (
            f"`adata.obs[{key!r}]` (`{arg}`) has categories without cells ({unused[:5]}{' …' if len(unused) > 5 else ''}); "
            f"the model counts them anyway ({column.cat.categories.size} categories instead of {len(used)}). Drop them: "
            f"`adata.obs[{key!r}] = adata.obs[{key!r}].cat.remove_unused_categories()`."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
