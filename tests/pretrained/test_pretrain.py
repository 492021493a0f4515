"""``python -m cellformers pretrain`` on two real files: streaming, QC, checkpoint, archive, registry, resume."""

from __future__ import annotations

import dataclasses
import json
import shutil

import anndata as ad
import numpy as np
import pytest
import torch
from scipy import sparse

import cellformers
from cellformers import ChecksumError, GeneMappingError, NotCountsError
from cellformers.__main__ import main
from cellformers.checkpoint._format import file_sha256
from cellformers.data import GeneVocab
from cellformers.model import ScFormer, ScPaLM, XTrimoGene
from cellformers.pp import align_to_reference
from cellformers.pretrained import PretrainedCard, pretrain, register_pretrained
from cellformers.pretrained._corpus import CorpusDataset, index_file

FILES = ("pbmc3k_processed.h5ad", "pbmc_kang2018_ctrl_stim_2000.h5ad")
TINY_XTG = {
    "encoder_dim": 16,
    "encoder_heads": 2,
    "encoder_ff": 32,
    "encoder_layers": 1,
    "decoder_dim": 16,
    "decoder_heads": 2,
    "decoder_ff": 32,
    "decoder_layers": 1,
}
MIN_GENES = 100  # of the test vocabulary's 311 genes (a PBMC cell expresses ~220 of them)


@pytest.fixture(scope="session")
def files(shared_data_dir):
    return [shared_data_dir / f for f in FILES]


@pytest.fixture(scope="session")
def vocab_file(files, tmp_path_factory):
    """300 genes of both files (the most expressed in pbmc3k), 10 genes of pbmc3k only, and one unknown gene."""
    a, b = (ad.read_h5ad(f, backed="r") for f in files)
    common = a.var_names.intersection(b.var_names)
    x = ad.read_h5ad(files[0])
    mean = np.asarray(x[:, common].X.mean(0)).ravel()
    in_b = set(b.var_names)
    only_a = [g for g in a.var_names if g not in in_b][:10]
    genes = [*common[np.argsort(-mean, kind="stable")[:300]], *only_a, "NOT_A_GENE"]
    path = tmp_path_factory.mktemp("vocab") / "vocab.json"
    GeneVocab(genes, name="test-311").to_json(path)
    return path


@pytest.fixture
def registry(monkeypatch):
    monkeypatch.setattr("cellformers.checkpoint._registry.REGISTRY", {})
    monkeypatch.setattr("cellformers.pretrained.REGISTRY", cellformers.checkpoint._registry.REGISTRY)
    return cellformers.checkpoint._registry.REGISTRY


def _cli(files, out, vocab_file, *extra):
    return main(
        [
            "pretrain",
            "--model",
            "xtrimogene",
            "--preset",
            "3M",
            "--data",
            *map(str, files),
            "--out",
            str(out),
            "--vocab",
            str(vocab_file),
            "--max-cells",
            "40",
            "--batch-size",
            "32",
            "--min-genes",
            str(MIN_GENES),
            "--accelerator",
            "cpu",
            "--model-kwargs",
            json.dumps(TINY_XTG),
            *extra,
        ]
    )


def test_pretrain_serve_register_reload(files, vocab_file, tmp_path, server, registry, shared_data_dir):
    result = pretrain(
        "xtrimogene",
        files,
        tmp_path / "run",
        preset="3M",
        vocab=vocab_file,
        epochs=2,
        batch_size=32,
        max_cells=60,
        min_genes=MIN_GENES,
        model_kwargs=TINY_XTG,
        accelerator="cpu",
        name="xtg-test",
        license="CC0-1.0",
    )
    assert result.archive.name == "xtg-test.tar.gz"
    assert (tmp_path / "run" / "xtg-test.tar.gz.sha256").read_text().split()[0] == result.card.sha256
    config = json.loads((result.checkpoint / "config.json").read_text())
    assert config["training_summary"]["n_epochs"] == 2
    assert config["vocabulary"] == "test-311"
    assert "import cellformers as cf" in result.snippet
    assert result.card.sha256 in result.snippet

    # the archive on a local HTTP server, registered by name
    shutil.copyfile(result.archive, server.www / result.archive.name)
    card = dataclasses.replace(result.card, url=f"{server.url}/{result.archive.name}")
    register_pretrained(card)
    adata = ad.read_h5ad(shared_data_dir / FILES[1])[:50].copy()
    loaded = XTrimoGene.from_pretrained("xtg-test", adata, accelerator="cpu")
    assert loaded.pretrained_info_["sha256"] == result.card.sha256
    aligned = align_to_reference(adata, result.model.get_var_names())
    np.testing.assert_array_equal(loaded.get_latent_representation(), result.model.get_latent_representation(aligned))

    # a tampered archive is refused
    data = bytearray(result.archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (server.www / "tampered.tar.gz").write_bytes(bytes(data))
    bad = dataclasses.replace(result.card, name="xtg-tampered", url=f"{server.url}/tampered.tar.gz")
    register_pretrained(bad)
    with pytest.raises(ChecksumError):
        XTrimoGene.from_pretrained("xtg-tampered", adata, accelerator="cpu")
    assert not (cellformers.settings.cache_dir / "pretrained" / bad.filename).exists()


def test_resume(files, vocab_file, tmp_path, capsys):
    out = tmp_path / "run"
    assert _cli(files, out, vocab_file, "--epochs", "1") == 0
    ckpt = torch.load(out / "lightning" / "train" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 0
    steps = ckpt["global_step"]
    with pytest.raises(FileExistsError, match="--resume"):
        _cli(files, out, vocab_file, "--epochs", "2")
    # bad input: the CLI prints the package's one-line error and exits 2 (no traceback)
    capsys.readouterr()
    assert _cli(files, out, vocab_file, "--epochs", "2", "--resume", "--max-cells", "30") == 2
    assert "max_cells" in capsys.readouterr().err
    assert _cli(files, out, vocab_file, "--epochs", "2", "--resume") == 0
    ckpt = torch.load(out / "lightning" / "train" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 1
    assert ckpt["global_step"] == 2 * steps
    history = json.loads((out / "history.json").read_text())
    assert history["train_loss"]["index"] == [0.0, 1.0]
    config = json.loads((out / "checkpoint" / "config.json").read_text())
    assert config["training_summary"]["n_epochs"] == 2
    assert _cli(files, tmp_path / "empty", vocab_file, "--resume") == 2
    assert "CheckpointError: Nothing to resume" in capsys.readouterr().err


def test_index_qc_and_streaming(files, vocab_file, tmp_path):
    vocab = GeneVocab.from_json(vocab_file)
    corpus = index_file(files[0], vocab, min_genes=MIN_GENES, val_fraction=0.2)
    full = ad.read_h5ad(files[0])
    aligned = align_to_reference(full, vocab.genes, min_coverage=0.0)
    n_expr = np.asarray((aligned.X > 0).sum(1)).ravel()
    np.testing.assert_array_equal(corpus.rows, np.flatnonzero(n_expr > MIN_GENES))  # App. 1 QC on mapped genes
    assert 0.1 < corpus.validation.mean() < 0.3

    # two ranks: disjoint, equal shares; rows are the file's counts over the vocabulary's genes
    seen = []
    for rank in (0, 1):
        ds = CorpusDataset([corpus], vocab.n_genes, split="train", block_size=64, seed=1)
        ds.rank, ds.world_size, ds.epoch = rank, 2, 3
        items = list(ds)
        assert len(items) == len(ds) == int((~corpus.validation).sum()) // 2
        seen.append({float(it["cell_seed"]) for it in items})
        for it in items[:20]:
            row = corpus.rows[corpus.seeds == float(it["cell_seed"])][0]
            np.testing.assert_array_equal(it["X"].numpy(), aligned.X[row].toarray().ravel())
    assert not seen[0] & seen[1]
    ds.epoch = 4
    assert [float(i["cell_seed"]) for i in ds][:10] != [float(i["cell_seed"]) for i in items][:10]  # reshuffled

    # not counts, no gene in the vocabulary
    lognorm = full[:30].copy()
    lognorm.X = sparse.csr_matrix(np.log1p(lognorm.X.toarray()))
    lognorm.write_h5ad(tmp_path / "lognorm.h5ad")
    with pytest.raises(NotCountsError, match="lognorm.h5ad"):
        index_file(tmp_path / "lognorm.h5ad", vocab)
    with pytest.raises(GeneMappingError):
        index_file(files[0], GeneVocab(["NOT_A_GENE", "NOR_THIS"]))


def test_scformer_and_scpalm(files, vocab_file, tmp_path):
    result = pretrain(
        "scformer",
        files,
        tmp_path / "scformer",
        vocab=vocab_file,
        epochs=1,
        batch_size=32,
        max_cells=30,
        min_genes=MIN_GENES,
        model_kwargs={"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16, "max_length": 64},
        accelerator="cpu",
    )
    assert isinstance(result.model, ScFormer)
    assert result.card.model_class == "cellformers.model.ScFormer"
    with pytest.raises(ValueError, match=r"`preset` of ScFormer must be one of \['paper', 'tiny'\], got '10M'"):
        pretrain("scformer", files, tmp_path / "preset", preset="10M", vocab=vocab_file)
    result = pretrain(
        "scpalm",
        files,
        tmp_path / "scpalm",
        preset="small",
        vocab=vocab_file,
        epochs=1,
        batch_size=32,
        max_cells=30,
        min_genes=MIN_GENES,
        model_kwargs={"n_hidden": 16, "n_layers": 1, "n_heads": 2, "n_intermediate": 16, "n_pathway_tokens": 8},
        accelerator="cpu",
    )
    assert isinstance(result.model, ScPaLM)
    assert bool(result.model.module.trained_stages.all())
    history = json.loads((tmp_path / "scpalm" / "history.json").read_text())
    assert {"stage1/train_loss", "stage2/train_loss"} <= set(history)
    assert file_sha256(result.archive) == result.card.sha256
    assert PretrainedCard.from_archive(result.archive, name="x").model_class == "cellformers.model.ScPaLM"


@pytest.mark.slow
def test_ddp_on_cpu(files, vocab_file, tmp_path):
    """Two DDP processes (gloo) read disjoint, equal shares: each runs ceil((n_train // 2) / batch) steps an epoch."""
    import math
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    args = [sys.executable, "-m", "cellformers", "pretrain", "--model", "xtrimogene", "--preset", "3M", "--data"]
    args += [*map(str, files), "--out", str(out), "--vocab", str(vocab_file), "--max-cells", "50", "--epochs", "2"]
    args += ["--batch-size", "8", "--min-genes", str(MIN_GENES), "--accelerator", "cpu", "--devices", "2"]
    args += ["--strategy", "ddp", "--seed", "0", "--model-kwargs", json.dumps(TINY_XTG)]
    env = {**os.environ, "CELLFORMERS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("register_pretrained(") == 1  # printed by the main process only
    vocab = GeneVocab.from_json(vocab_file)
    n_train = sum(
        int((~index_file(f, vocab, min_genes=MIN_GENES, max_cells=50, val_fraction=0.02).validation).sum())
        for f in files
    )
    ckpt = torch.load(out / "lightning" / "train" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 2 * math.ceil((n_train // 2) / 8)


def test_cli_no_progress_bar_turns_bars_off(monkeypatch, tmp_path):
    import cellformers.pretrained._recipe as pretrain_mod
    from cellformers._settings import settings

    seen = {}

    def fake_pretrain(*args, **kwargs):
        seen["progress_bar"] = settings.progress_bar

    monkeypatch.setattr(pretrain_mod, "pretrain", fake_pretrain)
    monkeypatch.setattr(settings, "progress_bar", True)
    common = ["pretrain", "--model", "xtrimogene", "--data", str(tmp_path), "--out", str(tmp_path / "o")]
    assert main(common) == 0
    assert seen["progress_bar"] is True
    assert main([*common, "--no-progress-bar"]) == 0
    assert seen["progress_bar"] is False
    assert settings.progress_bar is True  # only for that command: the CLI also runs inside notebooks
