from __future__ import annotations

import shutil

import pooch
import pytest

from cellformers.data import _references


@pytest.fixture
def seeded_references(shared_genes_dir, _isolated_cache):
    """Copy the shared gene lists into the (per-test) cache under the names pooch expects: no download happens."""
    folder = _isolated_cache / "references"
    folder.mkdir(parents=True, exist_ok=True)
    for src, card in (
        ("scfoundation_OS_scRNA_gene_index.19264.tsv", _references.REFERENCES["scfoundation-19264"]),
        ("scgpt_default_gene_vocab.json", _references.REFERENCES["scgpt-default"]),
    ):
        shutil.copyfile(shared_genes_dir / src, folder / card.fname)
    return folder


@pytest.fixture
def tiny_reference(tmp_path, monkeypatch):
    """Register a tiny gene-index reference ``"tiny-5"`` whose file is served from ``tmp_path/served``."""
    served = tmp_path / "served"
    served.mkdir()
    path = served / "tiny_gene_index.tsv"
    path.write_text("gene_name\tindex\nCD4\t0\nCD8A\t1\nACTB\t2\nGAPDH\t3\nMS4A1\t4\n")
    card = _references.ReferenceCard(
        name="tiny-5",
        url="https://example.invalid/tiny_gene_index.tsv",
        sha256=pooch.file_hash(str(path)),
        fname=path.name,
        format="gene_index_tsv",
        n_genes=5,
        description="test",
        citation="test",
        license="test",
    )
    monkeypatch.setitem(_references.REFERENCES, card.name, card)
    return card, path
