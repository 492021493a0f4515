"""Matrices that are raw counts in some rows only (e.g. a concatenation of a raw and a normalized dataset).

The counts check must look at every row, not only the first few hundred.
"""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

import cellformers as cf
from cellformers import NotCountsError
from cellformers.data import synthetic_counts

N_CELLS, N_GENES, N_RAW = 700, 30, 500


def _mixed(kind: str, where: str = "tail"):
    """700 cells of counts whose rows 500+ (``"tail"``), last row (``"last"``) or middle rows are log-normalized."""
    adata = synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, random_state=0)
    rows = {"tail": slice(N_RAW, None), "last": slice(N_CELLS - 1, None), "middle": slice(300, 310)}[where]
    norm = adata[rows].copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    X = adata.X.toarray().astype(np.float32)
    X[rows] = norm.X.toarray() if sparse.issparse(norm.X) else norm.X
    adata.X = {"csr": sparse.csr_matrix, "csc": sparse.csc_matrix, "dense": np.asarray}[kind](X)
    return adata


@pytest.mark.parametrize("where", ["tail", "last", "middle"])
@pytest.mark.parametrize("kind", ["csr", "csc", "dense"])
def test_check_counts_finds_normalized_rows_anywhere(kind, where):
    adata = _mixed(kind, where)
    with pytest.raises(NotCountsError, match="concatenate raw and normalized"):
        cf.pp.check_counts(adata)


def test_check_counts_finds_normalized_rows_in_a_layer():
    adata = _mixed("csr")
    adata.layers["counts"] = adata.X.copy()
    adata.X = synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, random_state=1).X
    cf.pp.check_counts(adata)  # X is counts
    with pytest.raises(NotCountsError, match=r"adata\.layers\['counts'\]"):
        cf.pp.check_counts(adata, layer="counts")


def test_check_counts_streams_a_backed_matrix(tmp_path):
    _mixed("csr").write_h5ad(tmp_path / "mixed.h5ad")
    backed = ad.read_h5ad(tmp_path / "mixed.h5ad", backed="r")
    try:
        with pytest.raises(NotCountsError):
            cf.pp.check_counts(backed)
    finally:
        backed.file.close()


def test_a_single_fractional_value_in_the_last_row_is_found():
    adata = synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, random_state=0)
    X = adata.X.tolil()
    X[N_CELLS - 1, 0] = 2.5
    adata.X = X.tocsr()
    with pytest.raises(NotCountsError, match="row 699"):
        cf.pp.check_counts(adata)


def test_counts_still_pass():
    cf.pp.check_counts(synthetic_counts(n_cells=N_CELLS, n_genes=N_GENES, random_state=0))


@pytest.mark.parametrize("name", ["XTrimoGene", "ScFormer", "ScPaLM"])
def test_setup_anndata_refuses_a_mixed_matrix_and_writes_nothing(name, rel):
    adata = _mixed("csr")
    with rel.unchanged(adata), pytest.raises(NotCountsError):
        rel.model_class(name).setup_anndata(adata, batch_key="batch")


def test_getters_refuse_a_mixed_query(rel, tiny_models):
    model, _ = tiny_models["ScFormer"]
    query = _mixed("csr")[:, : rel.base_adata().n_vars].copy()
    query.var_names = rel.base_adata().var_names
    with rel.unchanged(query), pytest.raises(NotCountsError):
        model.get_latent_representation(query)
