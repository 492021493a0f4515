from __future__ import annotations

import importlib
import os
import shutil
import sys
from pathlib import Path

import pooch
import pytest
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.module.base import LossOutput, auto_move_data

from cellformers.data import _references
from cellformers.model.base import CellformersModel
from cellformers.module import GeneTokenModule


# A tiny linear autoencoder on the shared model plumbing, for tests of code that takes any cellformers model.
class _ToyModule(GeneTokenModule):
    def __init__(self, gene_token_ids, n_tokens, d=8):
        super().__init__(gene_token_ids, n_tokens)
        self.enc = torch.nn.Linear(self.n_genes, d)
        self.dec = torch.nn.Linear(d, self.n_genes)

    def _get_inference_input(self, tensors, **kwargs):
        return {"x": tensors[REGISTRY_KEYS.X_KEY]}

    @auto_move_data
    def inference(self, x):
        x = torch.log1p(self.select_genes(x))
        return {"z": self.enc(x), "x": x}

    def _get_generative_input(self, tensors, inference_outputs, **kwargs):
        return {"z": inference_outputs["z"]}

    def generative(self, z):
        return {"pred": self.dec(z)}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs):
        per_cell = ((generative_outputs["pred"].float() - inference_outputs["x"]) ** 2).mean(-1)
        return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell, extra_metrics={"mse": per_cell.mean()})


class _ToyModel(CellformersModel):
    _model_name = "toy"

    def __init__(self, adata, vocab=None, d=8):
        super().__init__(adata)
        self.vocab, ids = self._resolve_vocab(adata, vocab)
        self.module = _ToyModule(ids, len(self.vocab), d=d)
        self._model_summary_string = "toy"
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata, layer=None, batch_key=None, labels_key=None, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        cls._prepare_setup(adata, layer)
        manager = AnnDataManager(
            fields=cls._anndata_fields(layer, batch_key, labels_key), setup_method_args=setup_method_args
        )
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)

    def get_latent_representation(self, adata=None, indices=None, batch_size=None, *, precision=None):
        return self._predict_batches(
            lambda t: self.module.inference(t[REGISTRY_KEYS.X_KEY])["z"], adata, indices, batch_size, precision
        )

    def get_imputed_expression(self, adata=None, indices=None, batch_size=None, *, precision=None):
        def fn(t):
            pred = self.module.generative(self.module.inference(t[REGISTRY_KEYS.X_KEY])["z"])["pred"]
            out = torch.full((pred.shape[0], self.module.n_input_vars), float("nan"))
            out[:, self.module.input_columns] = pred.float()
            return out

        return self._predict_batches(fn, adata, indices, batch_size, precision)

    def get_gene_embeddings(self):
        import pandas as pd

        names = self.adata.var_names[self.module.input_columns.numpy()]
        return pd.DataFrame(self.module.dec.weight.detach().numpy(), index=names)


REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO_ROOT.parent / "shared"))
SHARED_DATA = SHARED / "data"


def pytest_addoption(parser):
    parser.addoption("--internet-tests", action="store_true", default=False, help="run tests that need the internet")


def pytest_collection_modifyitems(config, items):
    if config.getoption("--internet-tests"):
        return
    skip = pytest.mark.skip(reason="needs --internet-tests")
    for item in items:
        if "internet" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """``../shared/data`` beside the repository; tests that need it are skipped when it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real datasets not found at {SHARED_DATA} (set CELLFORMERS_SHARED to the shared/ folder)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_genes_dir(shared_data_dir) -> Path:
    return shared_data_dir / "genes"


@pytest.fixture(scope="session")
def import_script():
    """``import_script("benchmarks", "throughput")``: a script of a repository folder outside the package, as a module."""
    repo = Path(__file__).resolve().parents[1]

    def load(folder: str, name: str):
        path = str(repo / folder)
        sys.path.insert(0, path)
        try:
            return importlib.import_module(name)
        finally:
            sys.path.remove(path)

    return load


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets an empty cache directory, so nothing is read from or written to the user's cache."""
    import cellformers

    cache = tmp_path_factory.mktemp("cellformers_cache")
    monkeypatch.setattr(cellformers.settings, "_cache_dir", cache)
    return cache


@pytest.fixture(autouse=True, scope="session")
def _float32():
    """Tests run in float32 whatever the CPU, so results do not depend on bf16 units (``precision="auto"``).

    The ``"auto"`` resolution itself is tested with the hardware query monkeypatched (tests/_utils/test_torch.py).
    Session-scoped, so module- and session-scoped fixtures that train or embed are covered too.
    """
    import cellformers

    old = cellformers.settings.precision
    cellformers.settings.precision = "32"
    yield
    cellformers.settings.precision = old


@pytest.fixture(autouse=True)
def _seed():
    import cellformers

    old = cellformers.settings.seed
    cellformers.settings.seed = 0
    yield
    cellformers.settings.seed = old


@pytest.fixture(scope="session")
def toy_model_cls():
    """A tiny linear autoencoder model class built on :class:`cellformers.model.base.CellformersModel`."""
    return _ToyModel


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
