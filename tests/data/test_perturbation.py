from __future__ import annotations

import http.server
import threading
import zipfile
from functools import partial

import numpy as np
import pytest
import scanpy as sc

from cellformers import ChecksumError
from cellformers.data import (
    PERTURBATION_DATASETS,
    PerturbationDatasetCard,
    canonical_perturbation,
    gears_dataset,
    gears_de_genes,
    synthetic_perturbation,
)


def test_canonical_perturbation():
    assert canonical_perturbation("KLF1+ctrl") == "KLF1"
    assert canonical_perturbation("ctrl+KLF1") == "KLF1"
    assert canonical_perturbation("SET+KLF1") == "KLF1+SET"
    assert canonical_perturbation("ctrl") == "ctrl"


def test_synthetic_perturbation_layout():
    adata = synthetic_perturbation(n_control=50, n_per_perturbation=20, n_genes=30)
    assert adata.n_obs == 50 + 5 * 20
    assert set(adata.obs["perturbation"].cat.categories) >= {"ctrl", "CD3D", "CD3D+CD4"}
    X = adata.X.toarray()
    assert np.allclose(X, X.round())
    assert X.min() >= 0
    eff = adata.uns["true_log_effect"]["CD3D"]
    assert eff[list(adata.var_names).index("CD3D")] == pytest.approx(2.0)


def test_public_cards_are_pinned():
    for card in PERTURBATION_DATASETS.values():
        alg, digest = card.known_hash.split(":")
        assert alg == "md5"
        assert len(digest) == 32
        assert card.url.startswith("https://dataverse.harvard.edu/api/access/datafile/")
        assert card.member.endswith("perturb_processed.h5ad")


@pytest.fixture
def gears_server(tmp_path):
    """A GEARS-format archive served from 127.0.0.1, like Harvard Dataverse serves norman.zip."""
    adata = synthetic_perturbation(n_control=40, n_per_perturbation=15, n_genes=25, random_state=3)
    counts = adata.X.toarray()
    symbols = list(adata.var_names)
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    adata.var["gene_name"] = symbols
    adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    del adata.obs["perturbation"]
    del adata.uns["true_log_effect"]
    names = adata.obs["condition_name"].astype(str).unique()
    adata.uns["top_non_dropout_de_20"] = {n: np.asarray(adata.var_names[:3]) for n in names}
    src = tmp_path / "src"
    (src / "toy").mkdir(parents=True)
    adata.write_h5ad(src / "toy" / "perturb_processed.h5ad")
    with zipfile.ZipFile(tmp_path / "toy.zip", "w") as zf:
        zf.write(src / "toy" / "perturb_processed.h5ad", "toy/perturb_processed.h5ad")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/toy.zip", tmp_path / "toy.zip", counts, symbols
    server.shutdown()


def test_gears_loader_offline_roundtrip(gears_server):
    import pooch

    url, path, counts, symbols = gears_server
    card = PerturbationDatasetCard(
        name="toy",
        url=url,
        known_hash=f"md5:{pooch.file_hash(str(path), alg='md5')}",
        fname="toy.zip",
        member="toy/perturb_processed.h5ad",
    )
    adata = gears_dataset(card)
    assert list(adata.var_names) == symbols
    assert adata.var["gears_id"].iloc[0] == "ENSG00000000000"
    np.testing.assert_allclose(adata.X.toarray(), counts)  # counts recovered from GEARS' log1p values
    assert "log1p" in adata.layers
    assert set(adata.obs["perturbation"].cat.categories) == {"ctrl", "CD3D", "CD3E", "CD4", "CD3D+CD3E", "CD3D+CD4"}
    de = gears_de_genes(adata)
    assert de["CD3D"] == symbols[:3]
    # second call: served from the cache, no download
    assert gears_dataset(card).n_obs == adata.n_obs


def test_gears_loader_rejects_wrong_hash(gears_server):
    url, *_ = gears_server
    card = PerturbationDatasetCard(
        name="toy", url=url, known_hash="md5:" + "0" * 32, fname="toy.zip", member="toy/perturb_processed.h5ad"
    )
    with pytest.raises(ChecksumError, match="pinned hash"):
        gears_dataset(card)


def test_unknown_dataset_name():
    with pytest.raises(ValueError, match="norman"):
        gears_dataset("nope")


@pytest.mark.internet
def test_adamson_download():
    adata = gears_dataset("adamson")
    assert adata.n_vars == 5060
    assert "ctrl" in adata.obs["perturbation"].cat.categories
