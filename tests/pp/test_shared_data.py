"""Integration tests on the real datasets in ``../shared/data`` (skipped when that folder is absent)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import cellformers as cf
from cellformers.data import GeneVocab, synthetic_gene_symbols


@pytest.fixture(scope="module")
def pbmc3k_path(shared_data_dir):
    return shared_data_dir / "pbmc3k_processed.h5ad"


@pytest.fixture(scope="module")
def pbmc3k(pbmc3k_path):
    return ad.read_h5ad(pbmc3k_path)


@pytest.mark.parametrize(
    ("reference", "n_mapped"),
    [("scfoundation-19264", 11213), ("scgpt-default", 11539)],
)
def test_pbmc3k_coverage(pbmc3k, seeded_references, reference, n_mapped):
    adata = pbmc3k.copy()
    cf.pp.map_genes(adata, reference)
    info = adata.uns["cellformers_gene_mapping"]
    assert info["params"]["vocab"] == reference
    assert info["n_genes"] == 13714
    # hg19 10x symbols: lncRNAs and clone names (RP11-…, AC…) are outside these protein-coding-centred lists
    assert info["n_mapped"] == n_mapped
    assert info["coverage"] == pytest.approx(n_mapped / 13714)
    assert 0.8 < info["coverage"] < 0.9
    ids = adata.var["cellformers_token_id"].to_numpy()
    assert np.unique(ids[ids >= 0]).size == n_mapped
    vocab = GeneVocab.load(reference)
    mapped = ids >= 0
    assert vocab.id_to_token(ids[mapped][:50]) == list(adata.var_names[mapped][:50])


def test_mouse_style_symbols_map_case_insensitively(seeded_references):
    """There is no mouse dataset in shared data: mouse-style symbols of real human genes plus mouse-only genes."""
    human = synthetic_gene_symbols()
    mouse = [g[0] + g[1:].lower() for g in human] + [f"Gm{i}" for i in range(30)] + ["Xist", "1700001C19Rik"]
    mouse += [f"{i}930{i}L0{i}Rik" for i in range(8)]
    adata = ad.AnnData(sparse.csr_matrix((5, len(mouse)), dtype=np.float32))
    adata.var_names = mouse
    with pytest.raises(cf.GeneMappingError, match="case_sensitive=False"):
        cf.pp.map_genes(adata, "scfoundation-19264")
    cf.pp.map_genes(adata, "scfoundation-19264", case_sensitive=False)
    info = adata.uns["cellformers_gene_mapping"]
    assert info["n_mapped"] == 400
    assert info["coverage"] == pytest.approx(400 / 440)


def test_pbmc3k_binning_backed_equals_in_memory(pbmc3k, pbmc3k_path):
    adata = pbmc3k.copy()
    cf.pp.bin_values(adata)
    backed = ad.read_h5ad(pbmc3k_path, backed="r")
    cf.pp.bin_values(backed, chunk_size=500)
    binned = adata.layers["X_binned"]
    assert (backed.layers["X_binned"] != binned).nnz == 0
    assert binned.nnz == adata.X.nnz
    assert binned.data.min() == 1
    # every cell uses the top bin
    assert (binned.max(axis=1).toarray().ravel() == 50).all()
    backed.file.close()


def test_pbmc3k_counts_and_filter(pbmc3k):
    cf.pp.check_counts(pbmc3k)
    keep, n_genes = cf.pp.filter_cells_by_genes(pbmc3k, min_genes=201, inplace=False)  # App. 1: > 200 genes
    # obs['n_genes'] was computed before the tutorial dropped genes seen in fewer than 3 cells
    assert (n_genes <= pbmc3k.obs["n_genes"].to_numpy()).all()
    assert (n_genes >= pbmc3k.obs["n_genes"].to_numpy() - 50).all()
    # the tutorial kept cells with >= 200 genes (of all genes), as scanpy's min_genes=200 does
    assert keep.sum() == (n_genes > 200).sum()
    assert keep.sum() >= 2600


def test_pbmc68k_counts_from_lognorm(shared_data_dir):
    adata = ad.read_h5ad(shared_data_dir / "pbmc68k_reduced.h5ad")
    with pytest.raises(cf.NotCountsError, match="counts_from_normalized"):
        cf.pp.check_counts(adata, layer="lognorm")
    cf.pp.counts_from_normalized(adata, layer="lognorm")
    assert adata.uns["counts_from_normalized"]["params"]["log_base"] == "e"
    np.testing.assert_allclose(adata.layers["counts"].toarray(), adata.X.toarray(), rtol=2e-3, atol=1e-6)
    cf.pp.check_counts(adata, layer="counts")


def test_zheng_counts_from_log2cpm(shared_data_dir):
    adata = ad.read_h5ad(shared_data_dir / "pbmc_zheng_sorted_3500.h5ad")
    cf.pp.counts_from_normalized(adata, layer="log2cpm")
    assert adata.uns["counts_from_normalized"]["params"]["log_base"] == "2"
    assert adata.uns["counts_from_normalized"]["n_inexact_cells"] == 0
    diff = adata.layers["counts"] - adata.X
    assert abs(diff).max() < 1e-6
