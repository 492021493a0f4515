"""xTrimoGene's ``decoder_chunk_size``: the decoder runs per checkpointed chunk of cells in training."""

from __future__ import annotations

import pytest
import torch
from scvi import REGISTRY_KEYS

import cellformers as cf
from cellformers._constants import REGISTRY_KEYS_CF
from cellformers.module import XTrimoGeneModule
from cellformers.train import _memory

TINY = {"encoder_layers": 1, "encoder_heads": 2, "encoder_dim": 16, "decoder_layers": 2, "decoder_heads": 2}


def _tensors(n_cells=7, n_genes=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 6, generator=g)
    x = x * (torch.rand(n_cells, n_genes, generator=g) > 0.7)
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS_CF.CELL_SEED: torch.arange(n_cells, dtype=torch.float32)[:, None]}


def _loss_and_grads(chunk, redraw_now=False, **kwargs):
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(40)), 43, **{**TINY, "decoder_chunk_size": chunk, **kwargs})
    module.train()
    if redraw_now:  # the step about to run redraws the random features
        module.decoder.calls_since_last_redraw = module.decoder.feature_redraw_interval
    _, gen, loss = module(_tensors())
    loss.loss.backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters() if p.grad is not None}
    return loss.loss.detach(), gen["prediction"].detach(), grads, module


@pytest.mark.parametrize("chunk", [1, 3, 7, 100])
def test_chunked_decoding_gives_the_unchunked_loss_and_gradients(chunk):
    # every decoder step is per cell (the Performer's key stabiliser is per cell and head), so without dropout
    # splitting the minibatch changes nothing but memory
    ref_loss, ref_pred, ref_grads, _ = _loss_and_grads(None)
    loss, pred, grads, _ = _loss_and_grads(chunk)
    torch.testing.assert_close(pred, ref_pred, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    assert grads.keys() == ref_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunked_decoding_counts_one_feature_redraw_step_per_minibatch():
    # the recomputation in the backward pass must not count (or trigger) a redraw of the random features
    _, _, _, module = _loss_and_grads(2, feature_redraw_interval=1000)
    assert module.decoder.calls_since_last_redraw == 1


def test_a_redraw_happens_before_the_forward_pass_not_in_the_recomputation():
    # were the features redrawn when a chunk is recomputed, the gradients would belong to other features
    ref_loss, _, ref_grads, ref = _loss_and_grads(None, redraw_now=True)
    loss, _, grads, module = _loss_and_grads(2, redraw_now=True)
    assert module.decoder.calls_since_last_redraw == ref.decoder.calls_since_last_redraw == 1
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-7)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, ref_grads[name], rtol=1e-4, atol=1e-6, msg=name)


def test_chunking_is_training_only():
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(40)), 43, **TINY, decoder_chunk_size=2).eval()
    with torch.no_grad():
        _, gen, _ = module(_tensors())
    assert gen["prediction"].shape == (7, 40)


@pytest.mark.parametrize("bad", [0, -2, True])
def test_bad_chunk_size_is_refused(bad):
    with pytest.raises(ValueError, match="decoder_chunk_size"):
        XTrimoGeneModule(list(range(40)), 43, **TINY, decoder_chunk_size=bad)


def test_memory_estimate_counts_the_decoder_for_one_chunk():
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=300)
    cf.model.XTrimoGene.setup_anndata(adata)
    plain = cf.model.XTrimoGene(adata, preset="tiny")
    chunked = cf.model.XTrimoGene(adata, preset="tiny", decoder_chunk_size=2)
    a, b = (_memory.estimate_training_memory(m, batch_size=32) for m in (plain, chunked))
    assert b < a
    # at or below the chunk size, chunking changes nothing
    a2, b2 = (_memory.estimate_training_memory(m, batch_size=2) for m in (plain, chunked))
    assert b2 == pytest.approx(a2, rel=0.02)
    assert chunked.module.decoder_chunk_size == 2
    assert not chunked.module.chunk_in_eval


def test_chunked_model_trains():
    adata = cf.data.synthetic_counts(n_cells=24, n_genes=30)
    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(adata, preset="tiny", decoder_chunk_size=3)
    model.train(max_epochs=1, batch_size=8, enable_progress_bar=False)
    assert model.is_trained_
