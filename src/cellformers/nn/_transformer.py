"""Standard transformer encoder on :func:`torch.nn.functional.scaled_dot_product_attention`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


class MultiheadSelfAttention(nn.Module):
    """Multi-head self-attention with key-padding masks, computed by SDPA (flash/memory-efficient kernels when available).

    Parameters
    ----------
    d_model
        Width of the token embeddings.
    n_heads
        Number of attention heads; must divide ``d_model``.
    dropout_rate
        Dropout on the attention weights (training only).
    bias
        Whether the projections have a bias.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> attn = cf.nn.MultiheadSelfAttention(d_model=16, n_heads=2).eval()
    >>> x = torch.randn(2, 10, 16)
    >>> padding = torch.zeros(2, 10, dtype=torch.bool)
    >>> padding[1, 7:] = True
    >>> out = attn(x, padding_mask=padding)
    >>> out.shape
    torch.Size([2, 10, 16])
    >>> x2 = x.clone()
    >>> x2[1, 7:] = 0.0  # padded keys get no attention: their values do not matter
    >>> torch.allclose(attn(x2, padding_mask=padding)[1, :7], out[1, :7], atol=1e-6)
    True
    """

    def __init__(self, d_model: int, n_heads: int, dropout_rate: float = 0.0, bias: bool = True):
        super().__init__()
        if d_model % n_heads != 0:
            msg = f"`d_model` ({d_model}) must be divisible by `n_heads` ({n_heads})."
            raise ValueError(msg)
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        self.dropout_rate = dropout_rate
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Attend over tokens.

        Parameters
        ----------
        x
            Tokens, shape ``(batch, length, d_model)``.
        padding_mask
            Boolean ``(batch, length)``, ``True`` at padding positions (PyTorch's ``key_padding_mask`` convention).
            Padded keys get no attention; padded queries produce values that callers must ignore.

        Returns
        -------
        Tensor of shape ``(batch, length, d_model)``.
        """
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        attn_mask = None
        if padding_mask is not None:
            # (b, 1, 1, n) boolean "may attend" mask, broadcast over heads and queries.
            attn_mask = (~padding_mask)[:, None, None, :]
            # A row that is all padding would give NaN (softmax over nothing); let it attend freely instead,
            # its outputs are ignored by the caller anyway.
            attn_mask = attn_mask | padding_mask.all(-1)[:, None, None, None]
        dropout = self.dropout_rate if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout)
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class TransformerBlock(nn.Module):
    """One transformer encoder block (self-attention + feed-forward), pre- or post-norm.

    Parameters
    ----------
    d_model
        Token width.
    n_heads
        Attention heads.
    d_ff
        Hidden width of the feed-forward network.
    dropout_rate
        Dropout after attention and feed-forward (and on attention weights).
    activation
        Feed-forward non-linearity.
    norm_first
        Pre-norm (``True``) or post-norm as in the original Transformer and scFoundation's encoder (``False``).
    attention_dropout_rate
        Dropout on the attention weights; ``None`` uses ``dropout_rate``. On CPU, attention dropout forces SDPA's
        unfused path and about triples the attention cost.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> block = cf.nn.TransformerBlock(d_model=16, n_heads=2, d_ff=32)
    >>> block(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout_rate: float = 0.0,
        activation: Literal["gelu", "relu"] = "gelu",
        norm_first: bool = True,
        attention_dropout_rate: float | None = None,
    ):
        super().__init__()
        self.norm_first = norm_first
        attn_drop = dropout_rate if attention_dropout_rate is None else attention_dropout_rate
        self.attn = MultiheadSelfAttention(d_model, n_heads, dropout_rate=attn_drop)
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](), nn.Dropout(dropout_rate), nn.Linear(d_ff, d_model)
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(batch, length, d_model)`` -> same shape; ``padding_mask`` as in :class:`MultiheadSelfAttention`."""
        if self.norm_first:
            x = x + self.drop1(self.attn(self.norm1(x), padding_mask))
            return x + self.drop2(self.ff(self.norm2(x)))
        x = self.norm1(x + self.drop1(self.attn(x, padding_mask)))
        return self.norm2(x + self.drop2(self.ff(x)))


class TransformerEncoder(nn.Module):
    """A stack of :class:`TransformerBlock` with an optional final LayerNorm.

    Parameters
    ----------
    d_model
        Token width.
    n_layers
        Number of blocks.
    n_heads
        Attention heads per block.
    d_ff
        Feed-forward hidden width.
    dropout_rate
        Dropout rate.
    activation
        Feed-forward non-linearity.
    norm_first
        Pre-norm blocks (``True``) or post-norm blocks (``False``).
    final_norm
        Apply a LayerNorm to the output (standard for pre-norm stacks, and scFoundation's encoder).
    gradient_checkpointing
        Recompute block activations in the backward pass to save memory during training.
    attention_dropout_rate
        Dropout on the attention weights; ``None`` uses ``dropout_rate``.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> encoder = cf.nn.TransformerEncoder(d_model=16, n_layers=2, n_heads=2, d_ff=32)
    >>> padding = torch.zeros(2, 10, dtype=torch.bool)
    >>> padding[1, 7:] = True
    >>> encoder(torch.randn(2, 10, 16), padding_mask=padding).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        dropout_rate: float = 0.0,
        activation: Literal["gelu", "relu"] = "gelu",
        norm_first: bool = True,
        final_norm: bool = True,
        gradient_checkpointing: bool = False,
        attention_dropout_rate: float | None = None,
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            TransformerBlock(d_model, n_heads, d_ff, dropout_rate, activation, norm_first, attention_dropout_rate)
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.gradient_checkpointing = gradient_checkpointing

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(batch, length, d_model)`` -> same shape. ``padding_mask``: ``(batch, length)``, ``True`` = padding."""
        if padding_mask is not None and not bool(padding_mask.any()):
            # nothing padded: attention without a mask runs faster fused kernels (on GPUs, flash attention
            # takes no mask at all)
            padding_mask = None
        for layer in self.layers:
            if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, padding_mask, use_reentrant=False)
            else:
                x = layer(x, padding_mask)
        return self.norm(x)
