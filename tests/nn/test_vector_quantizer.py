from __future__ import annotations

import pytest
import torch

from cellformers.nn import VectorQuantizer, codebook_usage


@pytest.mark.parametrize("affine", ["running", "learned", "none"])
def test_shapes_and_nearest_code(affine):
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=8, n_dim=4, affine=affine)
    e = torch.randn(3, 5, 4, requires_grad=True)
    out = vq(e)
    assert out.quantized.shape == (3, 5, 4)
    assert out.indices.shape == (3, 5)
    assert out.loss.ndim == 0
    codebook = vq.get_codebook()
    dist = torch.cdist(e.detach().reshape(-1, 4), codebook.detach())
    torch.testing.assert_close(out.indices.reshape(-1), dist.argmin(1))
    # forward value is the code, the gradient passes straight through to the encoder
    torch.testing.assert_close(out.quantized.detach(), codebook.detach()[out.indices])
    out.quantized.sum().backward()
    torch.testing.assert_close(e.grad, torch.ones_like(e))
    assert 1 <= float(out.perplexity) <= 8
    assert torch.equal(vq.quantize(e), out.indices)


def test_loss_trains_codebook_and_commitment():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, n_dim=2, affine="none", beta=0.25, dead_code_threshold=0)
    e = torch.randn(64, 2, requires_grad=True)
    out = vq(e)
    out.loss.backward()
    assert vq.codebook.grad is not None
    assert vq.codebook.grad.abs().sum() > 0
    assert e.grad is not None
    assert e.grad.abs().sum() > 0


def test_running_affine_matches_encoder_statistics():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=64, n_dim=3, affine="running", momentum=1.0)
    e = torch.randn(500, 3) * torch.tensor([10.0, 0.1, 1.0]) + torch.tensor([5.0, -3.0, 0.0])
    vq(e)
    cb = vq.get_codebook().detach()
    torch.testing.assert_close(cb.mean(0), e.mean(0), atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(cb.var(0, unbiased=False), e.var(0, unbiased=False), atol=1e-2, rtol=1e-2)
    vq.eval()
    before = vq.running_e_mean.clone()
    vq(e + 100)
    assert torch.equal(vq.running_e_mean, before)  # no update in eval mode


def test_dead_codes_are_replaced_by_encoder_outputs():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=16, n_dim=2, affine="none", dead_code_threshold=1, replace_interval=1)
    with torch.no_grad():
        vq.codebook.data[1:] = 1e3  # only code 0 is near the data
    e = torch.randn(256, 2) * 0.1
    out = vq(e)
    assert int(out.n_used) == 1
    assert int(vq.n_replaced) == 15
    # replaced codes now sit on encoder outputs, so the next call uses many codes
    assert int(vq(e).n_used) > 8
    assert vq.code_counts.sum() == 2 * 256
    vq.reset_usage()
    assert vq.code_counts.sum() == 0


def test_sync_update_gives_codebook_task_gradient():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, n_dim=2, affine="none", sync_nu=0.5, dead_code_threshold=0)
    out = vq(torch.randn(10, 2))
    out.quantized.sum().backward()
    assert vq.codebook.grad.abs().sum() > 0


def test_codebook_usage():
    stats = codebook_usage(torch.tensor([5.0, 5.0, 0.0, 0.0]))
    assert stats["n_used"] == 2
    assert stats["n_dead"] == 2
    assert stats["perplexity"] == pytest.approx(2.0)
    assert stats["fraction_used"] == 0.5


def test_bad_affine():
    with pytest.raises(ValueError, match="affine"):
        VectorQuantizer(affine="ema")


def test_per_position_codebooks_separate_cells_not_positions():
    # tokens = a large position offset + a small per-cell signal: a shared codebook spends its codes on the
    # positions, per-position codebooks on the cells
    torch.manual_seed(0)
    n_pos, d = 6, 4
    offsets = torch.randn(n_pos, d) * 50
    e = offsets + torch.randn(256, n_pos, d)
    shared = VectorQuantizer(n_codes=8, n_dim=d, dead_code_threshold=0, warmup_steps=1)
    per_pos = VectorQuantizer(n_codes=8, n_dim=d, codebook="per_position", n_positions=n_pos, warmup_steps=1)
    for vq in (shared, per_pos):
        vq(e)  # warm-up call, then k-means initialisation
        assert bool(vq.initialized)
    distinct = lambda idx: sum(len(idx[:, j].unique()) for j in range(n_pos)) / n_pos
    assert distinct(shared(e).indices) <= 2
    out = per_pos(e)
    assert distinct(out.indices) >= 6
    assert per_pos.get_codebook().shape == (n_pos, 8, d)
    assert per_pos.code_counts.shape == (n_pos * 8,)
    # each token is replaced by the nearest code of its own position
    torch.testing.assert_close(out.quantized, per_pos.get_codebook()[torch.arange(n_pos), out.indices])
    g = per_pos.global_indices(out.indices)
    assert int(g.min()) >= 0
    assert int(g.max()) < n_pos * 8


def test_warmup_passes_input_through_then_kmeans():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, n_dim=2, codebook="per_position", n_positions=3, warmup_steps=2)
    e = torch.randn(32, 3, 2, requires_grad=True)
    out = vq(e)
    assert torch.equal(out.quantized, e)
    assert float(out.loss.detach()) == 0.0
    assert not bool(vq.initialized)
    vq(e)
    assert bool(vq.initialized)
    out = vq(e)
    assert not torch.equal(out.quantized, e)
    # k-means centres: every code of every position is used by the data it was fitted on
    assert int((vq.code_counts > 0).sum()) == 12


def test_residual_quantizes_around_the_position_mean():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, n_dim=2, residual=True, n_positions=3, affine="none", dead_code_threshold=0)
    e = torch.randn(16, 3, 2) + torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 5.0]])
    out = vq(e)
    torch.testing.assert_close(vq.position_mean, e.mean(0))
    torch.testing.assert_close(out.quantized, vq.position_mean + vq.get_codebook()[out.indices])


def test_dead_codes_reseeded_from_the_same_position():
    torch.manual_seed(0)
    vq = VectorQuantizer(n_codes=4, n_dim=2, codebook="per_position", n_positions=2, affine="none", replace_interval=1)
    with torch.no_grad():
        vq.codebook.data[:, 1:] = 1e3
    e = torch.randn(64, 2, 2) * 0.1 + torch.tensor([[0.0, 0.0], [100.0, 100.0]])
    vq(e)
    cb = vq.get_codebook().detach()
    assert (cb[1, 1:] - 100).abs().max() < 1  # position 1's dead codes come from position 1's outputs
    assert cb[0, 1:].abs().max() < 1


def test_bad_per_position_arguments():
    with pytest.raises(ValueError, match="n_positions"):
        VectorQuantizer(codebook="per_position")
    with pytest.raises(ValueError, match="codebook"):
        VectorQuantizer(codebook="nope", n_positions=2)
    vq = VectorQuantizer(n_codes=4, n_dim=2, codebook="per_position", n_positions=3)
    with pytest.raises(ValueError, match="3 positions"):
        vq(torch.randn(2, 5, 2))
