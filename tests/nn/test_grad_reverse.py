from __future__ import annotations

import torch

from cellformers.nn import AdversarialDiscriminator, GradientReversal, grad_reverse


def test_identity_forward_reversed_backward():
    x = torch.randn(3, 4, requires_grad=True)
    y = grad_reverse(x, 0.5)
    torch.testing.assert_close(y, x)
    y.sum().backward()
    torch.testing.assert_close(x.grad, torch.full_like(x, -0.5))
    assert GradientReversal(2.0)(x).shape == x.shape


def test_discriminator_shape_and_encoder_gradient_sign():
    torch.manual_seed(0)
    disc = AdversarialDiscriminator(8, 3, lambda_=1.0)
    x = torch.randn(5, 8, requires_grad=True)
    assert disc(x).shape == (5, 3)
    labels = torch.tensor([0, 1, 2, 0, 1])
    torch.nn.functional.cross_entropy(disc(x), labels).backward()
    g_rev = x.grad.clone()
    x.grad = None
    plain = torch.nn.functional.cross_entropy(disc.classifier(x), labels)
    plain.backward()
    torch.testing.assert_close(g_rev, -x.grad)
