"""Expression-value embeddings of scFormer (section 3.1, ``emb_x`` of eq. 5)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class ContinuousValueEncoder(nn.Module):
    """Fully connected embedding of a scalar expression value (scFormer's default ``emb_x``).

    ``Linear(1, d) -> ReLU -> Linear(d, d) -> LayerNorm -> Dropout``. Feeding the bin index as a number keeps the
    order of the bins (scFormer section 3.1: "easily modeling the consecutive nature of the value magnitudes").
    Masked positions get a learned ``<mask>`` vector instead of the embedding of their value, so the value of a
    masked gene never reaches the encoder.

    Parameters
    ----------
    d_model
        Embedding width.
    dropout_rate
        Dropout on the output.
    max_value
        Inputs are clamped to ``[-max_value, max_value]`` before the first layer (scGPT clamps at 512).
    scale
        Inputs are multiplied by ``scale`` after clamping. With bin indices up to 50 fed unscaled (scGPT),
        ``LayerNorm(W2 relu(w1 v + b1))`` hardly changes once ``v`` exceeds a few units, so at initialisation
        most bins get nearly the same embedding; ``scale = 1 / (n_bins - 1)`` maps the bins to ``[0, 1]``.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> enc = cf.nn.ContinuousValueEncoder(d_model=8)
    >>> values = torch.tensor([[0.0, 3.0, 50.0], [7.0, 0.0, 1.0]])
    >>> enc(values).shape
    torch.Size([2, 3, 8])
    >>> hidden = torch.tensor([[False, True, False], [False, False, False]])
    >>> torch.equal(enc(values, mask=hidden)[0, 1], enc(values * 2, mask=hidden)[0, 1])  # the <mask> vector
    True
    """

    def __init__(self, d_model: int, dropout_rate: float = 0.0, max_value: float = 512.0, scale: float = 1.0):
        super().__init__()
        self.max_value = float(max_value)
        self.scale = float(scale)
        self.fc = nn.Sequential(nn.Linear(1, d_model), nn.ReLU(), nn.Linear(d_model, d_model))
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout_rate)
        self.mask_embedding = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.mask_embedding, std=0.02)

    def forward(self, values: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embed values.

        Parameters
        ----------
        values
            Float (or integer bin) values, shape ``(batch, length)``.
        mask
            Optional boolean ``(batch, length)``, ``True`` where the value is hidden.

        Returns
        -------
        Tensor of shape ``(batch, length, d_model)``.
        """
        v = values.to(self.fc[0].weight.dtype).clamp(-self.max_value, self.max_value).unsqueeze(-1) * self.scale
        h = self.norm(self.fc(v))
        if mask is not None:
            h = torch.where(mask.unsqueeze(-1), self.mask_embedding.to(h.dtype), h)
        return self.dropout(h)


class CategoricalValueEncoder(nn.Module):
    """Look-up-table embedding of binned values (scFormer's categorical alternative to the FC ``emb_x``).

    ``Embedding(n_bins + 1, d) -> LayerNorm -> Dropout``; index ``n_bins`` is the ``<mask>`` value.

    Parameters
    ----------
    n_bins
        Number of value bins including the zero bin (values ``0 … n_bins-1``).
    d_model
        Embedding width.
    dropout_rate
        Dropout on the output.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> enc = cf.nn.CategoricalValueEncoder(n_bins=51, d_model=8)
    >>> bins = torch.tensor([[0, 3, 50], [7, 0, 1]])
    >>> enc(bins).shape
    torch.Size([2, 3, 8])
    >>> hidden = torch.tensor([[False, True, False], [False, False, False]])
    >>> torch.equal(enc(bins, mask=hidden)[0, 1], enc(bins + 1, mask=hidden)[0, 1])  # a masked value is not seen
    True
    """

    def __init__(self, n_bins: int, d_model: int, dropout_rate: float = 0.0):
        super().__init__()
        self.n_bins = int(n_bins)
        self.embedding = nn.Embedding(self.n_bins + 1, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, values: Tensor, mask: Tensor | None = None) -> Tensor:
        """Embed bins.

        Parameters
        ----------
        values
            Integer bins in ``0 … n_bins-1``, shape ``(batch, length)`` (floats are rounded).
        mask
            Optional boolean ``(batch, length)``, ``True`` where the value is hidden.

        Returns
        -------
        Tensor of shape ``(batch, length, d_model)``.
        """
        idx = values.round().long().clamp(0, self.n_bins - 1)
        if mask is not None:
            idx = torch.where(mask, torch.full_like(idx, self.n_bins), idx)
        return self.dropout(self.norm(self.embedding(idx)))
