"""Performer: linear-complexity attention with FAVOR+ positive orthogonal random features :cite:p:`Choromanski21`.

xTrimoGene's decoder runs over every gene of a cell (~20,000 tokens), where softmax attention is quadratic. FAVOR+
approximates the softmax kernel ``exp(q·k / sqrt(d))`` by ``φ(q)·φ(k)`` with positive random features, so
non-causal attention becomes ``D⁻¹ φ(Q) (φ(K)ᵀ V)``: time and memory linear in the sequence length.

:func:`softmax_kernel_features` and :func:`linear_attention` write FAVOR+ out as it reads; the attention layers run
the same function block by block without keeping the features (``cellformers.nn._favor_attention``).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ._favor_attention import favor_attention

if TYPE_CHECKING:
    from torch import Tensor

_ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU}


def gaussian_orthogonal_random_matrix(
    n_rows: int,
    n_cols: int,
    *,
    scaling: Literal["norm", "sqrt_d"] = "norm",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Random projection with orthogonal rows in blocks of ``n_cols`` (FAVOR+'s orthogonal random features).

    Parameters
    ----------
    n_rows
        Number of random features ``m``.
    n_cols
        Dimension ``d`` of the vectors to project.
    scaling
        ``"norm"``: each row has the norm of a ``d``-dimensional Gaussian vector (so rows are marginally Gaussian);
        ``"sqrt_d"``: every row has norm ``sqrt(d)``.
    generator
        Random generator (default: torch's global one).

    Returns
    -------
    Float32 tensor of shape ``(n_rows, n_cols)``.
    """
    blocks = []
    for _ in range(math.ceil(n_rows / n_cols)):
        g = torch.randn(n_cols, n_cols, generator=generator)
        q, _ = torch.linalg.qr(g)
        blocks.append(q.T)
    mat = torch.cat(blocks)[:n_rows]
    if scaling == "norm":
        mult = torch.randn(n_rows, n_cols, generator=generator).norm(dim=1)
    elif scaling == "sqrt_d":
        mult = torch.full((n_rows,), math.sqrt(n_cols))
    else:
        msg = f"`scaling` must be 'norm' or 'sqrt_d', got {scaling!r}."
        raise ValueError(msg)
    return mult[:, None] * mat


def softmax_kernel_features(
    data: Tensor,
    projection: Tensor,
    *,
    is_query: bool,
    padding_mask: Tensor | None = None,
    eps: float = 1e-4,
    key_stabilizer: Literal["head", "cell"] = "head",
) -> Tensor:
    """Positive random features ``φ(x) = exp(w·x' - |x'|²/2) / sqrt(m)`` with ``x' = x · d^(-1/4)``.

    A stabilising maximum is subtracted before the exponential: per query row (it cancels in the normalisation), and
    per (cell, head) over all non-padded keys and features (a common factor, so results do not depend on the other
    cells of the batch), or per cell over all heads with ``key_stabilizer="cell"``. The key stabilizer is not a pure
    common factor: it sets the scale of the features against ``eps``.

    Parameters
    ----------
    data
        Queries or keys, shape ``(batch, heads, length, d_head)``.
    projection
        Random projection ``(m, d_head)``.
    is_query
        Queries (row-wise stabiliser) or keys (per-head stabiliser; padded keys get zero features).
    padding_mask
        Boolean ``(batch, length)``, ``True`` at padding (keys only).
    eps
        Added to the features for numerical stability.
    key_stabilizer
        Maximum subtracted from the keys' exponent: per cell and head (``"head"``), or per cell over all heads
        (``"cell"``: what performer_pytorch, and so scFoundation, computes for one cell at a time; it takes the
        maximum over the whole minibatch).

    Returns
    -------
    Tensor of shape ``(batch, heads, length, m)``.
    """
    d = data.shape[-1]
    m = projection.shape[0]
    normalizer = d**-0.25
    # the normalizer is folded into the (small) projection; the ratio m^-1/2 into the exponent
    data_dash = torch.matmul(data, (projection * normalizer).transpose(0, 1).to(data.dtype))
    diag = (data * data).sum(-1, keepdim=True) * (normalizer**2 / 2)
    if is_query:
        stab = data_dash.amax(dim=-1, keepdim=True).detach()
    else:
        masked = data_dash
        if padding_mask is not None:
            masked = data_dash.masked_fill(padding_mask[:, None, :, None], float("-inf"))
        dims = (-1, -2) if key_stabilizer == "head" else (-1, -2, -3)
        stab = masked.amax(dim=dims, keepdim=True).detach()
        stab = torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
    log_ratio = -0.5 * math.log(m)
    feats = torch.exp(data_dash - (diag + stab - log_ratio)) + eps * m**-0.5
    if not is_query and padding_mask is not None:
        feats = feats.masked_fill(padding_mask[:, None, :, None], 0.0)
    return feats


def linear_attention(q: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """Non-causal linear attention ``D⁻¹ Q (Kᵀ V)`` with ``D = Q (Kᵀ 1)``.

    Parameters
    ----------
    q, k
        Feature maps, shape ``(batch, heads, length, m)``.
    v
        Values, shape ``(batch, heads, length, d_head)``.

    Returns
    -------
    Tensor of shape ``(batch, heads, length, d_head)``.
    """
    # a column of ones appended to V gives the normaliser D = Q (Kᵀ 1) in the same matmuls
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    out = torch.matmul(q, torch.matmul(k.transpose(-1, -2), v1))
    return out[..., :-1] / out[..., -1:].clamp_min(1e-12)


#: ``exact="auto"`` uses exact attention up to this many tokens per random feature. Measured speed crossover: 3 for
#: 64-wide heads, 9 for 16-wide ones (7-9 before the block-wise FAVOR+); kept at 4, where exact attention is at most
#: 1.2x slower, so that a model's attention does not change with this release.
EXACT_MAX_RATIO = 4


class PerformerAttention(nn.Module):
    """Multi-head FAVOR+ self-attention (softmax kernel, orthogonal random features).

    By default the feature map and the linear attention run in float32 even under autocast (sums over ~20,000
    tokens); the projections follow autocast.

    Parameters
    ----------
    d_model
        Token width.
    n_heads
        Attention heads; must divide ``d_model``.
    nb_features
        Number of random features ``m`` per head; ``None`` uses ``int(d_head * ln(d_head))`` (FAVOR+ and
        scFoundation: 266 for ``d_head = 64``).
    bias
        Whether the projections have a bias.
    key_stabilizer
        How the key features are stabilized (see ``softmax_kernel_features``).
    exact
        ``"auto"`` (default): exact softmax attention (SDPA) for sequences of at most ``4 · nb_features`` tokens,
        where it costs about as much as FAVOR+ or less and is exact instead of an estimate of the same softmax
        attention; FAVOR+ for longer ones. Measured on a 2-core CPU (forward + backward, batch 8, float32, CPU
        time), with the block-wise FAVOR+: with ``d_head = 64`` (``m = 266``) exact attention was 2.2x faster at 256
        tokens, as fast at 765, 1.2x slower at 1,064 (the limit) and 1.8x slower at 2,000; with ``d_head = 16``
        (``m = 44``) the crossover was near 400 tokens (before the block-wise FAVOR+ it was near 2,000 tokens for
        ``d_head = 64``). ``"never"``: always FAVOR+ (the paper's decoder at any length). ``"always"``: always
        exact.
    feature_precision
        ``"float32"`` (default): under autocast the feature maps and the linear attention still run in float32.
        ``"autocast"``: they follow autocast (bf16 matmuls, which accumulate in float32). Measured on a CPU with AMX
        (XTrimoGene-10M, bf16 training step of the module on 4 pbmc3k cells): 1.06x faster since the attention runs
        block by block (``cellformers.nn._favor_attention.favor_attention``; it was 1.3x with the feature
        maps written out), predictions and gradients at cosine > 0.9999 to the float32 maps with initial weights;
        the exponent of a feature is then rounded to bf16 (about 0.4% relative).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> attn = cf.nn.PerformerAttention(d_model=16, n_heads=2)
    >>> attn(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        nb_features: int | None = None,
        bias: bool = True,
        key_stabilizer: Literal["head", "cell"] = "head",
        exact: Literal["auto", "never", "always"] = "auto",
        feature_precision: Literal["float32", "autocast"] = "float32",
    ):
        super().__init__()
        if feature_precision not in ("float32", "autocast"):
            msg = f"`feature_precision` must be 'float32' or 'autocast', got {feature_precision!r}."
            raise ValueError(msg)
        self.feature_precision = feature_precision
        if key_stabilizer not in ("head", "cell"):
            msg = f"`key_stabilizer` must be 'head' or 'cell', got {key_stabilizer!r}."
            raise ValueError(msg)
        if exact not in ("auto", "never", "always"):
            msg = f"`exact` must be 'auto', 'never' or 'always', got {exact!r}."
            raise ValueError(msg)
        self.key_stabilizer = key_stabilizer
        self.exact = exact
        if d_model % n_heads != 0:
            msg = f"`d_model` ({d_model}) must be divisible by `n_heads` ({n_heads})."
            raise ValueError(msg)
        self.n_heads = n_heads
        self.d_head = d_model // n_heads
        if nb_features is None:
            nb_features = max(1, int(self.d_head * math.log(self.d_head))) if self.d_head > 1 else 1
        self.nb_features = int(nb_features)
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=bias)
        self.out = nn.Linear(d_model, d_model, bias=bias)
        self.register_buffer(
            "projection", gaussian_orthogonal_random_matrix(self.nb_features, self.d_head), persistent=True
        )

    def uses_exact(self, length: int) -> bool:
        """Whether a sequence of ``length`` tokens gets exact softmax attention (see ``exact``)."""
        return self.exact == "always" or (self.exact == "auto" and length <= EXACT_MAX_RATIO * self.nb_features)

    @torch.no_grad()
    def redraw_projection_matrix(self, generator: torch.Generator | None = None) -> None:
        """Draw a new random projection (FAVOR+ feature redrawing)."""
        new = gaussian_orthogonal_random_matrix(self.nb_features, self.d_head, generator=generator)
        self.projection.copy_(new.to(self.projection))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """Attend over tokens.

        Parameters
        ----------
        x
            Tokens, shape ``(batch, length, d_model)``.
        padding_mask
            Boolean ``(batch, length)``, ``True`` at padding: padded keys get no attention.

        Returns
        -------
        Tensor of shape ``(batch, length, d_model)``.
        """
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.n_heads, self.d_head).permute(2, 0, 3, 1, 4)
        if self.uses_exact(n):
            mask = None if padding_mask is None else ~padding_mask[:, None, None, :]
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
            return self.out(y.transpose(1, 2).reshape(b, n, d))
        # under autocast q, k, v are bf16: float32 features unless `feature_precision="autocast"`
        dtype = torch.promote_types(q.dtype, torch.float32) if self.feature_precision == "float32" else q.dtype
        y = favor_attention(
            q, k, v, self.projection, padding_mask=padding_mask, key_stabilizer=self.key_stabilizer, dtype=dtype
        )
        return self.out(y.transpose(1, 2).reshape(b, n, d))


class PerformerBlock(nn.Module):
    """Pre-norm Performer block: ``x + Attn(LN(x))`` then ``x + FF(LN(x))``.

    Parameters
    ----------
    d_model
        Token width.
    n_heads
        Attention heads.
    d_ff
        Feed-forward hidden width.
    dropout_rate
        Dropout after attention and inside/after the feed-forward network.
    nb_features
        Random features per head (see :class:`PerformerAttention`).
    activation
        Feed-forward non-linearity.
    key_stabilizer
        How the key features are stabilized (see ``softmax_kernel_features``).
    exact, feature_precision
        When to use exact softmax attention instead of FAVOR+, and the precision of the feature maps under
        autocast (see :class:`PerformerAttention`).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> block = cf.nn.PerformerBlock(d_model=16, n_heads=2, d_ff=32)
    >>> block(torch.randn(2, 10, 16)).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        d_ff: int,
        dropout_rate: float = 0.0,
        nb_features: int | None = None,
        activation: Literal["gelu", "relu"] = "gelu",
        key_stabilizer: Literal["head", "cell"] = "head",
        exact: Literal["auto", "never", "always"] = "auto",
        feature_precision: Literal["float32", "autocast"] = "float32",
    ):
        super().__init__()
        self.attn = PerformerAttention(
            d_model,
            n_heads,
            nb_features,
            key_stabilizer=key_stabilizer,
            exact=exact,
            feature_precision=feature_precision,
        )
        self.ff = nn.Sequential(
            nn.Linear(d_model, d_ff), _ACTIVATIONS[activation](), nn.Dropout(dropout_rate), nn.Linear(d_ff, d_model)
        )
        self.norm1 = nn.LayerNorm(d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.drop1 = nn.Dropout(dropout_rate)
        self.drop2 = nn.Dropout(dropout_rate)

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(batch, length, d_model)`` -> same shape."""
        x = x + self.drop1(self.attn(self.norm1(x), padding_mask))
        return x + self.drop2(self.ff(self.norm2(x)))


class Performer(nn.Module):
    """A stack of pre-norm :class:`PerformerBlock` with periodic feature redrawing and a final LayerNorm.

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
    nb_features
        Random features per head; ``None``: ``int(d_head * ln(d_head))``.
    feature_redraw_interval
        Redraw the random projections every this many training forward calls (1,000 in scFoundation); ``0`` or
        ``None`` never redraws. Evaluation calls never redraw.
    activation
        Feed-forward non-linearity.
    final_norm
        Apply a LayerNorm to the output.
    gradient_checkpointing
        Recompute block activations in the backward pass to save memory.
    key_stabilizer
        How the key features are stabilized (see ``softmax_kernel_features``).
    exact
        When to use exact softmax attention instead of FAVOR+: ``"auto"`` up to ``4 · nb_features`` tokens (cheaper
        and exact there), ``"never"`` or ``"always"`` (see :class:`PerformerAttention`).
    feature_precision
        ``"float32"`` or ``"autocast"``: precision of the feature maps under autocast (see :class:`PerformerAttention`).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> decoder = cf.nn.Performer(d_model=16, n_layers=1, n_heads=2, d_ff=32)
    >>> x = torch.randn(2, 10, 16)
    >>> padding = torch.zeros(2, 10, dtype=torch.bool)
    >>> padding[1, 7:] = True  # the second sequence has 7 tokens
    >>> decoder(x, padding_mask=padding).shape
    torch.Size([2, 10, 16])
    """

    def __init__(
        self,
        d_model: int,
        n_layers: int,
        n_heads: int,
        d_ff: int,
        dropout_rate: float = 0.0,
        nb_features: int | None = None,
        feature_redraw_interval: int | None = 1000,
        activation: Literal["gelu", "relu"] = "gelu",
        final_norm: bool = True,
        gradient_checkpointing: bool = False,
        key_stabilizer: Literal["head", "cell"] = "head",
        exact: Literal["auto", "never", "always"] = "auto",
        feature_precision: Literal["float32", "autocast"] = "float32",
    ):
        super().__init__()
        self.layers = nn.ModuleList(
            PerformerBlock(
                d_model, n_heads, d_ff, dropout_rate, nb_features, activation, key_stabilizer, exact, feature_precision
            )
            for _ in range(n_layers)
        )
        self.norm = nn.LayerNorm(d_model) if final_norm else nn.Identity()
        self.feature_redraw_interval = feature_redraw_interval or 0
        self.gradient_checkpointing = gradient_checkpointing
        self.calls_since_last_redraw = 0

    @torch.no_grad()
    def redraw_projection_matrices(self, generator: torch.Generator | None = None) -> None:
        """Redraw the random projection of every attention layer."""
        for layer in self.layers:
            layer.attn.redraw_projection_matrix(generator)

    def _check_redraw(self) -> None:
        if not (self.training and self.feature_redraw_interval > 0):
            return
        if self.calls_since_last_redraw >= self.feature_redraw_interval:
            self.redraw_projection_matrices()
            self.calls_since_last_redraw = 0
        self.calls_since_last_redraw += 1

    def forward(self, x: Tensor, padding_mask: Tensor | None = None) -> Tensor:
        """``(batch, length, d_model)`` -> same shape. ``padding_mask``: ``(batch, length)``, ``True`` = padding."""
        self._check_redraw()
        return self.run_blocks(x, padding_mask)

    def run_blocks(
        self, x: Tensor, padding_mask: Tensor | None = None, *, checkpoint_blocks: bool | None = None
    ) -> Tensor:
        """The blocks and the final norm, without counting a call towards feature redrawing.

        Callers that run the stack several times for one training step (chunks of a minibatch, or the recomputation
        of a checkpointed region in the backward pass) count the step once with ``_check_redraw`` and call this:
        a redraw between the forward pass and its recomputation would make the gradients wrong.
        ``checkpoint_blocks``: checkpoint each block (``None``: the ``gradient_checkpointing`` setting).
        """
        ckpt = self.gradient_checkpointing if checkpoint_blocks is None else checkpoint_blocks
        for layer in self.layers:
            if ckpt and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, padding_mask, use_reentrant=False)
            else:
                x = layer(x, padding_mask)
        return self.norm(x)


__all__ = [
    "Performer",
    "PerformerAttention",
    "PerformerBlock",
    "gaussian_orthogonal_random_matrix",
    "linear_attention",
    "softmax_kernel_features",
]
