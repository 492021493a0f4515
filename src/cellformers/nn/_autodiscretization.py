"""Auto-discretization value embedding of xTrimoGene :cite:p:`Gong23` (section 3.3)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


def apply_special_embeddings(
    e: Tensor,
    mask: Tensor | None,
    padding_mask: Tensor | None,
    emb_mask: Tensor,
    emb_pad: Tensor,
) -> Tensor:
    """Replace the embeddings of masked and padded positions by learned vectors.

    Parameters
    ----------
    e
        Value embeddings, shape ``(..., n_out)``.
    mask
        Boolean ``(...)``, ``True`` where the value is hidden by a ``[MASK]`` token, or ``None``.
    padding_mask
        Boolean ``(...)``, ``True`` at padding positions, or ``None``.
    emb_mask, emb_pad
        Learned vectors of shape ``(n_out,)``.

    Returns
    -------
    Tensor of the shape of ``e``.
    """
    if mask is not None:
        e = torch.where(mask.unsqueeze(-1), emb_mask.to(e.dtype), e)
    if padding_mask is not None:
        e = torch.where(padding_mask.unsqueeze(-1), emb_pad.to(e.dtype), e)
    return e


class AutoDiscretizationEmbedding(nn.Module):
    """Embed continuous expression values as a soft mixture of learned bin embeddings.

    For a scalar value ``v`` (section 3.3 of :cite:p:`Gong23`)::

        v1 = v · w1                  # Linear(1 -> n_bins)
        v2 = LeakyReLU(v1)
        v3 = w2 · v2 + α · v2        # Linear(n_bins -> n_bins) plus a scaled skip connection
        v4 = softmax(v3)             # weights over the n_bins bins
        e  = T · v4                  # T: learnable look-up table (n_bins x n_out)

    Close values get similar bin weights and distant values different ones (appendix 3, Fig. 1), so the embedding
    keeps the resolution of continuous values that rounding loses. Masked and padded positions do not use sentinel
    values in the expression tensor: they are passed as boolean masks and get their own learned embeddings.

    Parameters
    ----------
    n_out
        Embedding width ``d``.
    n_bins
        Number of bins ``b`` (paper default 100).
    alpha
        Mixture factor ``α`` of the cross-layer projection (scFoundation's ``bin_alpha`` = 1.0).
    negative_slope
        Slope of the leaky ReLU for negative inputs (0.1 as in scFoundation; the paper does not state it).
    bias
        Whether the two linear layers have a bias (the paper writes weight vectors only; scFoundation has biases).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> emb = cf.nn.AutoDiscretizationEmbedding(n_out=8, n_bins=10)
    >>> x = torch.tensor([[0.0, 0.5, 2.3], [1.1, 0.0, 4.0]])  # log-normalized values
    >>> emb(x).shape
    torch.Size([2, 3, 8])
    >>> mask = torch.tensor([[False, True, False], [False, False, False]])
    >>> torch.equal(emb(x, mask=mask)[0, 1], emb(x + 1, mask=mask)[0, 1])  # the learned [MASK] embedding
    True
    """

    def __init__(
        self,
        n_out: int,
        n_bins: int = 100,
        alpha: float = 1.0,
        negative_slope: float = 0.1,
        bias: bool = True,
    ):
        super().__init__()
        if n_bins < 2:
            msg = f"`n_bins` must be at least 2, got {n_bins}."
            raise ValueError(msg)
        self.n_out = n_out
        self.n_bins = n_bins
        self.alpha = float(alpha)
        self.negative_slope = float(negative_slope)
        self.w1 = nn.Linear(1, n_bins, bias=bias)
        self.w2 = nn.Linear(n_bins, n_bins, bias=bias)
        self.table = nn.Embedding(n_bins, n_out)
        self.emb_mask = nn.Parameter(torch.randn(n_out))
        self.emb_pad = nn.Parameter(torch.randn(n_out))

    def bin_weights(self, x: Tensor) -> Tensor:
        """Soft bin assignment ``v4`` of each value.

        Parameters
        ----------
        x
            Values of any shape ``(...)``.

        Returns
        -------
        Tensor of shape ``(..., n_bins)`` whose last dimension sums to one.
        """
        v1 = self.w1(x.unsqueeze(-1).to(self.w1.weight.dtype))
        v2 = F.leaky_relu(v1, self.negative_slope)
        v3 = self.w2(v2) + self.alpha * v2
        return torch.softmax(v3.float(), dim=-1)

    def forward(self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """Embed values.

        Parameters
        ----------
        x
            Expression values (log-normalized), shape ``(...)``, e.g. ``(batch, length)``.
        mask
            Boolean, shape of ``x``: ``True`` where the value is hidden (gets the learned ``[MASK]`` embedding).
        padding_mask
            Boolean, shape of ``x``: ``True`` at padding (gets the learned ``[PAD]`` embedding).

        Returns
        -------
        Tensor of shape ``(..., n_out)``.
        """
        w = self.bin_weights(x)
        e = w.to(self.table.weight.dtype) @ self.table.weight
        return apply_special_embeddings(e, mask, padding_mask, self.emb_mask, self.emb_pad)
