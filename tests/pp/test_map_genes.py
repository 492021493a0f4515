from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
from scipy import sparse

import cellformers as cf
from cellformers import GeneMappingError, MissingKeyError
from cellformers.data import GeneVocab, synthetic_counts, synthetic_gene_symbols

VOCAB = GeneVocab(["CD4", "CD8A", "ACTB", "GAPDH", "MS4A1", "LYZ"], name="toy")


def _adata(var_names, X=None, **var_columns):
    X = sparse.random(4, len(var_names), density=0.5, format="csr", dtype=np.float32, rng=0) if X is None else X
    a = ad.AnnData(X)
    a.var_names = var_names
    for k, v in var_columns.items():
        a.var[k] = v
    return a


def _mouse_style(symbol: str) -> str:
    return symbol[0] + symbol[1:].lower()


def test_exact_mapping_and_fields():
    adata = _adata(["ACTB", "CD4", "FOO", "LYZ"])
    cf.pp.map_genes(adata, VOCAB)
    assert adata.var["cellformers_token_id"].tolist() == [2, 0, -1, 5]
    assert adata.var["cellformers_token_id"].dtype == np.int64
    info = adata.uns["cellformers_gene_mapping"]
    assert info["n_genes"] == 4
    assert info["n_mapped"] == 3
    assert info["coverage"] == pytest.approx(0.75)
    assert info["vocab_coverage"] == pytest.approx(0.5)
    assert info["n_exact"] == 3
    assert info["unmapped_examples"] == ["FOO"]
    assert info["params"]["vocab"] == "toy"
    assert info["params"]["var_key"] == "cellformers_token_id"
    assert info["params"]["vocab_size"] == len(VOCAB)


def test_logs_coverage(caplog):
    import logging

    logger = logging.getLogger("cellformers")
    logger.addHandler(caplog.handler)
    try:
        cf.pp.map_genes(_adata(["ACTB", "CD4", "FOO", "LYZ"]), VOCAB)
    finally:
        logger.removeHandler(caplog.handler)
    assert "mapped 3 of 4 genes (75.0%) to 'toy'" in caplog.text


def test_key_added_and_copy():
    adata = _adata(["ACTB", "CD4"])
    out = cf.pp.map_genes(adata, VOCAB, key_added="tok", copy=True)
    assert "tok" not in adata.var
    assert "tok" not in adata.uns
    assert out.var["tok"].tolist() == [2, 0]
    assert out.uns["tok"]["params"]["var_key"] == "tok"
    assert cf.pp.map_genes(adata, VOCAB) is None


def test_reference_name(tiny_reference):
    card, path = tiny_reference
    (cf.settings.cache_dir / "references").mkdir()
    (cf.settings.cache_dir / "references" / card.fname).write_bytes(path.read_bytes())
    adata = _adata(["GAPDH", "MS4A1", "X"])
    cf.pp.map_genes(adata, "tiny-5")
    assert adata.var["cellformers_token_id"].tolist() == [3, 4, -1]
    assert adata.uns["cellformers_gene_mapping"]["params"]["vocab"] == "tiny-5"


def test_gene_symbols_column_and_ensembl_var_names():
    vocab = VOCAB.add_ensembl_ids({"CD4": "ENSG00000010610", "ACTB": "ENSG00000075624"})
    adata = _adata(
        ["ENSG00000010610.9", "ENSG00000075624.17", "ENSG00000111640.1", "ENSG00000000001"],
        symbol=["CD4-renamed", np.nan, "GAPDH", "NOPE"],
    )
    cf.pp.map_genes(adata, vocab, gene_symbols="symbol")
    assert adata.var["cellformers_token_id"].tolist() == [0, 2, 3, -1]
    info = adata.uns["cellformers_gene_mapping"]
    assert (info["n_exact"], info["n_ensembl"]) == (1, 2)
    assert info["params"]["gene_symbols"] == "symbol"


def test_ensembl_var_names_without_symbols_vocab_gives_hint():
    adata = _adata(["ENSG00000010610.9", "ENSG00000075624.17"])
    with pytest.raises(GeneMappingError, match="look like Ensembl ids.*gene_symbols="):
        cf.pp.map_genes(adata, VOCAB)


def test_missing_gene_symbols_column():
    with pytest.raises(MissingKeyError, match="gene_symbols='symbol'"):
        cf.pp.map_genes(_adata(["CD4"]), VOCAB, gene_symbols="symbol")


def test_case_insensitive():
    adata = _adata(["Cd4", "Actb", "Gapdh", "Gm12345"])
    with pytest.raises(GeneMappingError, match="case_sensitive=False"):
        cf.pp.map_genes(adata, VOCAB)
    cf.pp.map_genes(adata, VOCAB, case_sensitive=False)
    assert adata.var["cellformers_token_id"].tolist() == [0, 2, 3, -1]
    assert adata.uns["cellformers_gene_mapping"]["n_case_insensitive"] == 3


def test_mouse_style_synthetic_maps_most_genes():
    """Mouse-style symbols (``Cd4``, ``Actb`` …) of real human genes, plus mouse-only genes."""
    human = synthetic_gene_symbols()
    vocab = GeneVocab(human, name="human400")
    mouse = [_mouse_style(g) for g in human[:180]] + [f"Gm{i}" for i in range(10)] + ["1700001C19Rik", "Xist"]
    adata = _adata(mouse, X=sparse.csr_matrix((3, len(mouse)), dtype=np.float32))
    cf.pp.map_genes(adata, vocab, case_sensitive=False)
    info = adata.uns["cellformers_gene_mapping"]
    assert info["n_mapped"] == 180
    assert info["coverage"] == pytest.approx(180 / 192)
    assert info["n_case_insensitive"] == 180 - sum(_mouse_style(g) == g for g in human[:180])


def test_duplicates_first_best_match_wins():
    adata = _adata(["Cd4", "CD4", "ACTB", "ACTB", "LYZ"])
    with pytest.warns(UserWarning, match="2 genes match a token already taken"):
        cf.pp.map_genes(adata, VOCAB, case_sensitive=False)
    # exact CD4 beats the earlier case-insensitive Cd4; the first ACTB wins
    assert adata.var["cellformers_token_id"].tolist() == [-1, 0, 2, -1, 5]
    assert adata.uns["cellformers_gene_mapping"]["n_duplicates"] == 2


def test_below_min_coverage_leaves_adata_unchanged():
    adata = _adata(["CD4", "FOO", "BAR", "BAZ"])
    before_var = adata.var.copy()
    with pytest.raises(GeneMappingError) as err:
        cf.pp.map_genes(adata, VOCAB)
    msg = str(err.value)
    assert "1 of 4 genes (25.0%)" in msg
    assert "min_coverage" in msg
    assert "gene_symbols" in msg
    assert "case_sensitive=False" in msg
    assert adata.var.equals(before_var)
    assert "cellformers_gene_mapping" not in adata.uns
    cf.pp.map_genes(adata, VOCAB, min_coverage=0.25)
    assert adata.uns["cellformers_gene_mapping"]["n_mapped"] == 1


@pytest.mark.parametrize("min_coverage", [-0.1, 1.5])
def test_bad_min_coverage(min_coverage):
    with pytest.raises(ValueError, match="min_coverage"):
        cf.pp.map_genes(_adata(["CD4"]), VOCAB, min_coverage=min_coverage)


def test_bad_vocab_type():
    with pytest.raises(TypeError, match="GeneVocab or a reference name"):
        cf.pp.map_genes(_adata(["CD4"]), ["CD4"])


def test_no_genes():
    with pytest.raises(GeneMappingError, match="no genes"):
        cf.pp.map_genes(ad.AnnData(np.zeros((3, 0), dtype=np.float32)), VOCAB)


@pytest.mark.parametrize("dense", [False, True])
def test_x_untouched(dense):
    adata = synthetic_counts(n_cells=20, n_genes=30, sparse=not dense)
    X = adata.X
    cf.pp.map_genes(adata, GeneVocab(synthetic_gene_symbols()))
    assert adata.X is X
    assert adata.uns["cellformers_gene_mapping"]["coverage"] == 1.0


def test_backed(tmp_path):
    adata = synthetic_counts(n_cells=20, n_genes=30)
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = ad.read_h5ad(tmp_path / "a.h5ad", backed="r")
    cf.pp.map_genes(backed, GeneVocab(synthetic_gene_symbols()[:15]))
    assert backed.isbacked
    assert backed.uns["cellformers_gene_mapping"]["n_mapped"] == 15
    assert (backed.var["cellformers_token_id"].to_numpy()[:15] == np.arange(15)).all()


def test_writes_to_h5ad(tmp_path):
    adata = _adata(["ACTB", "CD4", "FOO", "LYZ"], symbol=["ACTB", "CD4", "FOO", "LYZ"])
    cf.pp.map_genes(adata, VOCAB, gene_symbols="symbol")
    adata.write_h5ad(tmp_path / "m.h5ad")
    back = ad.read_h5ad(tmp_path / "m.h5ad")
    assert back.uns["cellformers_gene_mapping"]["n_mapped"] == 3
    assert back.var["cellformers_token_id"].tolist() == [2, 0, -1, 5]
