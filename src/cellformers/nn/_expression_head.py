"""Per-gene expression decoder of scFormer's masked gene modelling (MGM) task head (eq. 7)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class ExpressionHead(nn.Module):
    """MLP from each gene's transformer output to its expression estimate.

    ``[Linear, LeakyReLU] x n_layers -> Linear(n_out)``, applied token-wise. With ``n_out = n_bins`` the output
    holds logits over the value bins (scFormer's cross-entropy MGM); with ``n_out = 1`` a scalar for an MSE loss
    (scGPT's ``ExprDecoder``).

    Parameters
    ----------
    n_in
        Input width (``d_model``, or ``2 * d_model`` when a batch embedding is concatenated).
    n_out
        Outputs per gene.
    n_hidden
        Hidden width; defaults to ``n_in``.
    n_layers
        Number of hidden layers.
    dropout_rate
        Dropout after each hidden layer.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> head = cf.nn.ExpressionHead(n_in=16, n_out=51)  # logits over 51 value bins
    >>> head(torch.randn(2, 5, 16)).shape
    torch.Size([2, 5, 51])
    """

    def __init__(
        self, n_in: int, n_out: int = 1, n_hidden: int | None = None, n_layers: int = 2, dropout_rate: float = 0.0
    ):
        super().__init__()
        n_hidden = n_in if n_hidden is None else int(n_hidden)
        layers: list[nn.Module] = []
        width = n_in
        for _ in range(n_layers):
            layers += [nn.Linear(width, n_hidden), nn.LeakyReLU(), nn.Dropout(dropout_rate)]
            width = n_hidden
        layers.append(nn.Linear(width, n_out))
        self.mlp = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        """``(batch, length, n_in)`` gene outputs -> ``(batch, length, n_out)`` estimates."""
        return self.mlp(h)
