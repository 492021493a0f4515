"""scPaLM's token-level contrastive loss with K-Means pseudo-labels refit on a queue (appendix A.1)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


def spherical_kmeans(
    x: Tensor, n_clusters: int, *, n_iter: int = 20, generator: torch.Generator | None = None
) -> Tensor:
    """K-Means on the unit sphere (cosine similarity), k-means++ seeding; returns ``(n_clusters, d)`` unit centroids.

    Parameters
    ----------
    x
        Points, ``(n, d)``; they are L2-normalised first.
    n_clusters
        Number of clusters (at most ``n``).
    n_iter
        Lloyd iterations.
    generator
        Random generator for the seeding.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> x = torch.randn(50, 4)
    >>> centroids = cf.nn.spherical_kmeans(x, n_clusters=3, generator=torch.Generator().manual_seed(0))
    >>> centroids.shape
    torch.Size([3, 4])
    >>> torch.allclose(centroids.norm(dim=1), torch.ones(3))
    True
    """
    x = F.normalize(x.float(), dim=-1)
    n = x.shape[0]
    k = min(n_clusters, n)
    first = torch.randint(0, n, (1,), generator=generator, device="cpu").to(x.device)
    centroids = [x[first[0]]]
    closest = 1 - x @ centroids[0]  # cosine distance to the nearest centroid
    for _ in range(1, k):
        weights = closest.clamp_min(0) ** 2
        if float(weights.sum()) <= 0:
            idx = torch.randint(0, n, (1,), generator=generator, device="cpu")[0]
        else:
            idx = torch.multinomial(weights.cpu(), 1, generator=generator)[0]
        c = x[idx.to(x.device)]
        centroids.append(c)
        closest = torch.minimum(closest, 1 - x @ c)
    c = torch.stack(centroids)
    for _ in range(n_iter):
        assign = (x @ c.T).argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        size = torch.bincount(assign, minlength=k)
        empty = size == 0
        if empty.any():  # re-seed empty clusters with the points farthest from their centroid
            far = (x * c[assign]).sum(1).argsort()[: int(empty.sum())]
            new[empty] = x[far]
        c = F.normalize(new, dim=-1)
    return c


class TokenContrastiveLoss(nn.Module):
    """InfoNCE between two views of the cell token, with negatives from other K-Means pseudo-clusters.

    scPaLM :cite:p:`scPaLM`, appendix A.1 and Algorithm 3. The cell tokens ``h_C`` and ``h'_C`` of two random
    subsets of the pathway tokens of the same cell are a positive pair. Cells are given pseudo-labels by a
    (spherical) K-Means fitted on a first-in-first-out queue of recent ``h_C``; it is refit every
    ``refit_interval`` training calls. Up to ``n_negatives`` negatives per cell are drawn at random among the cells
    of the minibatch and of the queue whose pseudo-label differs from the cell's. With cosine similarity ``s`` and
    temperature ``tau``:

    ``L = mean_i -log( exp(s(h_i, h'_i)/tau) / (exp(s(h_i, h'_i)/tau) + sum_{j in neg(i)} exp(s(h_j, h_i)/tau)) )``

    Equation 1 of the paper prints the ratio of the similarities without the exponentials (which is not defined
    for negative similarities); this is the usual InfoNCE form it abbreviates. Until the queue holds ``min_fit``
    cells no K-Means is fitted and the loss is zero.

    Parameters
    ----------
    n_dim
        Width of the cell token.
    queue_size
        Length of the queue ``Q``.
    n_clusters
        Number of K-Means clusters (pseudo-labels).
    refit_interval
        ``T_r``: training calls between two K-Means fits.
    n_negatives
        Negatives per cell (``K`` of appendix A.1).
    temperature
        ``tau``.
    n_iter
        Lloyd iterations per fit.
    min_fit
        Cells the queue must hold before the first fit (default ``max(4 * n_clusters, 64)``).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> loss_fn = cf.nn.TokenContrastiveLoss(n_dim=8, queue_size=64, n_clusters=2, min_fit=16)
    >>> h = torch.randn(32, 8)  # cell tokens of 32 cells
    >>> h_prime = h + 0.1 * torch.randn(32, 8)  # a second view of the same cells
    >>> loss_fn(h, h_prime)  # the queue held too few cells to fit K-Means: no loss yet
    tensor(0.)
    >>> loss = loss_fn(h, h_prime)
    >>> bool(loss > 0), loss_fn.queue_size
    (True, 64)
    """

    def __init__(
        self,
        n_dim: int,
        queue_size: int = 4096,
        n_clusters: int = 16,
        refit_interval: int = 100,
        n_negatives: int = 64,
        temperature: float = 0.1,
        n_iter: int = 20,
        min_fit: int | None = None,
    ):
        super().__init__()
        self.n_clusters = n_clusters
        self.refit_interval = refit_interval
        self.n_negatives = n_negatives
        self.temperature = temperature
        self.n_iter = n_iter
        self.min_fit = max(4 * n_clusters, 64) if min_fit is None else int(min_fit)
        self.register_buffer("queue", torch.zeros(queue_size, n_dim))
        self.register_buffer("queue_labels", torch.full((queue_size,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("queue_len", torch.zeros((), dtype=torch.long))
        self.register_buffer("centroids", torch.zeros(n_clusters, n_dim))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("n_calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("n_fits", torch.zeros((), dtype=torch.long))

    @property
    def queue_size(self) -> int:
        """Capacity of the queue."""
        return self.queue.shape[0]

    @torch.no_grad()
    def assign(self, h: Tensor) -> Tensor:
        """Pseudo-label of each row of ``h`` (``-1`` before the first fit)."""
        if not bool(self.fitted):
            return torch.full((h.shape[0],), -1, dtype=torch.long, device=h.device)
        return (F.normalize(h.float(), dim=-1) @ self.centroids.T).argmax(1)

    @torch.no_grad()
    def refit(self) -> None:
        """Fit the K-Means on the cells in the queue and relabel them."""
        n = int(self.queue_len)
        if n < max(self.min_fit, self.n_clusters):
            return
        data = self.queue[:n]
        gen = torch.Generator().manual_seed(int(torch.randint(0, 2**31 - 1, (1,))))
        c = spherical_kmeans(data, self.n_clusters, n_iter=self.n_iter, generator=gen)
        self.centroids.zero_()
        self.centroids[: c.shape[0]] = c
        self.fitted.fill_(True)
        self.queue_labels[:n] = self.assign(data)
        self.n_fits += 1

    @torch.no_grad()
    def enqueue(self, h: Tensor) -> None:
        """Push the rows of ``h`` into the queue (oldest out)."""
        h = F.normalize(h.detach().float(), dim=-1)
        h = h[-self.queue_size :]
        m = h.shape[0]
        ptr = int(self.queue_ptr)
        idx = (torch.arange(m, device=h.device) + ptr) % self.queue_size
        self.queue[idx] = h
        self.queue_labels[idx] = self.assign(h)
        self.queue_ptr.fill_((ptr + m) % self.queue_size)
        self.queue_len.fill_(min(self.queue_size, int(self.queue_len) + m))

    def forward(self, h: Tensor, h_prime: Tensor) -> Tensor:
        """Contrastive loss of two views ``(batch, n_dim)``; in training mode also refits and enqueues."""
        update = self.training and torch.is_grad_enabled()
        if update and int(self.n_calls) % self.refit_interval == 0 or update and not bool(self.fitted):
            self.refit()
        with torch.autocast(device_type=h.device.type, enabled=False):
            loss = self._loss(h.float(), h_prime.float())
        if update:
            self.enqueue(h)
            self.n_calls += 1
        return loss

    def _loss(self, h: Tensor, h_prime: Tensor) -> Tensor:
        if not bool(self.fitted) or self.n_negatives <= 0:
            return (h.sum() + h_prime.sum()) * 0.0
        b = h.shape[0]
        hn = F.normalize(h, dim=-1)
        hp = F.normalize(h_prime, dim=-1)
        labels = self.assign(hn.detach())
        n_q = int(self.queue_len)
        cand = torch.cat([hn, self.queue[:n_q]])  # batch cells carry gradient, queue entries do not
        cand_labels = torch.cat([labels, self.queue_labels[:n_q]])
        valid = cand_labels[None, :] != labels[:, None]  # (B, B + n_q); excludes the cell itself
        k = min(self.n_negatives, cand.shape[0])
        with torch.no_grad():
            scores = torch.rand(valid.shape, device=h.device).masked_fill(~valid, -1.0)
            pick = scores.topk(k, dim=1).indices  # random valid negatives first
            pick_valid = valid.gather(1, pick)
        pos = (hn * hp).sum(-1, keepdim=True) / self.temperature  # (B, 1)
        neg = (hn[:, None, :] * cand[pick]).sum(-1) / self.temperature  # (B, k)
        neg = neg.masked_fill(~pick_valid, float("-inf"))
        logits = torch.cat([pos, neg], 1)
        return (torch.logsumexp(logits, 1) - pos[:, 0]).sum() / b
