"""GEARS' data side for cellformers: a ready ``PertData`` from counts, its GO graph in memory, a pandas-2 fix.

GEARS is an optional dependency: ``pip install cellformers[gears]`` (``cell-gears`` and ``torch-geometric``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse

from cellformers._exceptions import GeneMappingError

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from anndata import AnnData
    from torch import Tensor

__all__ = ["fix_gears_indexing", "gears_go_graph", "gears_pert_data"]

_EXTRA = "pip install cellformers[gears]"


def _import_gears():
    try:
        import gears
        import gears.model
    except ImportError as err:  # pragma: no cover - depends on the environment
        msg = f"GEARS is not installed ({err}). Install the optional extra: `{_EXTRA}`."
        raise ImportError(msg) from err
    return gears


class _SeriesIndexableCSR(sparse.csr_matrix):
    """CSR matrix that accepts a boolean pandas Series as row index.

    GEARS 0.1.2 indexes ``adata.X`` with ``adata.obs.condition == "ctrl"``; scipy calls ``.nonzero()`` on the key,
    which pandas 2 Series no longer have (GEARS pull request 97, open). Only the key type is converted.
    """

    def __getitem__(self, key):
        if isinstance(key, pd.Series):
            key = key.to_numpy()
        elif isinstance(key, tuple):
            key = tuple(k.to_numpy() if isinstance(k, pd.Series) else k for k in key)
        return super().__getitem__(key)


def fix_gears_indexing(pert_data: Any) -> None:
    """Let GEARS 0.1.2 run with pandas 2: make ``pert_data.adata.X`` accept boolean Series as row index.

    Call it on a loaded ``gears.PertData`` before ``gears.GEARS(pert_data)``; without it GEARS fails with
    ``AttributeError: 'Series' object has no attribute 'nonzero'``. Values are unchanged (same CSR arrays).

    Parameters
    ----------
    pert_data
        A ``gears.PertData`` after ``load`` or ``new_data_process``.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=5, n_genes=10)
    >>> pert_data = SimpleNamespace(adata=adata)  # stands in for a loaded gears.PertData
    >>> cf.downstream.fix_gears_indexing(pert_data)
    >>> adata.X[adata.obs["condition"] == "ctrl"].shape  # what GEARS does when it starts
    (20, 10)
    """
    adata = getattr(pert_data, "adata", None)
    if adata is None:
        msg = "`pert_data` has no data yet: call `pert_data.load(...)` or `pert_data.new_data_process(...)` first."
        raise ValueError(msg)
    if not isinstance(adata.X, _SeriesIndexableCSR):
        adata.X = _SeriesIndexableCSR(sparse.csr_matrix(adata.X))


def gears_pert_data(
    adata: AnnData,
    path: str | os.PathLike,
    *,
    gene2go: dict[str, set[str]] | None = None,
    condition_key: str = "condition",
    dataset_name: str = "cellformers",
    split: str = "simulation",
    seed: int = 1,
    batch_size: int = 32,
    **split_kwargs: Any,
) -> Any:
    """A ready ``gears.PertData`` (processed, split, loaders built) from an AnnData of raw counts.

    GEARS' own preparation, in one call: the counts are log-normalized (``log1p(x / Σx · 1e4)``, GEARS' input
    scale), ``var['gene_name']`` and (if absent) ``obs['cell_type']`` are set, and GEARS' ``new_data_process``
    (top differentially expressed genes per perturbation), ``prepare_split`` and ``get_dataloader`` run;
    :func:`fix_gears_indexing` is applied. ``adata`` itself is not modified.

    Parameters
    ----------
    adata
        Raw counts, one condition per cell in GEARS' syntax: ``"ctrl"``, ``"A+ctrl"``, ``"A+B"``.
    path
        GEARS' data directory (processed data, splits and ``gene2go_all.pkl`` go there).
    gene2go
        GO terms of each gene, written to ``path/gene2go_all.pkl``. ``None``: GEARS reads that file, downloading
        its own (Harvard Dataverse) if it is not there. Perturbed genes without GO terms cannot be perturbations.
    condition_key
        Column of ``adata.obs`` with the conditions.
    dataset_name
        GEARS' name of the dataset (a folder under ``path``).
    split, seed, split_kwargs
        GEARS' ``prepare_split`` arguments.
    batch_size
        GEARS' minibatch size.

    Returns
    -------
    The ``gears.PertData``; its GO genes are ``pert_data.pert_names`` (see :func:`gears_go_graph`).

    Examples
    --------
    >>> import tempfile
    >>> import cellformers as cf
    >>> counts = cf.data.synthetic_perturbation(
    ...     n_control=60, n_per_perturbation=10, n_genes=30, perturbations=("g0", "g1", "g2", "g3", "g0+g1", "g1+g2")
    ... )
    >>> go = {g: {f"GO:{i % 4}", f"GO:{i % 5 + 4}"} for i, g in enumerate(counts.var_names)}
    >>> pert_data = cf.downstream.gears_pert_data(counts, tempfile.mkdtemp(), gene2go=go, batch_size=8)
    >>> sorted(pert_data.set2conditions)
    ['test', 'train', 'val']
    """
    import pickle
    from pathlib import Path

    import scanpy as sc

    from cellformers._utils._anndata import check_key
    from cellformers._utils._validation import check_counts

    gears = _import_gears()
    check_key(adata, "obs", condition_key, arg="condition_key")
    check_counts(adata.X, arg="adata")
    conditions = adata.obs[condition_key].astype(str)
    if not (conditions == "ctrl").any():
        msg = f"No cell of `adata.obs[{condition_key!r}]` is 'ctrl': GEARS pairs every perturbed cell with a control."
        raise ValueError(msg)
    data = adata.to_memory() if adata.isbacked else adata.copy()  # GEARS works in memory
    data.obs = pd.DataFrame(
        {"condition": conditions.to_numpy(), "cell_type": adata.obs.get("cell_type", "cell")}, index=adata.obs_names
    )
    data.obs["cell_type"] = data.obs["cell_type"].astype(str)
    data.var = pd.DataFrame({"gene_name": adata.var_names.astype(str)}, index=adata.var_names)
    data.X = sparse.csr_matrix(data.X, dtype=np.float32)
    sc.pp.normalize_total(data, target_sum=1e4)  # GEARS' scale, as its processed releases
    sc.pp.log1p(data)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if gene2go is not None:
        with open(path / "gene2go_all.pkl", "wb") as f:
            pickle.dump({str(g): set(t) for g, t in gene2go.items()}, f)
    pert_data = gears.PertData(str(path), default_pert_graph=False)
    pert_data.new_data_process(dataset_name, adata=data)
    pert_data.prepare_split(split=split, seed=seed, **split_kwargs)
    pert_data.get_dataloader(batch_size=batch_size)
    fix_gears_indexing(pert_data)
    return pert_data


def gears_go_graph(
    gene2go: dict[str, set[str]], perturbations: Sequence[str], *, k: int = 20, threshold: float = 0.1
) -> dict[str, Tensor]:
    """GEARS' gene-ontology graph over the perturbable genes, built in memory.

    The graph GEARS builds with ``default_pert_graph=False``: an edge ``a -> b`` weighted by the Jaccard index of
    the two genes' GO terms where it exceeds ``threshold``, keeping the ``k + 1`` strongest edges into each gene
    (its self-loop included). GEARS' own builder writes a CSV under ``./data`` of the working directory and starts
    25 processes; this one does neither. Pass the result to ``model_initialize(**graph)``.

    Parameters
    ----------
    gene2go
        GO terms of each gene (GEARS' ``gene2go_all.pkl`` maps gene symbols to sets of GO ids).
    perturbations
        GEARS' perturbable genes, in its order (``pert_data.pert_names``).
    k
        Most similar genes per gene (GEARS' ``num_similar_genes_go_graph``).
    threshold
        Smallest Jaccard index kept.

    Returns
    -------
    ``{"G_go": edge_index (2, n_edges), "G_go_weight": (n_edges,)}``.

    Examples
    --------
    >>> import cellformers as cf
    >>> go = {"IFNAR1": {"GO:0004905", "GO:0019962"}, "IFNAR2": {"GO:0004905"}, "STAT1": {"GO:0060333"}}
    >>> graph = cf.downstream.gears_go_graph(go, ["IFNAR1", "IFNAR2", "STAT1"])
    >>> graph["G_go"].tolist(), graph["G_go_weight"].tolist()
    ([[0, 1, 0, 1, 2], [0, 0, 1, 1, 2]], [1.0, 0.5, 0.5, 1.0, 1.0])
    """
    perts = [str(p) for p in perturbations]
    missing = [p for p in perts if p not in gene2go]
    if missing:
        msg = f"{len(missing)} of the {len(perts)} `perturbations` have no GO terms in `gene2go`, e.g. {missing[:5]}."
        raise GeneMappingError(msg)
    terms = [set(gene2go[p]) for p in perts]
    sources, targets, weights = [], [], []
    for t, target in enumerate(terms):
        scores = [(len(source & target) / len(source | target), s) for s, source in enumerate(terms) if source | target]
        kept = sorted((sc, s) for sc, s in scores if sc > threshold)[::-1][: k + 1]
        for score, s in sorted(kept, key=lambda e: e[1]):
            sources.append(s)
            targets.append(t)
            weights.append(score)
    return {
        "G_go": torch.tensor([sources, targets], dtype=torch.long),
        "G_go_weight": torch.tensor(weights, dtype=torch.float32),
    }
