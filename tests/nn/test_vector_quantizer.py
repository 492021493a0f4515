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
