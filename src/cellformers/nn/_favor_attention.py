"""FAVOR+ attention computed a block of tokens at a time, without keeping the feature maps.

:func:`~cellformers.nn._performer.softmax_kernel_features` and :func:`~cellformers.nn._performer.linear_attention`
write FAVOR+ out as it reads: two ``(batch, heads, length, m)`` feature tensors (``m = 266`` features for 64-wide
heads, four times the width of the queries), each passed over five or six times and kept for the backward pass. Over
xTrimoGene's ~20,000 decoder genes those passes run at memory speed and the kept features are most of the training
memory. Here the same function runs over blocks of tokens small enough to stay in cache: the keys are summed into
``M = φ(K)ᵀ [V 1]`` under a running maximum (the way flash attention keeps its softmax), the queries read ``M``, and
the backward pass recomputes each block's features from ``Q`` and ``K`` instead of loading them. The result and its
gradients equal the written-out form (to rounding; tested in float64).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    from torch import Tensor

#: Elements of one block of features ``(batch, heads, tokens, m)``: 4 MB in float32. Measured on a 2-core CPU
#: (4 cells x 4 heads x 13,714 tokens, m = 266, forward + backward): 2**18 1.75 CPU-s, 2**19 and 2**20 1.6, 2**21
#: 2.0, against 2.8 for the written-out form.
CHUNK_ELEMENTS = 2**20
#: The same on other devices (GPUs), where the point is the memory, not the caches: 256 MB in float32, so a GPU gets
#: large kernels rather than many small ones. Not measured (no GPU was available).
DEVICE_CHUNK_ELEMENTS = 2**26


def default_chunk_elements(device: torch.device) -> int:
    """Elements of one block of features on ``device``: ``CHUNK_ELEMENTS`` on a CPU, else ``DEVICE_CHUNK_ELEMENTS``."""
    return CHUNK_ELEMENTS if device.type == "cpu" else DEVICE_CHUNK_ELEMENTS


def no_autocast(device_type: str):
    """Disable autocast on devices that have it (``meta`` tensors, e.g. for FLOP counting, have none)."""
    if device_type in ("cpu", "cuda", "mps", "xpu"):
        return torch.autocast(device_type=device_type, enabled=False)
    return contextlib.nullcontext()


# torch.compile calls it as it is (a graph break): traced, its loop over blocks is unrolled (a 3,000-gene decoder with
# seven blocks took 354 s to compile instead of ~30 s) and XTrimoGene-10M failed inside dynamo (torch 2.13); the
# fusion compiling used to bring, the block loop now does eagerly
@torch.compiler.disable
def favor_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    projection: Tensor,
    *,
    padding_mask: Tensor | None = None,
    eps: float = 1e-4,
    key_stabilizer: Literal["head", "cell"] = "head",
    chunk_elements: int | None = None,
    dtype: torch.dtype | None = None,
) -> Tensor:
    """Non-causal FAVOR+ attention ``D⁻¹ φ(Q) (φ(K)ᵀ V)`` with positive random features, block by block.

    Equal to ``linear_attention(softmax_kernel_features(q, ...), softmax_kernel_features(k, ...), v)`` (see
    :mod:`cellformers.nn._performer` for the feature map and its stabilisers) without materialising the features.
    Blocks are computed in ``dtype``; the sums over tokens (``φ(K)ᵀ V``, its gradient) in float32 (float64 for
    float64 inputs).

    Parameters
    ----------
    q, k, v
        Queries, keys and values, shape ``(batch, heads, length, d_head)``.
    projection
        Random projection ``(m, d_head)``.
    padding_mask
        Boolean ``(batch, length)``, ``True`` at padding: padded keys get no attention.
    eps
        Added to every feature (divided by ``sqrt(m)``), as in ``softmax_kernel_features``.
    key_stabilizer
        Maximum subtracted from the keys' exponent: per cell and head, or per cell over all heads.
    chunk_elements
        Size of a block of features in elements; the block holds ``chunk_elements // (batch * heads * m)`` tokens.
        ``None``: ``default_chunk_elements(q.device)`` (4 MB blocks that stay in a CPU's last-level cache; 64 times
        larger on other devices).
    dtype
        Dtype of the computation (default: that of ``q``). Each block of ``q``, ``k`` and ``v`` is cast on the way
        in, so bf16 activations get float32 feature maps without a float32 copy of the whole sequence.

    Returns
    -------
    Tensor of shape ``(batch, heads, length, d_head)`` in the dtype of ``q``; the gradients have the dtypes of the
    inputs.
    """
    if key_stabilizer not in ("head", "cell"):
        msg = f"`key_stabilizer` must be 'head' or 'cell', got {key_stabilizer!r}."
        raise ValueError(msg)
    b, h, _, _ = q.shape
    if chunk_elements is None:
        chunk_elements = default_chunk_elements(q.device)
    tokens = max(1, int(chunk_elements) // max(1, b * h * projection.shape[0]))
    dtype = q.dtype if dtype is None else dtype
    return _FavorAttention.apply(q, k, v, projection, padding_mask, eps, key_stabilizer == "head", tokens, dtype)


class _Features:
    """The pieces of ``φ(x) = exp(x·w' - |x|² d^(-1/2) / 2 - stab) / sqrt(m) + eps / sqrt(m)``, ``w' = w d^(-1/4)``."""

    def __init__(self, projection: Tensor, d_head: int, dtype: torch.dtype, eps: float):
        m = projection.shape[0]
        self.scale = d_head**-0.25
        self.proj = (projection.to(torch.promote_types(projection.dtype, torch.float32)) * self.scale).to(
            dtype
        )  # (m, d_head)
        self.log_m = 0.5 * math.log(m)  # the 1/sqrt(m) of every feature, moved into the exponent
        self.c = eps * m**-0.5
        self.dtype = dtype
        self.acc = torch.promote_types(dtype, torch.float32)  # the dtype of sums over tokens

    def block(self, x: Tensor, sl: slice) -> Tensor:
        """Tokens ``sl`` of ``x``, contiguous in the compute dtype.

        One small copy both casts (bf16 activations, float32 features) and spares the matmuls a hidden copy.
        """
        return x[:, :, sl].to(dtype=self.dtype, memory_format=torch.contiguous_format)

    def dash(self, x: Tensor) -> Tensor:
        # one (tokens x d) @ (d x m) matmul over every cell and head of the block: torch.matmul would run it as a
        # batch of per-head matmuls (measured 2x slower on a 2-core CPU for 16 x 246 tokens)
        return torch.mm(x.reshape(-1, x.shape[-1]), self.proj.t()).view(*x.shape[:-1], -1)

    def diag(self, x: Tensor) -> Tensor:
        return (x.to(self.acc) * x.to(self.acc)).sum(-1, keepdim=True) * (self.scale**2 / 2)

    def queries(self, x: Tensor) -> Tensor:
        """``φ(x) - c`` for queries: a maximum per row is subtracted (it cancels in the normalisation)."""
        dash = self.dash(x)
        offset = self.diag(x) + dash.amax(-1, keepdim=True).to(self.acc) + self.log_m
        return dash.sub_(offset.to(dash.dtype)).exp_()

    def keys(self, x: Tensor, stab: Tensor, pad: Tensor | None, dash: Tensor | None = None) -> Tensor:
        """``φ(x) - c`` for keys under the stabiliser ``stab``; zero at padding."""
        dash = self.dash(x) if dash is None else dash
        offset = self.diag(x) + stab + self.log_m
        if pad is not None:
            offset = offset.masked_fill(pad, math.inf)
        return dash.sub_(offset.to(dash.dtype)).exp_()

    def grad_input(self, x: Tensor, grad_dash: Tensor) -> Tensor:
        """Gradient with respect to ``x`` of ``Σ grad_dash · (x·w' - |x|² d^(-1/2) / 2)``."""
        return torch.matmul(grad_dash, self.proj) - grad_dash.sum(-1, keepdim=True) * x * self.scale**2


def _with_ones(v: Tensor, keep: Tensor | None) -> Tensor:
    """``[V 1]`` (the column of ones gives the normaliser ``D`` in the same matmuls), zero at padded keys."""
    v1 = torch.cat([v, torch.ones_like(v[..., :1])], dim=-1)
    return v1 if keep is None else v1 * keep


class _FavorAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, projection, padding_mask, eps, per_head, tokens, dtype):
        with no_autocast(q.device.type):
            b, h, length, d_head = q.shape
            feats = _Features(projection, d_head, dtype, eps)
            acc, m = feats.acc, projection.shape[0]
            dims = (-1, -2) if per_head else (-1, -2, -3)
            pad = None if padding_mask is None else padding_mask[:, None, :, None]
            keep = None if pad is None else (~pad).to(dtype)
            # keys: M_e = Σ exp(...)ᵀ [V 1] under a running maximum, rescaled whenever the maximum grows
            m_e = q.new_zeros(b, h, m, v.shape[-1] + 1, dtype=acc)
            v_sum = q.new_zeros(b, h, 1, v.shape[-1] + 1, dtype=acc)
            stab = q.new_full((b, h if per_head else 1, 1, 1), -math.inf, dtype=acc)
            for sl in _blocks(length, tokens):
                k_c, pad_c = feats.block(k, sl), None if pad is None else pad[:, :, sl]
                dash = feats.dash(k_c)
                seen = dash if pad_c is None else dash.masked_fill(pad_c, -math.inf)
                new = torch.maximum(stab, seen.amax(dim=dims, keepdim=True).to(acc))
                m_e.mul_(torch.exp(stab - new).nan_to_num_(0.0))
                stab = new
                v1 = _with_ones(feats.block(v, sl), None if keep is None else keep[:, :, sl])
                k_e = feats.keys(k_c, _finite(stab), pad_c, dash)
                m_e += torch.matmul(k_e.transpose(-1, -2), v1).to(acc)
                v_sum += v1.to(acc).sum(-2, keepdim=True)
            stab = _finite(stab)
            big_m = m_e + feats.c * v_sum  # φ = exp(...) + c: the c adds c Σ [V 1] to every row of M
            out = torch.empty(b, h, length, v.shape[-1] + 1, dtype=acc, device=q.device)
            big_m_c, col = big_m.to(dtype), feats.c * big_m.sum(-2, keepdim=True)
            for sl in _blocks(length, tokens):
                out[:, :, sl] = torch.matmul(feats.queries(feats.block(q, sl)), big_m_c).to(acc) + col
            den = out[..., -1:].clamp_min(1e-12)
            y = out[..., :-1] / den
        ctx.save_for_backward(q, k, v, projection, padding_mask, big_m, stab, y, den)
        ctx.eps, ctx.tokens, ctx.dtype = eps, tokens, dtype
        return y.to(q.dtype)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        q, k, v, projection, padding_mask, big_m, stab, y, den = ctx.saved_tensors
        with no_autocast(q.device.type):
            length = q.shape[2]
            feats = _Features(projection, q.shape[-1], ctx.dtype, ctx.eps)
            acc, dtype = feats.acc, ctx.dtype
            pad = None if padding_mask is None else padding_mask[:, None, :, None]
            keep = None if pad is None else (~pad).to(acc)
            g_num = grad.to(acc) / den
            g_out = torch.cat([g_num, -(g_num * y).sum(-1, keepdim=True)], dim=-1)  # d/d[numerator, D]
            big_m_t = big_m.to(dtype).transpose(-1, -2)
            g_m = feats.c * g_out.sum(-2, keepdim=True).expand_as(big_m).clone()
            grad_q = torch.empty_like(q)
            for sl in _blocks(length, ctx.tokens):
                q_c, g_c = feats.block(q, sl), g_out[:, :, sl].to(dtype)
                q_e = feats.queries(q_c)
                g_m += torch.matmul(q_e.transpose(-1, -2), g_c).to(acc)
                grad_q[:, :, sl] = feats.grad_input(q_c, torch.matmul(g_c, big_m_t).mul_(q_e))
            g_m_c, g_m_t = g_m.to(dtype), g_m.to(dtype).transpose(-1, -2)
            g_col = feats.c * g_m.sum(-2, keepdim=True)
            grad_k, grad_v = torch.empty_like(k), torch.empty_like(v)
            for sl in _blocks(length, ctx.tokens):
                k_c, pad_c = feats.block(k, sl), None if pad is None else pad[:, :, sl]
                k_e = feats.keys(k_c, stab, pad_c)
                g_v1 = torch.matmul(k_e, g_m_c).to(acc) + g_col
                if keep is not None:
                    g_v1 = g_v1 * keep[:, :, sl]
                grad_v[:, :, sl] = g_v1[..., :-1]
                v1 = _with_ones(feats.block(v, sl), None)
                grad_k[:, :, sl] = feats.grad_input(k_c, torch.matmul(v1, g_m_t).mul_(k_e))
        return grad_q, grad_k, grad_v, None, None, None, None, None, None


def _blocks(length: int, tokens: int):
    return (slice(start, min(start + tokens, length)) for start in range(0, length, tokens))


def _finite(stab: Tensor) -> Tensor:
    """A maximum over padding only (-inf) becomes 0: its cell has no keys, whose features are zero anyway."""
    return torch.where(torch.isfinite(stab), stab, torch.zeros_like(stab))
