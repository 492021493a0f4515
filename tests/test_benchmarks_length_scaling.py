"""The pure helpers of ``benchmarks/xtrimogene_length_scaling.py``: inputs with k non-zero genes, cap coverage, fits."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse


@pytest.fixture(scope="module")
def bench(import_script):
    return import_script("benchmarks", "xtrimogene_length_scaling")


@pytest.fixture(scope="module")
def cells() -> sparse.csr_matrix:
    """40 cells x 300 genes, each cell expressing 20-60 genes (integer counts)."""
    rng = np.random.default_rng(1)
    x = np.zeros((40, 300), dtype=np.float32)
    for row in x:
        genes = rng.choice(300, size=rng.integers(20, 61), replace=False)
        row[genes] = rng.integers(1, 20, size=genes.size)
    return sparse.csr_matrix(x)


@pytest.mark.parametrize("k", [1, 15, 60, 150, 290])
def test_input_with_k_genes_has_exactly_k_summed_real_counts(bench, cells, k):
    vec, used = bench.input_with_k_genes(cells, k, seed=3)
    assert vec.dtype == np.float32
    assert vec.shape == (300,)
    assert np.count_nonzero(vec) == k
    assert np.array_equal(vec, np.round(vec))  # sums of integer counts
    assert np.all(vec <= np.asarray(cells.sum(0)).ravel())
    # the smallest number of cells (in the seeded order) that together express k genes
    order = np.random.default_rng(3).permutation(cells.shape[0])
    dense = cells.toarray()
    assert np.count_nonzero(dense[order[:used]].sum(0)) >= k
    assert used == 1 or np.count_nonzero(dense[order[: used - 1]].sum(0)) < k
    # every kept gene carries exactly the summed counts of those cells
    kept = np.flatnonzero(vec)
    np.testing.assert_array_equal(vec[kept], dense[order[:used]].sum(0)[kept])


def test_input_with_k_genes_is_seeded(bench, cells):
    a, _ = bench.input_with_k_genes(cells, 100, seed=0)
    b, _ = bench.input_with_k_genes(cells, 100, seed=0)
    c, _ = bench.input_with_k_genes(cells, 100, seed=1)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_input_with_k_genes_rejects_impossible_k(bench, cells):
    with pytest.raises(ValueError, match="`k` must be between 1"):
        bench.input_with_k_genes(cells, 0)
    with pytest.raises(ValueError, match="`k` must be between 1"):
        bench.input_with_k_genes(cells, 301)
    sub = cells[:1]
    with pytest.raises(ValueError, match="fewer than `k`"):
        bench.input_with_k_genes(sub, sub.nnz + 1)


def test_pseudo_bulk_and_cap_coverage(bench, cells):
    bulk = bench.pseudo_bulk(cells)
    np.testing.assert_allclose(bulk, cells.toarray().sum(0))
    np.testing.assert_allclose(bench.pseudo_bulk(cells, np.array([2, 5])), cells.toarray()[[2, 5]].sum(0))
    counts = np.array([0, 5, 1, 0, 3, 1], dtype=np.float32)
    cover = bench.cap_coverage(counts, 2)
    assert cover == {"genes_kept": 2, "genes_dropped": 2, "counts_kept_fraction": pytest.approx(0.8)}
    assert bench.cap_coverage(counts, 10)["genes_dropped"] == 0


def test_compare_embeddings_separates_a_common_shift_from_a_change_of_sample(bench):
    rng = np.random.default_rng(0)
    uncapped = {f"s{i}": rng.normal(size=16) + 3.0 for i in range(5)}
    shift = rng.normal(size=16)
    counts = {name: np.arange(10, dtype=np.float32) for name in uncapped}
    # a cap that moves every sample by the same vector keeps what distinguishes them
    emb = {n: {None: u, 4: u + shift} for n, u in uncapped.items()}
    rows = bench.compare_embeddings(emb, (4,), counts)
    assert rows[0]["max_encoder_length"] is None
    assert rows[0]["cosine_min"] <= rows[0]["cosine_mean"] <= 1
    capped = rows[1]
    assert capped["cosine_mean"] < 0.999
    assert capped["centered_cosine_mean"] == pytest.approx(1.0)
    assert capped["nearest_is_own"] == 1.0
    assert capped["genes_dropped_mean"] == 5
    assert capped["counts_kept_fraction_mean"] == pytest.approx(30 / 45)
    # a cap that swaps the samples' embeddings loses them
    names = list(uncapped)
    swapped = {n: {None: uncapped[n], 4: uncapped[names[(i + 1) % 5]]} for i, n in enumerate(names)}
    assert bench.compare_embeddings(swapped, (4,), counts)[1]["nearest_is_own"] == 0.0


def test_fit_length_recovers_linear_and_quadratic_parts(bench):
    lengths = np.array([250, 500, 1000, 2000, 4000, 8000])
    fit = bench.fit_length(lengths, 0.01 + 2e-5 * lengths + 4e-9 * lengths**2)
    assert fit["c1_per_gene"] == pytest.approx(2e-5, rel=1e-6)
    assert fit["c2_per_gene2"] == pytest.approx(4e-9, rel=1e-6)
    assert fit["quadratic_equals_linear_at"] == pytest.approx(5000, rel=1e-6)
    assert fit["max_relative_error"] < 1e-9


def test_real_inputs_span_single_cells_to_bulk(bench, shared_data_dir):
    x, cell_types = bench.load_counts("pbmc3k")
    assert x.shape == (2638, 13714)
    assert cell_types.shape == (2638,)
    vec, used = bench.input_with_k_genes(x, 8000)
    assert np.count_nonzero(vec) == 8000
    assert used > 1
    assert np.count_nonzero(bench.pseudo_bulk(x)) >= 13_700  # the pseudo-bulk expresses (almost) every gene
    # xTrimoGene's 19,264 genes: each pbmc3k gene in the list keeps its counts, the other columns are zero
    mapped, _ = bench.load_counts("scfoundation")
    assert mapped.shape == (2638, 19264)
    genes = pd.read_csv(shared_data_dir / "genes" / "scfoundation_OS_scRNA_gene_index.19264.tsv", sep="\t")
    names = genes["gene_name"].astype(str).tolist()
    var_names = ad.read_h5ad(shared_data_dir / "pbmc3k_processed.h5ad", backed="r").var_names
    for gene in ("CD3E", "LYZ", "MS4A1"):
        col = x[:, var_names.get_loc(gene)].toarray()
        np.testing.assert_array_equal(mapped[:, names.index(gene)].toarray(), col)
    in_list = var_names.isin(names)
    assert mapped.sum() == pytest.approx(x[:, np.flatnonzero(in_list)].sum(), rel=1e-6)
