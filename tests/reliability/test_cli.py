"""``python -m cellformers pretrain`` with bad input: one line naming the package error, a non-zero exit, and no
download before the data were checked."""

from __future__ import annotations

import numpy as np
import pytest
import scanpy as sc
from scipy import sparse

from cellformers.__main__ import main
from cellformers.data import GeneVocab, synthetic_counts


def _write(tmp_path, name, normalize_from=None):
    adata = synthetic_counts(n_cells=700, n_genes=30, random_state=0)
    if normalize_from is not None:
        norm = adata[normalize_from:].copy()
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        X = adata.X.toarray()
        X[normalize_from:] = norm.X.toarray()
        adata.X = sparse.csr_matrix(X)
    path = tmp_path / name
    adata.write_h5ad(path)
    return path, adata


@pytest.fixture
def no_download(monkeypatch):
    def refuse(*args, **kwargs):
        msg = "the vocabulary was resolved (downloaded) before the data were checked"
        raise AssertionError(msg)

    monkeypatch.setattr("cellformers.pretrained._convert.resolve_vocab", refuse)


def _run(capsys, *args):
    code = main(["pretrain", "--accelerator", "cpu", "--epochs", "1", *map(str, args)])
    err = capsys.readouterr().err.strip()
    return code, err


@pytest.mark.parametrize("normalize_from", [0, 500], ids=["normalized", "normalized-after-row-500"])
def test_normalized_data_fail_in_one_line_before_any_download(tmp_path, capsys, no_download, normalize_from):
    path, _ = _write(tmp_path, "data.h5ad", normalize_from)
    code, err = _run(capsys, "--model", "xtrimogene", "--data", path, "--out", tmp_path / "out")
    assert code != 0
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1
    assert "NotCountsError" in err
    assert not (tmp_path / "out").exists()


def test_a_missing_file_fails_in_one_line(tmp_path, capsys, no_download):
    code, err = _run(capsys, "--model", "xtrimogene", "--data", tmp_path / "nope.h5ad", "--out", tmp_path / "out")
    assert code != 0
    assert len(err.splitlines()) == 1
    assert "FileNotFoundError" in err


def test_a_bad_argument_fails_in_one_line(tmp_path, capsys):
    path, adata = _write(tmp_path, "data.h5ad")
    vocab = tmp_path / "vocab.json"
    GeneVocab(list(adata.var_names)).to_json(vocab)
    code = main(
        [
            "pretrain",
            "--model",
            "xtrimogene",
            "--data",
            str(path),
            "--out",
            str(tmp_path / "out"),
            "--vocab",
            str(vocab),
        ]
        + ["--batch-size", "0", "--accelerator", "cpu"]
    )
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1
    assert "batch_size" in err


def test_every_chunk_of_a_file_is_checked_while_indexing(tmp_path):
    from cellformers import NotCountsError
    from cellformers.pretrained._corpus import index_file

    path, adata = _write(tmp_path, "data.h5ad", normalize_from=600)
    vocab = GeneVocab(list(adata.var_names))
    with pytest.raises(NotCountsError, match="rows 512"):
        index_file(path, vocab, min_genes=0, chunk_size=256)
    assert np.isfinite(adata.X.toarray()).all()
