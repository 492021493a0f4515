"""Which genes a context embedding (per-gene model outputs) is returned for."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from cellformers._exceptions import GeneMappingError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from cellformers.model.base import CellformersModel


def context_genes(model: CellformersModel, genes: Sequence[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """Positions among the module's genes and names of the genes a context embedding is returned for.

    Parameters
    ----------
    model
        A cellformers model.
    genes
        Gene names (the model's ``var_names``) in the order wanted; ``None``: every gene of the model that is in
        its vocabulary, in ``var_names`` order.

    Returns
    -------
    ``positions`` (int64, indices into the module's genes) and the gene names.
    """
    module = model.module
    columns = module.input_columns.cpu().numpy()
    var_names = pd.Index(np.asarray(model.get_var_names()).astype(str))
    names = var_names[columns]
    if genes is None:
        return np.arange(columns.size, dtype=np.int64), names.tolist()
    if isinstance(genes, str):
        msg = f"`genes` must be a list of gene names, got the string {genes!r} (use `genes=[{genes!r}]`)."
        raise TypeError(msg)
    wanted = pd.Index([str(g) for g in genes])
    if wanted.size == 0:
        msg = "`genes` is empty; pass gene names of the model (or None for all)."
        raise ValueError(msg)
    if wanted.has_duplicates:
        msg = f"`genes` has repeated names, e.g. {wanted[wanted.duplicated()][:5].tolist()}."
        raise ValueError(msg)
    pos = names.get_indexer(wanted)
    if (pos < 0).any():
        missing = wanted[pos < 0]
        outside = missing[missing.isin(var_names)]
        hint = (
            f" ({outside[:5].tolist()} are genes of the data outside the model's vocabulary: they have no output)"
            if outside.size
            else ""
        )
        msg = (
            f"{missing.size} of the {wanted.size} `genes` are not input genes of the {type(model).__name__} model, "
            f"e.g. {missing[:5].tolist()}{hint}. Choose among `model.get_var_names()`."
        )
        raise GeneMappingError(msg)
    return pos.astype(np.int64), wanted.tolist()
