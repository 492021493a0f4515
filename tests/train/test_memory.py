"""Training memory estimate and the default training batch size chosen from it (issue 21, item 7)."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import cellformers as cf
from cellformers.train import _memory

GiB = 2**30
#: The machine of the report: 24 GiB of memory. The chosen batch must plan to use at most 60% of it.
BUDGET = int(0.6 * 24 * GiB)


def _pbmc_like(n_cells=64, n_genes=2000, seed=0):
    """Counts with about half of the genes expressed per cell (pbmc3k's densest cells: ~1,260 of ~2,700 genes)."""
    rng = np.random.default_rng(seed)
    X = sparse.csr_matrix(rng.poisson(0.7, size=(n_cells, n_genes)).astype(np.float32))
    var = pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)])
    return ad.AnnData(X=X, var=var, obs=pd.DataFrame(index=[f"cell{i}" for i in range(n_cells)]))


@pytest.fixture(scope="module")
def xtrimogene_10m():
    adata = _pbmc_like()
    cf.model.XTrimoGene.setup_anndata(adata)
    return cf.model.XTrimoGene(adata)  # the default preset, 10M


def test_the_default_batch_for_the_10m_preset_on_2000_genes_fits_a_24_gib_machine(xtrimogene_10m):
    batch, estimate = _memory.default_train_batch_size(xtrimogene_10m, budget=BUDGET)
    assert estimate <= BUDGET
    assert 8 <= batch <= 128
    assert batch & (batch - 1) == 0  # a power of two
    # the estimate is what caps the batch: a large enough one would not fit
    assert _memory.estimate_training_memory(xtrimogene_10m, 1024) > 24 * GiB


def test_the_estimate_grows_linearly_with_the_batch(xtrimogene_10m):
    e16, e32, e64 = (_memory.estimate_training_memory(xtrimogene_10m, b) for b in (16, 32, 64))
    assert e16 < e32 < e64
    assert (e64 - e32) == pytest.approx(2 * (e32 - e16), rel=1e-6)


def test_probing_leaves_the_model_and_the_random_state_alone(xtrimogene_10m):
    module = xtrimogene_10m.module
    module.train()
    state = {k: v.clone() for k, v in module.state_dict().items()}
    rng = torch.random.get_rng_state()
    _memory.estimate_training_memory(xtrimogene_10m, 8)
    assert module.training
    assert torch.equal(rng, torch.random.get_rng_state())
    assert all(torch.equal(v, module.state_dict()[k]) for k, v in state.items())
    assert all(p.grad is None for p in module.parameters())


def test_a_run_that_will_not_fit_is_warned_about_with_the_estimate(xtrimogene_10m, monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 2 * GiB)
    with pytest.warns(UserWarning, match=r"batch_size=128` needs about [\d.]+ GiB"):
        assert _memory.resolve_train_batch_size(xtrimogene_10m, 128, accelerator="cpu") == 128


def test_no_batch_size_is_chosen_from_the_available_memory(xtrimogene_10m, monkeypatch):
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 8 * GiB)
    batch = _memory.resolve_train_batch_size(xtrimogene_10m, None, accelerator="cpu")
    assert 1 <= batch < 128
    assert _memory.estimate_training_memory(xtrimogene_10m, batch) <= 0.6 * 8 * GiB


def _tiny_scformer():
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    return cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)


def test_plenty_of_memory_keeps_the_usual_default():
    model = _tiny_scformer()
    batch, _ = _memory.default_train_batch_size(model, budget=64 * GiB)
    assert batch == 128


@pytest.mark.parametrize("batch_size", [0, -1, 1.5])
def test_a_bad_batch_size_is_refused(batch_size):
    with pytest.raises(ValueError, match="batch_size"):
        _memory.resolve_train_batch_size(_tiny_scformer(), batch_size)


# ---------------------------------------------------------------- `train` chooses and checks its batch size
def _capture_train(monkeypatch):
    """Replace scvi-tools' training loop by one recording its arguments (the wiring is tested, not the training)."""
    from scvi.model.base import UnsupervisedTrainingMixin

    seen = {}

    def fake_train(self, **kwargs):
        seen.update(kwargs)

    monkeypatch.setattr(UnsupervisedTrainingMixin, "train", fake_train)
    monkeypatch.setattr("cellformers.model.base._base.warn_if_trivial", lambda model: None)
    return seen


def test_train_without_a_batch_size_picks_one_that_fits(xtrimogene_10m, monkeypatch):
    seen = _capture_train(monkeypatch)
    logged = []
    monkeypatch.setattr(_memory.logger, "info", logged.append)  # the package logger does not propagate
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 8 * GiB)
    xtrimogene_10m.train(max_epochs=1, accelerator="cpu")
    assert 1 <= seen["batch_size"] < 128
    assert _memory.estimate_training_memory(xtrimogene_10m, seen["batch_size"]) <= 0.6 * 8 * GiB
    assert any(f"training batch size {seen['batch_size']} (estimated peak memory" in m for m in logged)


def test_train_keeps_the_paper_batch_size_when_it_fits(monkeypatch):
    seen = _capture_train(monkeypatch)
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 64 * GiB)
    _tiny_scformer().train(max_epochs=1, accelerator="cpu")
    assert seen["batch_size"] == 16  # scFormer's section 5


def test_train_warns_before_an_explicit_batch_size_that_will_not_fit(xtrimogene_10m, monkeypatch):
    seen = _capture_train(monkeypatch)
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 2 * GiB)
    with pytest.warns(UserWarning, match=r"batch_size=128` needs about [\d.]+ GiB.*Pass `batch_size=\d+`"):
        xtrimogene_10m.train(max_epochs=1, batch_size=128, accelerator="cpu")
    assert seen["batch_size"] == 128


def test_train_refuses_a_bad_batch_size_before_anything_runs(monkeypatch):
    seen = _capture_train(monkeypatch)
    with pytest.raises(ValueError, match="batch_size"):
        _tiny_scformer().train(max_epochs=1, batch_size=0)
    assert not seen


def test_a_resumed_run_keeps_the_batch_size_of_its_checkpoint(tmp_path, monkeypatch):
    model = _tiny_scformer()
    monkeypatch.setattr(_memory, "available_memory", lambda device=None: 64 * GiB)
    model.train(max_epochs=1, accelerator="cpu", checkpoint_dir=tmp_path, enable_progress_bar=False, batch_size=8)
    from cellformers.train._checkpointing import checkpoint_batch_size

    assert checkpoint_batch_size(tmp_path) == 8
    seen = _capture_train(monkeypatch)
    model.train(max_epochs=2, accelerator="cpu", checkpoint_dir=tmp_path, resume=True)
    assert seen["batch_size"] == 8


def test_the_probe_leaves_no_graph_alive():
    # a pack hook that returned the saved tensor itself kept every graph of the probe alive (reference cycles through
    # operations that save their output), i.e. gigabytes after each `train` call over a large vocabulary
    import gc

    import torch

    import cellformers as cf

    adata = cf.data.synthetic_counts(n_cells=30, n_genes=40)
    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(adata, preset="tiny")

    def graph_tensors():
        gc.collect()
        n = 0
        for o in gc.get_objects():
            try:  # dead weak proxies left by other tests raise on any access
                n += isinstance(o, torch.Tensor) and o.grad_fn is not None
            except ReferenceError:
                continue
        return n

    before = graph_tensors()
    assert _memory.estimate_training_memory(model, batch_size=8) > 0
    assert graph_tensors() <= before  # (other tests' objects may only die meanwhile)
