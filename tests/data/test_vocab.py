from __future__ import annotations

import json

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellformers import MissingKeyError
from cellformers.data import GeneVocab, looks_like_ensembl, strip_ensembl_version


def test_layout_genes_then_specials():
    vocab = GeneVocab(["CD4", "CD8A", "ACTB"], name="toy")
    assert vocab.n_genes == 3
    assert len(vocab) == 6
    assert vocab.tokens == ["CD4", "CD8A", "ACTB", "<pad>", "<cls>", "<mask>"]
    assert (vocab.pad_id, vocab.cls_id, vocab.mask_id) == (3, 4, 5)
    assert vocab["ACTB"] == 2
    assert vocab["<cls>"] == 4
    assert "CD4" in vocab
    assert "<mask>" in vocab
    assert "CD5" not in vocab
    assert vocab.id_to_token([0, 3, 5]) == ["CD4", "<pad>", "<mask>"]
    assert list(vocab) == vocab.tokens
    assert repr(vocab) == "GeneVocab('toy', 3 genes + 3 specials)"


def test_extra_specials_kept_and_required_appended():
    vocab = GeneVocab(["A", "B"], specials=["<cls>", "<eoc>"])
    assert vocab.specials == ("<cls>", "<eoc>", "<pad>", "<mask>")
    assert vocab.cls_id == 2
    assert vocab.pad_id == 4


def test_unknown_token_and_out_of_range():
    vocab = GeneVocab(["A"])
    with pytest.raises(KeyError, match="use `lookup`"):
        vocab["B"]
    with pytest.raises(IndexError):
        vocab.id_to_token([4])


@pytest.mark.parametrize(
    ("genes", "match"),
    [
        ([], "empty"),
        (["A", "B", "A"], "unique"),
        (["A", None], "non-empty strings"),
        (["A", " "], "non-empty strings"),
        (["A", "<pad>"], "also gene names"),
    ],
)
def test_bad_genes(genes, match):
    with pytest.raises(ValueError, match=match):
        GeneVocab(genes)


def test_lookup_case_and_missing():
    vocab = GeneVocab(["CD4", "ACTB", "C1orf159", "Xist"])
    assert vocab.lookup(["CD4", "Cd4", None, np.nan, "", "<pad>", " ACTB "]).tolist() == [0, -1, -1, -1, -1, -1, 1]
    got = vocab.lookup(["Cd4", "actb", "C1ORF159", "XIST", "Foo"], case_sensitive=False)
    assert got.tolist() == [0, 1, 2, 3, -1]
    assert got.dtype == np.int64


def test_case_clash_prefers_exact_then_lower_id():
    vocab = GeneVocab(["abc", "ABC"])
    assert vocab.lookup(["ABC", "abc", "Abc"], case_sensitive=False).tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("ENSG00000111640.15", "ENSG00000111640"),
        ("ENSG00000111640", "ENSG00000111640"),
        ("ENSMUSG00000000001.4", "ENSMUSG00000000001"),
        ("ENSG00000182378.15_PAR_Y", "ENSG00000182378_PAR_Y"),
        (" GAPDH ", "GAPDH"),
        ("RP11-34P13.3", "RP11-34P13.3"),
    ],
)
def test_strip_ensembl_version(raw, expected):
    assert strip_ensembl_version(raw) == expected


def test_looks_like_ensembl():
    assert looks_like_ensembl("ENSG00000111640.15")
    assert looks_like_ensembl("ENSMUSG00000000001")
    assert not looks_like_ensembl("GAPDH")
    assert not looks_like_ensembl(None)


def test_ensembl_lookup():
    vocab = GeneVocab(["GAPDH", "ACTB", "XYZ"], ensembl_ids=["ENSG00000111640.15", "ENSG00000075624", None])
    assert vocab.has_ensembl_ids
    assert vocab.ensembl_ids == ["ENSG00000111640", "ENSG00000075624", None]
    assert vocab.lookup_ensembl(["ENSG00000111640.99", "ENSG00000075624.3", "ENSG00000000003", None]).tolist() == [
        0,
        1,
        -1,
        -1,
    ]
    assert GeneVocab(["A"]).lookup_ensembl(["ENSG00000111640"]).tolist() == [-1]
    with pytest.raises(ValueError, match="entries but there are"):
        GeneVocab(["A", "B"], ensembl_ids=["ENSG00000111640"])


def test_add_ensembl_ids_from_mapping_and_table(tmp_path):
    vocab = GeneVocab(["GAPDH", "ACTB", "NOPE"], name="v")
    v2 = vocab.add_ensembl_ids({"GAPDH": "ENSG00000111640.15"})
    assert v2.ensembl_ids == ["ENSG00000111640", None, None]
    assert vocab.ensembl_ids is None  # the original is unchanged
    table = pd.DataFrame(
        {
            "gene_id": ["ENSG00000075624.17", "ENSG00000075624_PAR_Y", "ENSG00000999999.1", "ENSG00000111640.15"],
            "gene_name": ["ACTB", "ACTB", "ACTB", "GAPDH"],
        }
    )
    path = tmp_path / "genes.csv.gz"
    table.to_csv(path, index=False)
    v3 = vocab.add_ensembl_ids(path)
    assert v3.ensembl_ids == ["ENSG00000111640", "ENSG00000075624", None]
    assert v3.name == "v"
    with pytest.raises(ValueError, match="gene_id"):
        vocab.add_ensembl_ids(pd.DataFrame({"symbol": ["A"]}))


def test_add_ensembl_ids_from_gencode(shared_genes_dir):
    vocab = GeneVocab(["GAPDH", "ACTB", "CD4", "NOT_A_GENE"])
    v2 = vocab.add_ensembl_ids(shared_genes_dir / "gencode_v49_human_genes.csv.gz")
    assert v2.ensembl_ids[:3] == ["ENSG00000111640", "ENSG00000075624", "ENSG00000010610"]
    assert v2.ensembl_ids[3] is None


def test_json_round_trip(tmp_path):
    vocab = GeneVocab(["A", "B", "C"], ensembl_ids=["ENSG00000000001", None, "ENSG00000000003"], name="x")
    path = tmp_path / "vocab.json"
    vocab.to_json(path)
    assert GeneVocab.from_json(path) == vocab
    assert GeneVocab.from_json(path, name="y").name == "y"
    assert json.loads(path.read_text())["format"] == "cellformers-gene-vocab"


def test_from_json_token_id_mapping(tmp_path):
    path = tmp_path / "scgpt_like.json"
    path.write_text(json.dumps({"B": 1, "A": 0, "C": 2, "<pad>": 3, "<cls>": 4, "<eoc>": 5}))
    vocab = GeneVocab.from_json(path, name="ckpt")
    assert vocab.genes == ["A", "B", "C"]
    assert vocab.specials == ("<pad>", "<cls>", "<eoc>", "<mask>")
    assert (vocab.pad_id, vocab.cls_id, vocab.mask_id) == (3, 4, 6)


def test_from_token_ids_renumbers_with_warning():
    with pytest.warns(UserWarning, match="renumbered"):
        vocab = GeneVocab.from_token_ids({"A": 0, "<pad>": 1, "B": 5})
    assert vocab.genes == ["A", "B"]
    assert vocab.pad_id == 2


def test_from_json_rejects_other_files(tmp_path):
    path = tmp_path / "x.json"
    path.write_text(json.dumps(["A", "B"]))
    with pytest.raises(ValueError, match="neither"):
        GeneVocab.from_json(path)
    with pytest.raises(ValueError, match="Not a cellformers"):
        GeneVocab.from_dict({"format": "other"})
    with pytest.raises(ValueError, match="newer cellformers"):
        GeneVocab.from_dict({"format": "cellformers-gene-vocab", "version": 99, "genes": ["A"], "specials": []})


def _adata(var_names, **var_columns):
    a = ad.AnnData(np.zeros((2, len(var_names)), dtype=np.float32))
    a.var_names = var_names
    for k, v in var_columns.items():
        a.var[k] = v
    return a


def test_from_adata_union_in_order():
    a1 = _adata(["CD4", "ACTB", "GAPDH"])
    a2 = _adata(["GAPDH", "MS4A1", "CD4", "LYZ"])
    vocab = GeneVocab.from_adata([a1, a2], name="union")
    assert vocab.genes == ["CD4", "ACTB", "GAPDH", "MS4A1", "LYZ"]
    assert vocab.name == "union"
    assert vocab.ensembl_ids is None
    assert GeneVocab.from_adata({"x": a2, "y": a1}).genes == ["GAPDH", "MS4A1", "CD4", "LYZ", "ACTB"]
    assert GeneVocab.from_adata(a1).genes == ["CD4", "ACTB", "GAPDH"]


def test_from_adata_gene_symbols_records_ensembl():
    a = _adata(
        ["ENSG00000010610.9", "ENSG00000075624", "ENSG00000111640"], symbol=["CD4", "ACTB", np.nan]
    )  # a missing symbol is skipped
    vocab = GeneVocab.from_adata(a, gene_symbols="symbol")
    assert vocab.genes == ["CD4", "ACTB"]
    assert vocab.ensembl_ids == ["ENSG00000010610", "ENSG00000075624"]
    with pytest.raises(MissingKeyError, match="gene_symbols='nope'"):
        GeneVocab.from_adata(a, gene_symbols="nope")


# ---------------------------------------------------------------- property tests
_symbol = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9\-\.]{0,9}", fullmatch=True)
_ensembl = st.one_of(st.none(), st.integers(0, 10**11 - 1).map(lambda i: f"ENSG{i:011d}"))


@settings(max_examples=50, deadline=None)
@given(st.lists(_symbol, min_size=1, max_size=30, unique=True), st.data())
def test_round_trip_property(genes, data):
    ens = data.draw(st.one_of(st.none(), st.lists(_ensembl, min_size=len(genes), max_size=len(genes))))
    vocab = GeneVocab(genes, ensembl_ids=ens, name=data.draw(st.one_of(st.none(), _symbol)))
    assert GeneVocab.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab
    assert vocab.lookup(genes).tolist() == list(range(len(genes)))
    assert vocab.id_to_token(range(len(vocab))) == vocab.tokens
    # a scGPT-style {token: id} mapping keeps every id
    assert GeneVocab.from_token_ids({t: i for i, t in enumerate(vocab.tokens)}).tokens == vocab.tokens
    # case-insensitive lookup of an upper-cased symbol finds a gene with that upper-case form
    found = vocab.lookup([g.upper() for g in genes], case_sensitive=False)
    assert all(vocab.genes[i].upper() == g.upper() for i, g in zip(found, genes, strict=True))
