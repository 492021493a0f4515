from __future__ import annotations

import torch

from cellformers.nn import TokenContrastiveLoss, spherical_kmeans


def _clusters(n_per=50, d=8, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(k, d, generator=g), dim=-1) * 5
    x = torch.cat([c + 0.3 * torch.randn(n_per, d, generator=g) for c in centers])
    labels = torch.arange(k).repeat_interleave(n_per)
    return x, labels


def test_spherical_kmeans_recovers_clusters():
    x, labels = _clusters()
    c = spherical_kmeans(x, 3, generator=torch.Generator().manual_seed(0))
    assert c.shape == (3, 8)
    torch.testing.assert_close(c.norm(dim=-1), torch.ones(3))
    assign = (torch.nn.functional.normalize(x, dim=-1) @ c.T).argmax(1)
    # each true cluster maps to one k-means cluster
    for k in range(3):
        assert assign[labels == k].unique().numel() == 1
    assert assign.unique().numel() == 3


def test_loss_is_zero_until_fitted_then_positive_with_gradient():
    torch.manual_seed(0)
    loss_fn = TokenContrastiveLoss(8, queue_size=64, n_clusters=3, refit_interval=2, n_negatives=16, min_fit=32)
    x, _ = _clusters(n_per=10)
    h = x.clone().requires_grad_(True)
    first = loss_fn(h, x + 0.01)
    assert float(first.detach()) == 0.0
    assert int(loss_fn.queue_len) == 30
    loss_fn(h, x + 0.01)  # queue now holds 60 >= min_fit -> fitted at the next call
    out = loss_fn(h, x + 0.01 * torch.randn_like(x))
    assert bool(loss_fn.fitted)
    assert float(out) > 0
    out.backward()
    assert h.grad is not None
    assert h.grad.abs().sum() > 0
    assert int(loss_fn.queue_len) == 64  # capped at the queue size (FIFO)


def test_negatives_come_from_other_pseudo_clusters():
    torch.manual_seed(0)
    loss_fn = TokenContrastiveLoss(8, queue_size=256, n_clusters=3, refit_interval=1000, n_negatives=8, min_fit=30)
    x, labels = _clusters(n_per=40)
    loss_fn.enqueue(x)
    loss_fn.refit()
    pseudo = loss_fn.assign(x)
    # positives identical: the loss only depends on the negatives. Same-cluster cells (cosine ~0.99 to the
    # anchor) are never negatives; had one been drawn, the loss would be at least log(2) ~ 0.69.
    out = loss_fn._loss(x, x)
    assert float(out) < 0.1
    assert (pseudo[labels == 0].unique().numel(), pseudo[labels == 1].unique().numel()) == (1, 1)


def test_eval_mode_does_not_update_state():
    loss_fn = TokenContrastiveLoss(8, queue_size=64, n_clusters=2, min_fit=4).eval()
    x, _ = _clusters(n_per=5, k=2)
    loss_fn(x, x)
    assert int(loss_fn.queue_len) == 0
    assert int(loss_fn.n_calls) == 0
