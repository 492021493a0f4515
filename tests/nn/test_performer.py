from __future__ import annotations

import math

import pytest
import torch

from cellformers.nn import Performer, PerformerAttention
from cellformers.nn._performer import gaussian_orthogonal_random_matrix, linear_attention, softmax_kernel_features


def test_shapes():
    dec = Performer(d_model=16, n_layers=2, n_heads=4, d_ff=32)
    x = torch.randn(3, 50, 16)
    assert dec(x).shape == (3, 50, 16)
    assert dec.layers[0].attn.nb_features == int(4 * math.log(4))


def test_orthogonal_blocks():
    w = gaussian_orthogonal_random_matrix(20, 8, scaling="sqrt_d")
    assert w.shape == (20, 8)
    block = w[:8] / math.sqrt(8)
    torch.testing.assert_close(block @ block.T, torch.eye(8), atol=1e-5, rtol=1e-5)


def test_favor_approximates_softmax_attention():
    torch.manual_seed(0)
    b, h, n, d = 1, 2, 128, 8
    # moderate query/key norms: the variance of positive random features grows with exp(|q|² + |k|²)
    q, k, v = 0.6 * torch.randn(b, h, n, d), 0.6 * torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    exact = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), -1) @ v
    uniform_err = (v.mean(-2, keepdim=True) - exact).abs().mean()
    errs = []
    for m in (8, 4096):
        p = gaussian_orthogonal_random_matrix(m, d)
        approx = linear_attention(
            softmax_kernel_features(q, p, is_query=True), softmax_kernel_features(k, p, is_query=False), v
        )
        errs.append((approx - exact).abs().mean())
    assert errs[1] < 0.5 * errs[0]
    assert errs[1] < 0.5 * uniform_err


def test_padding_keys_are_ignored_and_batch_independent():
    torch.manual_seed(0)
    attn = PerformerAttention(16, 2, nb_features=32).eval()
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[0, 4:] = True
    y = attn(x, pad)
    x2 = x.clone()
    x2[0, 4:] = 100.0
    torch.testing.assert_close(attn(x2, pad)[0, :4], y[0, :4])
    # same result alone as in a batch (the key stabiliser is per cell)
    torch.testing.assert_close(attn(x[1:], pad[1:])[0], y[1], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(attn(x, torch.ones(2, 6, dtype=torch.bool))).all()


def test_feature_redraw_only_in_training():
    torch.manual_seed(0)
    dec = Performer(d_model=8, n_layers=1, n_heads=2, d_ff=16, feature_redraw_interval=2)
    p0 = dec.layers[0].attn.projection.clone()
    x = torch.randn(1, 5, 8)
    dec.eval()
    for _ in range(5):
        dec(x)
    torch.testing.assert_close(dec.layers[0].attn.projection, p0)
    dec.train()
    dec(x)
    dec(x)
    torch.testing.assert_close(dec.layers[0].attn.projection, p0)
    dec(x)
    assert not torch.allclose(dec.layers[0].attn.projection, p0)


def test_bf16_autocast_finite_and_checkpointing():
    torch.manual_seed(0)
    a = Performer(d_model=8, n_layers=2, n_heads=2, d_ff=16, feature_redraw_interval=0)
    b = Performer(d_model=8, n_layers=2, n_heads=2, d_ff=16, feature_redraw_interval=0, gradient_checkpointing=True)
    b.load_state_dict(a.state_dict())
    x = torch.randn(2, 30, 8)
    a(x).sum().backward()
    b(x).sum().backward()
    for pa, pb in zip(a.parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa.grad, pb.grad)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = a(x)
    assert torch.isfinite(y).all()


def test_heads_must_divide_width():
    with pytest.raises(ValueError, match="divisible"):
        PerformerAttention(10, 3)


def test_exact_attention_below_the_crossover_and_favor_above():
    from cellformers.nn._performer import EXACT_MAX_RATIO

    attn = PerformerAttention(d_model=16, n_heads=2, nb_features=8)
    assert attn.exact == "auto"
    assert attn.uses_exact(EXACT_MAX_RATIO * 8)
    assert not attn.uses_exact(EXACT_MAX_RATIO * 8 + 1)
    assert PerformerAttention(16, 2, nb_features=8, exact="never").uses_exact(4) is False
    assert PerformerAttention(16, 2, nb_features=8, exact="always").uses_exact(10_000) is True
    with pytest.raises(ValueError, match="`exact` must be"):
        PerformerAttention(16, 2, exact="sometimes")


def test_exact_attention_is_softmax_attention_with_padding():
    torch.manual_seed(0)
    attn = PerformerAttention(d_model=16, n_heads=2, exact="always")
    x = torch.randn(2, 6, 16)
    pad = torch.zeros(2, 6, dtype=torch.bool)
    pad[1, 4:] = True
    b, n, d = x.shape
    q, k, v = attn.qkv(x).view(b, n, 3, 2, 8).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / 8**0.5
    scores = scores.masked_fill(pad[:, None, None, :], float("-inf"))
    expected = attn.out((scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d))
    torch.testing.assert_close(attn(x, pad), expected, atol=1e-5, rtol=1e-5)
    # FAVOR+ estimates the same attention (loosely, with many features)
    favor = PerformerAttention(d_model=16, n_heads=2, nb_features=4096, exact="never")
    favor.qkv.load_state_dict(attn.qkv.state_dict())
    favor.out.load_state_dict(attn.out.state_dict())
    err = (favor(x, pad) - expected)[0].abs().mean() / expected[0].abs().mean()
    assert err < 0.2


def _features_reference(data, projection, is_query, padding_mask=None):
    """The feature map written out op by op (autograd keeps every intermediate): what the fused one must equal."""
    d, m = data.shape[-1], projection.shape[0]
    dash = data @ (projection * d**-0.25).T
    diag = (data * data).sum(-1, keepdim=True) * (d**-0.5 / 2)
    if is_query:
        stab = dash.amax(-1, keepdim=True).detach()
    else:
        masked = dash if padding_mask is None else dash.masked_fill(padding_mask[:, None, :, None], float("-inf"))
        stab = masked.amax(dim=(-1, -2), keepdim=True).detach()
    feats = torch.exp(dash - diag - stab + 0.5 * math.log(m) * -1) + 1e-4 * m**-0.5
    if not is_query and padding_mask is not None:
        feats = feats.masked_fill(padding_mask[:, None, :, None], 0.0)
    return feats


@pytest.mark.parametrize("is_query", [True, False])
@pytest.mark.parametrize("padded", [False, True])
def test_fused_feature_map_equals_the_op_by_op_map_and_its_gradient(is_query, padded):
    g = torch.Generator().manual_seed(3)
    data = torch.randn(2, 3, 9, 8, generator=g, dtype=torch.float64, requires_grad=True)
    proj = gaussian_orthogonal_random_matrix(12, 8, generator=g).double()
    pad = None
    if padded:
        pad = torch.zeros(2, 9, dtype=torch.bool)
        pad[1, 6:] = True
    out = softmax_kernel_features(data, proj, is_query=is_query, padding_mask=pad)
    ref = _features_reference(data, proj, is_query, pad)
    torch.testing.assert_close(out, ref)
    w = torch.randn(out.shape, generator=g, dtype=torch.float64)
    (grad,) = torch.autograd.grad((out * w).sum(), data)
    (ref_grad,) = torch.autograd.grad((ref * w).sum(), data)
    torch.testing.assert_close(grad, ref_grad)  # (not gradcheck: the stabiliser is a detached maximum by design)


def test_feature_precision_autocast_runs_the_feature_maps_in_bf16_and_agrees_with_float32():
    torch.manual_seed(0)
    ref = PerformerAttention(d_model=32, n_heads=2, nb_features=16, exact="never")
    fast = PerformerAttention(d_model=32, n_heads=2, nb_features=16, exact="never", feature_precision="autocast")
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 300, 32)
    seen = []
    import cellformers.nn._performer as perf

    original = perf.favor_attention

    def spy(q, k, v, *args, **kwargs):
        seen.append(kwargs["dtype"])
        return original(q, k, v, *args, **kwargs)

    perf.favor_attention = spy
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a, b = ref(x), fast(x)
    finally:
        perf.favor_attention = original
    assert seen == [torch.float32, torch.bfloat16]
    cos = torch.nn.functional.cosine_similarity(a.float().flatten(), b.float().flatten(), dim=0)
    assert cos > 0.999
    with pytest.raises(ValueError, match="feature_precision"):
        PerformerAttention(d_model=32, n_heads=2, feature_precision="bf16")
