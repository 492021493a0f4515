"""Elastic cell similarity: scFormer's ECS task head (eq. 9, after Liu et al. 2019)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

ECSStyle = Literal["paper", "scgpt"]


class ElasticCellSimilarity(nn.Module):
    """Contrastive loss on the pairwise cosine similarities of the cell embeddings of a minibatch.

    ``"paper"`` (eq. 9): the mean over all pairs ``i != i'`` of ``-(cos(h_i, h_i') - beta)^2``, which pushes pairs
    above ``beta`` closer and pairs below ``beta`` apart. ``"scgpt"``: scGPT's variant, the mean over all
    ``batch^2`` entries of ``1 - (relu(cos) - beta)^2`` with the diagonal set to zero (negative similarities get
    no gradient; the constant and the diagonal do not change the gradient).

    Parameters
    ----------
    beta
        Similarity threshold (paper 0.6; scGPT's model default 0.3, its integration example 0.8).
    style
        Which form of the loss.
    center
        Subtract the minibatch mean from the embeddings before the cosine (not in the paper). A freshly initialised
        transformer gives nearly parallel cell embeddings (pairwise cosine ~0.99, a shared offset), so every pair
        starts above ``beta`` and the uncentred loss pulls all cells together; centring measures similarity
        relative to the minibatch instead.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> ecs = cf.nn.ElasticCellSimilarity(beta=0.6)
    >>> cells = torch.randn(8, 16, requires_grad=True)
    >>> loss = ecs(cells)
    >>> loss.shape, bool(loss <= 0)  # eq. 9: minus a mean of squares
    (torch.Size([]), True)
    >>> loss.backward()
    """

    def __init__(self, beta: float = 0.6, style: ECSStyle = "paper", center: bool = False):
        super().__init__()
        if style not in ("paper", "scgpt"):
            msg = f"`style` must be 'paper' or 'scgpt', got {style!r}."
            raise ValueError(msg)
        self.beta = float(beta)
        self.style = style
        self.center = bool(center)

    def forward(self, cell_embedding: Tensor) -> Tensor:
        """``(batch, d)`` cell embeddings -> scalar loss (``0`` for a single cell)."""
        n = cell_embedding.shape[0]
        z = cell_embedding.float()
        if self.center and n > 1:
            z = z - z.mean(0, keepdim=True)
        z = F.normalize(z, dim=1)
        cos = z @ z.T
        eye = torch.eye(n, dtype=torch.bool, device=z.device)
        if self.style == "paper":
            if n < 2:
                return cos.sum() * 0.0
            return -((cos - self.beta) ** 2).masked_select(~eye).mean()
        cos = F.relu(cos).masked_fill(eye, 0.0)
        return (1.0 - (cos - self.beta) ** 2).mean()
