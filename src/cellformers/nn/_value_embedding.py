"""Hard-binning value embeddings compared with auto-discretization in xTrimoGene's Fig. 2A, and a factory by name."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

from ._autodiscretization import AutoDiscretizationEmbedding, apply_special_embeddings

if TYPE_CHECKING:
    from torch import Tensor

ValueEmbeddingName = Literal["autobin", "round", "upbin", "equalbin"]


class _BinnedValueEmbedding(nn.Module):
    """Shared part of the hard-binning embeddings: a bin index per value, a table, ``[MASK]``/``[PAD]`` vectors."""

    def __init__(self, n_out: int, n_bins: int = 100):
        super().__init__()
        if n_bins < 2:
            msg = f"`n_bins` must be at least 2, got {n_bins}."
            raise ValueError(msg)
        self.n_out = n_out
        self.n_bins = n_bins
        self.table = nn.Embedding(n_bins, n_out)
        self.emb_mask = nn.Parameter(torch.randn(n_out))
        self.emb_pad = nn.Parameter(torch.randn(n_out))

    def bin_index(self, x: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: Tensor, mask: Tensor | None = None, padding_mask: Tensor | None = None) -> Tensor:
        """Embed values.

        Parameters
        ----------
        x
            Expression values (log-normalized), shape ``(...)``.
        mask
            Boolean, shape of ``x``: ``True`` where the value is hidden (learned ``[MASK]`` embedding).
        padding_mask
            Boolean, shape of ``x``: ``True`` at padding (learned ``[PAD]`` embedding).

        Returns
        -------
        Tensor of shape ``(..., n_out)``.
        """
        e = self.table(self.bin_index(x))
        return apply_special_embeddings(e, mask, padding_mask, self.emb_mask, self.emb_pad)


class RoundBinEmbedding(_BinnedValueEmbedding):
    """Round bin with zero (:cite:p:`Gong23`, section 3.3): values rounded to the nearest integer, zero stays 0.

    This is scBERT's discretization. Bin ``i`` holds the values that round to ``i``; values past the last bin share
    it.

    Parameters
    ----------
    n_out
        Embedding width.
    n_bins
        Number of integer bins (``0 .. n_bins - 1``).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> emb = cf.nn.RoundBinEmbedding(n_out=8, n_bins=10)
    >>> x = torch.tensor([0.0, 0.4, 1.6, 2.5, 30.0])
    >>> emb.bin_index(x)
    tensor([0, 0, 2, 2, 9])
    >>> emb(x[None]).shape
    torch.Size([1, 5, 8])
    """

    def bin_index(self, x: Tensor) -> Tensor:
        """Bin of each value, shape of ``x`` (int64)."""
        return torch.round(x.float()).clamp(0, self.n_bins - 1).long()


class UpBinEmbedding(_BinnedValueEmbedding):
    """Up bin without zero (:cite:p:`Gong23`, section 3.3): positive values to their ceiling integer, zero to bin 0.

    Parameters
    ----------
    n_out
        Embedding width.
    n_bins
        Number of bins (``0`` for zero, ``1 .. n_bins - 1`` for ``(0, 1], (1, 2], ...``).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> emb = cf.nn.UpBinEmbedding(n_out=8, n_bins=10)
    >>> x = torch.tensor([0.0, 0.4, 1.6, 2.5, 30.0])
    >>> emb.bin_index(x)
    tensor([0, 1, 2, 3, 9])
    >>> emb(x[None]).shape
    torch.Size([1, 5, 8])
    """

    def bin_index(self, x: Tensor) -> Tensor:
        """Bin of each value, shape of ``x`` (int64)."""
        return torch.ceil(x.float()).clamp(0, self.n_bins - 1).long()


class EqualBinEmbedding(_BinnedValueEmbedding):
    """Equal bin (:cite:p:`Gong23`, section 3.3): equal-frequency intervals of the value distribution.

    Zero has its own bin 0; positive values fall into ``n_bins - 1`` intervals whose edges are quantiles of the
    positive values seen by :meth:`fit` (a buffer, saved with the weights). Before :meth:`fit` the edges are evenly
    spaced on ``(0, max_value]``.

    Parameters
    ----------
    n_out
        Embedding width.
    n_bins
        Number of bins including the zero bin.
    max_value
        Upper end of the initial evenly spaced edges (log1p-normalized expression rarely exceeds 10).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> emb = cf.nn.EqualBinEmbedding(n_out=8, n_bins=4).fit(torch.arange(1.0, 101.0))
    >>> [round(edge, 1) for edge in emb.bin_edges.tolist()]  # zero has bin 0, then 3 equal-frequency intervals
    [34.0, 67.0]
    >>> emb.bin_index(torch.tensor([0.0, 10.0, 50.0, 90.0]))
    tensor([0, 1, 2, 3])
    >>> emb(torch.tensor([[0.0, 10.0, 50.0]])).shape
    torch.Size([1, 3, 8])
    """

    def __init__(self, n_out: int, n_bins: int = 100, max_value: float = 10.0):
        super().__init__(n_out, n_bins)
        edges = torch.linspace(0.0, max_value, n_bins)[1:-1]
        self.register_buffer("bin_edges", edges.float(), persistent=True)

    @torch.no_grad()
    def fit(self, values: Tensor) -> EqualBinEmbedding:
        """Set the inner bin edges to quantiles of the positive entries of ``values`` (any shape)."""
        v = values.detach().flatten().float()
        v = v[v > 0]
        if v.numel() == 0:
            return self
        if v.numel() > 1_000_000:
            idx = torch.randperm(v.numel(), generator=torch.Generator().manual_seed(0))[:1_000_000]
            v = v[idx.to(v.device)]
        q = torch.linspace(0, 1, self.n_bins, device=v.device)[1:-1]
        self.bin_edges.copy_(torch.quantile(v, q).to(self.bin_edges))
        return self

    def bin_index(self, x: Tensor) -> Tensor:
        """Bin of each value, shape of ``x`` (int64): 0 for zero, ``1 + bucket`` for positive values."""
        x = x.float()
        idx = 1 + torch.bucketize(x, self.bin_edges.float(), right=True)
        return torch.where(x > 0, idx, torch.zeros_like(idx)).clamp(0, self.n_bins - 1)


_VALUE_EMBEDDINGS = {
    "autobin": AutoDiscretizationEmbedding,
    "round": RoundBinEmbedding,
    "upbin": UpBinEmbedding,
    "equalbin": EqualBinEmbedding,
}


def make_value_embedding(name: ValueEmbeddingName, n_out: int, n_bins: int = 100, **kwargs) -> nn.Module:
    """Build a value embedding by name.

    Parameters
    ----------
    name
        ``"autobin"`` (:class:`AutoDiscretizationEmbedding`, the paper's method), ``"round"``
        (:class:`RoundBinEmbedding`), ``"upbin"`` (:class:`UpBinEmbedding`) or ``"equalbin"``
        (:class:`EqualBinEmbedding`), the alternatives of :cite:p:`Gong23` Fig. 2A.
    n_out
        Embedding width.
    n_bins
        Number of bins.
    **kwargs
        Passed to the class (e.g. ``alpha`` for ``"autobin"``).

    Returns
    -------
    A module with ``forward(x, mask=None, padding_mask=None) -> (..., n_out)``.

    Examples
    --------
    >>> import cellformers as cf
    >>> emb = cf.nn.make_value_embedding("round", n_out=8, n_bins=10)
    >>> type(emb).__name__
    'RoundBinEmbedding'
    >>> type(cf.nn.make_value_embedding("autobin", n_out=8)).__name__
    'AutoDiscretizationEmbedding'
    """
    if name not in _VALUE_EMBEDDINGS:
        msg = f"`value_embedding` must be one of {sorted(_VALUE_EMBEDDINGS)}, got {name!r}."
        raise ValueError(msg)
    return _VALUE_EMBEDDINGS[name](n_out, n_bins, **kwargs)
