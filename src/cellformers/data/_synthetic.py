"""Small synthetic count data with real human gene symbols, for tests and examples."""

from __future__ import annotations

from functools import lru_cache
from importlib.resources import files
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse as sp

if TYPE_CHECKING:
    from anndata import AnnData

__all__ = ["synthetic_counts", "synthetic_gene_symbols"]


@lru_cache(maxsize=1)
def _gene_list() -> tuple[str, ...]:
    text = files("cellformers.data").joinpath("_resources/synthetic_genes.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def synthetic_gene_symbols() -> list[str]:
    """The 400 human gene symbols used by :func:`synthetic_counts`, in order.

    Common marker genes (``CD3E``, ``CD4``, ``MS4A1``, ``LYZ``, ``ACTB``, …) come first, then protein-coding genes
    of the scFoundation 19,264-gene list that are also in scGPT's default vocabulary.

    Examples
    --------
    >>> import cellformers as cf
    >>> genes = cf.data.synthetic_gene_symbols()
    >>> len(genes), genes[:5]
    (400, ['CD3E', 'CD3D', 'CD4', 'CD8A', 'CD8B'])
    """
    return list(_gene_list())


def synthetic_counts(
    n_cells: int = 400,
    n_genes: int = 100,
    *,
    n_batches: int = 2,
    n_labels: int = 3,
    sparse: bool = True,
    random_state: int = 0,
) -> AnnData:
    """Negative-binomial counts with cell-type programs and batch effects, like scvi's ``synthetic_iid``.

    Each gene has a log-normal base mean. Each label up-regulates its own random 15% of the genes four-fold, each
    batch scales every gene by a log-normal factor, and each cell has a log-normal size factor. Counts are
    gamma-Poisson (dispersion ``theta = 5``).

    Parameters
    ----------
    n_cells
        Number of cells (``obs_names`` are ``cell_0``, ``cell_1``, …).
    n_genes
        Number of genes, at most 400: the first ``n_genes`` of :func:`synthetic_gene_symbols`, so the genes are
        in the ``scfoundation-19264`` and ``scgpt-default`` vocabularies.
    n_batches
        Number of batches, in ``obs['batch']`` (``batch_0``, …), assigned in turn.
    n_labels
        Number of cell types, in ``obs['labels']`` (``label_0``, …), drawn at random.
    sparse
        Store ``X`` as CSR (``True``) or as a dense array.
    random_state
        Seed of the generator.

    Returns
    -------
    :class:`~anndata.AnnData` with raw counts (``float32``) in ``X`` and a copy in ``layers['counts']``.

    Examples
    --------
    >>> from cellformers.data import synthetic_counts
    >>> adata = synthetic_counts(n_cells=200, n_genes=50)
    >>> adata.shape
    (200, 50)
    """
    from anndata import AnnData

    genes = _gene_list()
    if not 1 <= n_genes <= len(genes):
        msg = f"`n_genes` must be between 1 and {len(genes)} (the shipped gene list), got {n_genes}."
        raise ValueError(msg)
    if n_cells < 1 or n_batches < 1 or n_labels < 1:
        msg = "`n_cells`, `n_batches` and `n_labels` must be positive."
        raise ValueError(msg)
    rng = np.random.default_rng(random_state)
    base = np.exp(rng.normal(-0.3, 1.2, size=n_genes))
    programs = np.ones((n_labels, n_genes))
    n_up = max(1, int(round(0.15 * n_genes)))
    for k in range(n_labels):
        programs[k, rng.choice(n_genes, n_up, replace=False)] = 4.0
    batch_scale = np.exp(rng.normal(0.0, 0.3, size=(n_batches, n_genes)))

    batch = np.arange(n_cells) % n_batches
    labels = rng.integers(0, n_labels, size=n_cells)
    size = np.exp(rng.normal(0.0, 0.3, size=n_cells))
    mean = base[None, :] * programs[labels] * batch_scale[batch] * size[:, None]
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mean / theta)).astype(np.float32)

    obs = pd.DataFrame(
        {
            "batch": pd.Categorical([f"batch_{b}" for b in batch], categories=[f"batch_{b}" for b in range(n_batches)]),
            "labels": pd.Categorical(
                [f"label_{k}" for k in labels], categories=[f"label_{k}" for k in range(n_labels)]
            ),
        },
        index=[f"cell_{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame(index=list(genes[:n_genes]))
    X = sp.csr_matrix(counts) if sparse else counts
    adata = AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = X.copy()
    return adata
