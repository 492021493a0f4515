"""Property-based tests of tokenization/packing, masking and gene mapping.

Binning has its own property tests (``tests/data/test_binning.py``); here: xTrimoGene's packing of the kept
non-zero genes and its masks, scFormer's seeded ``max_length`` subsampling and masks, the counter-based generator
they draw from, and gene mapping (idempotence, order invariance).
"""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

import cellformers as cf
from cellformers._utils import counter_uniform
from cellformers.data import GeneVocab, strip_ensembl_version, synthetic_counts
from cellformers.module import ScFormerModule, XTrimoGeneModule

G = 24  # genes of the modules under test
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.cache
def _xtrimogene(**kwargs) -> XTrimoGeneModule:
    torch.manual_seed(0)
    tiny = {"encoder_layers": 1, "encoder_heads": 2, "encoder_dim": 8, "decoder_layers": 1, "decoder_heads": 2}
    return XTrimoGeneModule(list(range(G)), G + 3, decoder_dim=8, **tiny, **kwargs).eval()


@functools.cache
def _scformer(**kwargs) -> ScFormerModule:
    torch.manual_seed(0)
    tiny = {"d_model": 8, "n_layers": 1, "n_heads": 2, "d_ff": 8}
    return ScFormerModule(np.arange(G), G + 3, pad_id=G, cls_id=G + 1, n_batch=1, **tiny, **kwargs).eval()


# count-like values: many zeros and many ties
_values = st.integers(1, 6).flatmap(
    lambda b: arrays(np.float32, (b, G), elements=st.sampled_from([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 3.0, 8.0]))
)
_seeds = st.lists(st.integers(0, (1 << 24) - 1), min_size=6, max_size=6, unique=True)


def _perm(rnd, n):
    p = list(range(n))
    rnd.shuffle(p)
    return p


# ------------------------------------------------------------------------------------------------ generator
@SETTINGS
@given(_seeds, st.integers(1, 50), st.integers(0, 50), st.integers(0, 3), st.randoms(use_true_random=False))
def test_counter_uniform_prefix_and_row_invariance(seeds, n, m, salt, rnd):
    s = torch.tensor(seeds)
    u = counter_uniform(s, n, salt=salt)
    assert u.shape == (len(seeds), n)
    assert ((u >= 0) & (u < 1)).all()
    # a cell's numbers depend on its seed and the position only: not on n, nor on the other cells
    torch.testing.assert_close(counter_uniform(s, min(m, n), salt=salt), u[:, : min(m, n)], rtol=0, atol=0)
    p = _perm(rnd, len(seeds))
    torch.testing.assert_close(counter_uniform(s[p], n, salt=salt), u[p], rtol=0, atol=0)


# ------------------------------------------------------------------------------------------------ xTrimoGene
def _kept_sets(index, padding):
    return [sorted(i[~p].tolist()) for i, p in zip(index, padding, strict=True)]


@SETTINGS
@given(arrays(np.bool_, st.tuples(st.integers(1, 6), st.just(G))))
def test_xtrimogene_pack_left_packs_kept_genes_in_order(keep):
    keep_t = torch.from_numpy(keep)
    index, padding = _xtrimogene().pack(keep_t, torch.ones(keep.shape))
    n_keep = keep.sum(1)
    assert index.shape == (keep.shape[0], max(1, int(n_keep.max())))
    assert torch.equal(padding, torch.arange(index.shape[1])[None, :] >= torch.from_numpy(n_keep)[:, None])
    for row, (idx, pad) in enumerate(zip(index, padding, strict=True)):
        assert idx[~pad].tolist() == np.flatnonzero(keep[row]).tolist()  # every kept gene, in gene order
        assert (idx[pad] == G).all()  # padding points past the genes


@SETTINGS
@given(_values, st.integers(1, 8), st.randoms(use_true_random=False))
def test_xtrimogene_pack_cap_keeps_top_values_whatever_the_batch(values, cap, rnd):
    keep = torch.from_numpy(values > 0)
    vals = torch.from_numpy(values)
    index, padding = _xtrimogene().pack(keep, vals, max_length=cap)
    sets = _kept_sets(index, padding)
    for row, chosen in enumerate(sets):
        kept = np.flatnonzero(values[row] > 0)
        assert set(chosen) <= set(kept.tolist())
        assert len(chosen) == min(kept.size, cap)
        left_out = np.setdiff1d(kept, chosen)
        if left_out.size and chosen:  # the cap keeps the most highly expressed genes
            assert values[row, chosen].min() >= values[row, left_out].max()
    # which genes a cell keeps does not depend on the other cells of the minibatch (ties included)
    p = _perm(rnd, values.shape[0])
    index_p, padding_p = _xtrimogene().pack(keep[p], vals[p], max_length=cap)
    assert _kept_sets(index_p, padding_p) == [sets[i] for i in p]
    for row in range(values.shape[0]):
        i1, p1 = _xtrimogene().pack(keep[row : row + 1], vals[row : row + 1], max_length=cap)
        assert _kept_sets(i1, p1)[0] == sets[row]


@SETTINGS
@given(_values, _seeds, st.sampled_from([0.1, 0.3, 0.5, 1.0]), st.sampled_from([0.0, 0.5, 0.9, 2.0]))
def test_xtrimogene_balanced_masks_counts_and_per_cell_determinism(values, seeds, ratio, zero_ratio):
    module = _xtrimogene(balanced_zero_ratio=zero_ratio)
    b = values.shape[0]
    v = torch.from_numpy(values)
    s = torch.tensor(seeds[:b], dtype=torch.float32)[:, None]
    mask, hidden, inp = module.make_mask(v, s, mask_ratio=ratio)
    nonzero = values > 0
    nnz = nonzero.sum(1)
    k_nz = np.round(ratio * nnz).astype(int)  # torch.round and np.round both round half to even
    k_z = np.minimum(np.round(zero_ratio * k_nz).astype(int), G - nnz)
    mask_np = mask.numpy()
    np.testing.assert_array_equal((mask_np & nonzero).sum(1), k_nz)
    np.testing.assert_array_equal((mask_np & ~nonzero).sum(1), k_z)
    assert torch.equal(hidden, mask)  # the paper's default: every masked position is shown as [MASK]
    assert torch.equal(inp, v)
    # evaluation masks depend on the cell only: not on the other cells, their order, or a repeated call
    assert torch.equal(module.make_mask(v, s, mask_ratio=ratio)[0], mask)
    rev = torch.arange(b - 1, -1, -1)
    assert torch.equal(module.make_mask(v[rev], s[rev], mask_ratio=ratio)[0], mask[rev])
    assert torch.equal(module.make_mask(v[-1:], s[-1:], mask_ratio=ratio)[0], mask[-1:])


@SETTINGS
@given(_values, _seeds)
def test_xtrimogene_rate_masks_with_replacement_are_per_cell(values, seeds):
    module = _xtrimogene(mask_strategy="rate", mask_replacement=(0.8, 0.1, 0.1))
    b = values.shape[0]
    v = torch.from_numpy(values)
    s = torch.tensor(seeds[:b], dtype=torch.float32)[:, None]
    mask, hidden, inp = module.make_mask(v, s)
    assert (hidden <= mask).all()
    assert ((inp != v) <= (mask & ~hidden)).all()  # values change only where a random value replaces them
    rev = torch.arange(b - 1, -1, -1)
    out = module.make_mask(v[rev], s[rev])
    for got, want in zip(out, (mask, hidden, inp), strict=True):
        assert torch.equal(got, want[rev])


# ------------------------------------------------------------------------------------------------ scFormer
def _valid_sets(gene_index, valid):
    return [gi[va].tolist() for gi, va in zip(gene_index, valid, strict=True)]


@SETTINGS
@given(
    _values,
    _seeds,
    st.sampled_from([True, False, "fill"]),
    st.integers(1, G + 2),
    st.randoms(use_true_random=False),
)
def test_scformer_seeded_max_length_subsampling(values, seeds, zeros, max_length, rnd):
    module = _scformer(include_zero_genes=zeros, max_length=max_length)
    b = values.shape[0]
    v = torch.from_numpy(values)
    s = torch.tensor(seeds[:b])
    gene_index, valid = module.tokenize(v, s)
    sets = _valid_sets(gene_index, valid)
    nonzero = values > 0
    for row, genes in enumerate(sets):
        assert genes == sorted(genes)  # gene order
        assert (gene_index[row][~valid[row]] == -1).all()  # padding
        n_cand = int(nonzero[row].sum()) if zeros is False else G
        assert len(genes) == min(n_cand, max_length)
        expressed = set(np.flatnonzero(nonzero[row]).tolist())
        if zeros is False:
            assert set(genes) <= expressed
        if zeros == "fill":  # expressed genes first, zero-expressed ones fill the rest
            assert set(genes) >= expressed or set(genes) <= expressed
    # a cell's tokens depend on its seed and values only
    p = _perm(rnd, b)
    gi_p, va_p = module.tokenize(v[p], s[p])
    assert _valid_sets(gi_p, va_p) == [sets[i] for i in p]
    # and the same seed always gives the same subsample
    assert _valid_sets(*module.tokenize(v, s)) == sets


@SETTINGS
@given(_values, _seeds, st.integers(1, G), st.data())
def test_scformer_forced_genes_are_always_kept(values, seeds, max_length, data):
    module = _scformer(include_zero_genes=False, max_length=max_length)
    b = values.shape[0]
    forced = torch.zeros(b, G, dtype=torch.bool)
    for row in range(b):
        cols = data.draw(st.lists(st.integers(0, G - 1), max_size=max_length, unique=True))
        forced[row, cols] = True
    gene_index, valid = module.tokenize(torch.from_numpy(values), torch.tensor(seeds[:b]), forced=forced)
    for row, genes in enumerate(_valid_sets(gene_index, valid)):
        assert set(np.flatnonzero(forced[row].numpy()).tolist()) <= set(genes)


@SETTINGS
@given(_values, _seeds, st.sampled_from([0.0, 0.15, 0.4, 0.75, 1.0]), st.sampled_from([True, False]))
def test_scformer_mask_ratio_and_determinism(values, seeds, ratio, zeros):
    module = _scformer(include_zero_genes=zeros)
    b = values.shape[0]
    v = torch.from_numpy(values)
    s = torch.tensor(seeds[:b])
    gene_index, valid = module.tokenize(v, s)
    mask = module.make_mask(gene_index, valid, s, ratio)
    assert (mask <= valid).all()
    n_valid = valid.sum(1).numpy()
    expected = np.zeros_like(n_valid) if ratio == 0 else np.clip(np.round(n_valid * ratio), 1, n_valid)
    np.testing.assert_array_equal(mask.sum(1).numpy(), expected)
    assert torch.equal(module.make_mask(gene_index, valid, s, ratio), mask)
    rev = torch.arange(b - 1, -1, -1)
    # positions depend on the batch's longest cell; compare the masked genes of each cell
    masked = [gi[mk].tolist() for gi, mk in zip(gene_index, mask, strict=True)]
    gi_r, va_r = module.tokenize(v[rev], s[rev])
    mask_r = module.make_mask(gi_r, va_r, s[rev], ratio)
    assert [gi[mk].tolist() for gi, mk in zip(gi_r, mask_r, strict=True)] == masked[::-1]


# ------------------------------------------------------------------------------------------------ gene mapping
_GENES = list(synthetic_counts(n_cells=1, n_genes=60).var_names)
_ENSEMBL = {g: f"ENSG{i + 1:011d}" for i, g in enumerate(_GENES)}


@functools.cache
def _gene_vocab() -> GeneVocab:
    return GeneVocab(_GENES[:40], name="tiny-40").add_ensembl_ids(_ENSEMBL)


def _name(gene: str, kind: str, version: int) -> str:
    return {
        "symbol": gene,
        "lower": gene.capitalize(),
        "ensembl": _ENSEMBL[gene],
        "ensembl_version": f"{_ENSEMBL[gene]}.{version}",
    }[kind]


_gene_names = st.lists(
    st.tuples(
        st.sampled_from(_GENES), st.sampled_from(["symbol", "lower", "ensembl", "ensembl_version"]), st.integers(1, 30)
    ),
    min_size=2,
    max_size=30,
    unique_by=lambda t: t[0],
).map(lambda items: [_name(*t) for t in items])


def _adata_with_genes(names):
    a = synthetic_counts(n_cells=3, n_genes=len(names))
    a.var_names = names
    return a


@pytest.mark.filterwarnings("ignore:.*repeated names")
@SETTINGS
@given(_gene_names, st.randoms(use_true_random=False))
def test_map_genes_idempotent_and_order_invariant(names, rnd):
    a = _adata_with_genes(names)
    cf.pp.map_genes(a, _gene_vocab(), case_sensitive=False, min_coverage=0.0)
    ids = a.var["cellformers_token_id"].to_numpy()
    uns = a.uns["cellformers_gene_mapping"]
    # each name maps to its gene's token whatever its form (symbol, mouse case, Ensembl id with or without version)
    vocab = _gene_vocab()
    for name, token in zip(names, ids, strict=True):
        gene = next(g for g in _GENES if name in (g, g.capitalize()) or strip_ensembl_version(name) == _ENSEMBL[g])
        assert token == (vocab[gene] if gene in vocab else -1)
    # mapping again changes nothing
    cf.pp.map_genes(a, vocab, case_sensitive=False, min_coverage=0.0)
    np.testing.assert_array_equal(a.var["cellformers_token_id"].to_numpy(), ids)
    assert a.uns["cellformers_gene_mapping"]["n_mapped"] == uns["n_mapped"]
    # permuting the genes permutes the token ids
    p = _perm(rnd, len(names))
    b = _adata_with_genes([names[i] for i in p])
    cf.pp.map_genes(b, vocab, case_sensitive=False, min_coverage=0.0)
    np.testing.assert_array_equal(b.var["cellformers_token_id"].to_numpy(), ids[p])
    assert b.uns["cellformers_gene_mapping"]["coverage"] == uns["coverage"]


@SETTINGS
@given(st.sampled_from(_GENES), st.integers(0, 99))
def test_strip_ensembl_version_is_idempotent(gene, version):
    versioned = f"{_ENSEMBL[gene]}.{version}"
    once = strip_ensembl_version(versioned)
    assert once == _ENSEMBL[gene]
    assert strip_ensembl_version(once) == once
    assert strip_ensembl_version(gene) == gene
