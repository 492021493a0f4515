from __future__ import annotations

import pytest
import torch

from cellformers.nn import DomainSpecificBatchNorm1d


def test_shapes_2d_and_3d():
    bn = DomainSpecificBatchNorm1d(4, n_domains=3)
    assert bn(torch.randn(5, 7, 4), torch.tensor([0, 1, 2, 0, 1])).shape == (5, 7, 4)
    assert bn(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).shape == (6, 4)


def test_each_domain_normalised_separately_and_matches_batchnorm():
    torch.manual_seed(0)
    bn = DomainSpecificBatchNorm1d(3, n_domains=2, affine=False)
    x = torch.cat([torch.randn(4, 5, 3) * 3 + 10, torch.randn(4, 5, 3) - 5])
    dom = torch.tensor([0] * 4 + [1] * 4)
    y = bn(x, dom)
    for d in (0, 1):
        part = y[dom == d].reshape(-1, 3)
        torch.testing.assert_close(part.mean(0), torch.zeros(3), atol=1e-5, rtol=0)
        ref = torch.nn.BatchNorm1d(3, affine=False)
        torch.testing.assert_close(y[dom == d], ref(x[dom == d].transpose(1, 2)).transpose(1, 2), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_mean[d], ref.running_mean, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(bn.running_var[d], ref.running_var, atol=1e-5, rtol=1e-5)


def test_padding_excluded_unless_asked():
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3)
    pad = torch.tensor([[False, False, True, True], [False, False, False, True]])
    x_big = x.clone()
    x_big[pad] = 100.0
    dom = torch.tensor([0, 0])
    y1 = DomainSpecificBatchNorm1d(3, 1)(x, dom, pad)
    y2 = DomainSpecificBatchNorm1d(3, 1)(x_big, dom, pad)
    torch.testing.assert_close(y1[~pad], y2[~pad])
    y3 = DomainSpecificBatchNorm1d(3, 1, include_padding=True)(x_big, dom, pad)
    assert not torch.allclose(y1[~pad], y3[~pad])


def test_unseen_domain_uses_pooled_statistics_in_eval():
    bn = DomainSpecificBatchNorm1d(2, n_domains=2, affine=False, momentum=1.0)
    x = torch.cat([torch.full((3, 1, 2), 1.0) + torch.randn(3, 1, 2) * 0.1, torch.full((3, 1, 2), 5.0)])
    bn(x, torch.tensor([0, 0, 0, 1, 1, 1]))
    bn.eval()
    y = bn(torch.full((1, 1, 2), 3.0), torch.tensor([7]))
    assert torch.isfinite(y).all()
    assert y.abs().max() < 1.0  # 3.0 is the pooled mean (1 + 5) / 2 up to noise
    with pytest.raises(ValueError, match="outside"):
        bn.train()(x[:1], torch.tensor([5]))
