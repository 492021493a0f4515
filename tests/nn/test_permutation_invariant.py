from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cellformers.nn import PermutationInvariantEmbedding


def _naive_pooled(emb: PermutationInvariantEmbedding, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Algorithm 2 written literally: a (batch, genes, N) tensor, then the (hierarchical) pooling per cell."""
    p = emb.value_projection(ids)
    alpha = emb.value_scale(ids)
    gene = emb.gene_embedding(ids)
    u = F.leaky_relu(x[:, :, None] * p[None], emb.negative_slope)
    value = alpha[None] * u + emb.mlp(u)
    e = emb.linear(torch.cat([value, gene[None].expand(x.shape[0], -1, -1)], -1))
    if emb.pooling == "max":
        return e.amax(1)
    out = []
    for b in range(x.shape[0]):
        nz = x[b] != 0
        if emb.hierarchical:
            items = [e[b][nz]]
            if (~nz).any():
                items.append(e[b][~nz].mean(0, keepdim=True))
            out.append(torch.cat(items).mean(0))
        else:
            out.append(e[b].mean(0))
    return torch.stack(out)


def _data(n_cells=6, n_genes=30, n_tokens=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n_cells, n_genes, generator=g) * 3
    x[x < 1.8] = 0
    x[2] = 0  # a cell without any detected gene
    x[3] = 1.0  # a cell where every gene is detected
    ids = torch.randperm(n_tokens, generator=g)[:n_genes]
    return x, ids


def test_shapes():
    emb = PermutationInvariantEmbedding(50, n_pooled=8, n_output=4, n_value=6, n_gene=5)
    x, ids = _data()
    assert emb.pooled(x, ids).shape == (6, 8)
    assert emb(x, ids).shape == (6, 8, 4)
    with pytest.raises(ValueError, match="expected x of shape"):
        emb(x[:, :-1], ids)


@pytest.mark.parametrize("pooling", ["mean", "max"])
@pytest.mark.parametrize("hierarchical", [True, False])
def test_matches_naive_algorithm_values_and_gradients(pooling, hierarchical):
    torch.manual_seed(0)
    emb = PermutationInvariantEmbedding(
        50, n_pooled=8, n_output=4, n_value=6, n_gene=5, pooling=pooling, hierarchical=hierarchical, max_chunk=64
    )
    x, ids = _data()
    fast = emb.pooled(x, ids)
    naive = _naive_pooled(emb, x, ids)
    torch.testing.assert_close(fast, naive, atol=1e-5, rtol=1e-5)
    params = list(emb.parameters())
    g_fast = torch.autograd.grad((fast**2).sum(), params, allow_unused=True)
    g_naive = torch.autograd.grad((naive**2).sum(), params, allow_unused=True)
    for a, b in zip(g_fast, g_naive, strict=True):
        a = torch.zeros(()) if a is None else a
        b = torch.zeros(()) if b is None else b
        torch.testing.assert_close(a.expand_as(b) if a.ndim == 0 else a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("pooling", ["mean", "max"])
def test_invariant_to_gene_order(pooling):
    torch.manual_seed(1)
    emb = PermutationInvariantEmbedding(50, n_pooled=8, n_output=4, n_value=6, n_gene=5, pooling=pooling)
    x, ids = _data()
    perm = torch.randperm(x.shape[1])
    torch.testing.assert_close(emb(x[:, perm], ids[perm]), emb(x, ids), atol=1e-5, rtol=1e-5)
    # but the embedding does depend on which gene carries which value
    assert not torch.allclose(emb(x[:, perm], ids), emb(x, ids))


def test_hierarchical_pooling_weights_zero_genes_as_one_element():
    """Adding undetected genes changes a flat mean a lot, the hierarchical mean only through their average."""
    torch.manual_seed(0)
    emb = PermutationInvariantEmbedding(1000, n_pooled=4, n_output=2, n_value=3, n_gene=3)
    x = torch.zeros(1, 1000)
    x[0, :5] = 2.0
    ids = torch.arange(1000)
    nz = emb.pooled(x[:, :5], ids[:5])
    with_zeros = emb.pooled(x, ids)
    # 5 detected genes + the pooled zeros: the detected genes keep 5/6 of the weight
    zero_mean = _naive_pooled(emb, torch.zeros(1, 995), ids[5:])
    torch.testing.assert_close(with_zeros, (5 * nz + zero_mean) / 6, atol=1e-5, rtol=1e-5)


def test_bf16_autocast_runs_in_float32():
    emb = PermutationInvariantEmbedding(50, n_pooled=8, n_output=4, n_value=6, n_gene=5)
    x, ids = _data()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = emb.pooled(x, ids)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, emb.pooled(x, ids))
