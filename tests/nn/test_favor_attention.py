from __future__ import annotations

import pytest
import torch

from cellformers.nn._favor_attention import favor_attention
from cellformers.nn._performer import gaussian_orthogonal_random_matrix, linear_attention, softmax_kernel_features


def _written_out(q, k, v, proj, pad, key_stabilizer):
    qf = softmax_kernel_features(q, proj, is_query=True)
    kf = softmax_kernel_features(k, proj, is_query=False, padding_mask=pad, key_stabilizer=key_stabilizer)
    return linear_attention(qf, kf, v)


def _inputs(dtype=torch.float64, b=3, h=2, n=23, d=8, m=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(b, h, n, d, generator=g, dtype=dtype, requires_grad=True) for _ in range(3))
    proj = gaussian_orthogonal_random_matrix(m, d, generator=g).to(dtype)
    return q, k, v, proj, g


@pytest.mark.parametrize("key_stabilizer", ["head", "cell"])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("chunk_elements", [1, 5 * 3 * 2 * 12, 10**9])
def test_equals_the_written_out_form_and_its_gradients(key_stabilizer, padded, chunk_elements):
    q, k, v, proj, g = _inputs()
    pad = None
    if padded:
        pad = torch.zeros(3, 23, dtype=torch.bool)
        pad[1, 15:] = True  # a short cell
        pad[2] = True  # a cell without tokens
        with torch.no_grad():
            v[1, :, 15:] = 1e3  # padded values must not leak
    ref = _written_out(q, k, v, proj, pad, key_stabilizer)
    out = favor_attention(q, k, v, proj, padding_mask=pad, key_stabilizer=key_stabilizer, chunk_elements=chunk_elements)
    torch.testing.assert_close(out, ref)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    grads = torch.autograd.grad((out * w).sum(), (q, k, v))
    ref_grads = torch.autograd.grad((ref * w).sum(), (q, k, v))
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want)


def test_large_exponents_stay_finite():
    """The running maximum keeps exp() in range when a late block holds the largest key."""
    q, k, v, proj, _ = _inputs(dtype=torch.float64)
    with torch.no_grad():
        k[:, :, -1] *= 30.0
        q *= 10.0
    out = favor_attention(q, k, v, proj, chunk_elements=1)
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, _written_out(q, k, v, proj, None, "head"))


def test_bf16_follows_the_input_dtype_and_agrees_with_float32():
    q, k, v, proj, _ = _inputs(dtype=torch.float32, b=2, h=2, n=300, d=16, m=32)
    ref = favor_attention(q, k, v, proj)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = favor_attention(qb, kb, vb, proj)
    assert out.dtype == torch.bfloat16
    cos = torch.nn.functional.cosine_similarity(out.float().flatten(), ref.detach().flatten(), dim=0)
    assert cos > 0.999
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in (qb, kb, vb))


def test_keeps_no_feature_map_for_backward():
    q, k, v, proj, _ = _inputs(dtype=torch.float32, b=2, h=2, n=500, d=8, m=64)
    feature_bytes = 2 * 2 * 500 * 64 * 4
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        favor_attention(q, k, v, proj)
    assert max(saved) < feature_bytes / 4
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        _written_out(q, k, v, proj, None, "head")
    assert max(saved) >= feature_bytes  # what the test would catch


def test_rejects_an_unknown_key_stabilizer():
    q, k, v, proj, _ = _inputs()
    with pytest.raises(ValueError, match="key_stabilizer"):
        favor_attention(q, k, v, proj, key_stabilizer="batch")


def test_float32_features_of_bf16_inputs_keep_the_input_dtypes():
    """`dtype=float32` on bf16 activations: float32 maths block by block, bf16 output and gradients."""
    q, k, v, proj, _ = _inputs(dtype=torch.float32, b=2, h=2, n=300, d=16, m=32)
    qb, kb, vb = (t.detach().bfloat16().requires_grad_() for t in (q, k, v))
    out = favor_attention(qb, kb, vb, proj, dtype=torch.float32)
    ref = favor_attention(*(t.detach().float() for t in (qb, kb, vb)), proj)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=1e-2, rtol=1e-2)
    out.float().sum().backward()
    assert all(t.grad.dtype == torch.bfloat16 and torch.isfinite(t.grad).all() for t in (qb, kb, vb))


def test_compiled_attention_with_dynamic_shapes_equals_eager_and_leaves_the_block_loop_untraced():
    """torch.compile calls the block-wise attention as it is: traced, its loop is unrolled (minutes to compile)."""
    from cellformers.nn import PerformerAttention

    torch.manual_seed(0)
    attn = PerformerAttention(d_model=16, n_heads=2, nb_features=8, exact="never")
    compiled = torch.compile(attn, dynamic=True)
    for n in (40, 57):
        x = torch.randn(2, n, 16)
        torch.testing.assert_close(compiled(x), attn(x))
    torch._dynamo.reset()
    explained = torch._dynamo.explain(attn)(torch.randn(2, 40, 16))
    assert explained.graph_break_count >= 1


def test_block_size_follows_the_device():
    """Cache-sized blocks on a CPU; on other devices (GPUs) blocks 64 times larger (fewer, larger kernels)."""
    from cellformers.nn import _favor_attention as fa

    assert fa.default_chunk_elements(torch.device("cpu")) == fa.CHUNK_ELEMENTS
    assert fa.default_chunk_elements(torch.device("meta")) == fa.DEVICE_CHUNK_ELEMENTS > fa.CHUNK_ELEMENTS
    q, k, v, proj, _ = _inputs()
    torch.testing.assert_close(favor_attention(q, k, v, proj), favor_attention(q, k, v, proj, chunk_elements=10**9))
