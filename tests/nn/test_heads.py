from __future__ import annotations

import pytest
import torch

from cellformers.nn import ElasticCellSimilarity, ExpressionHead, MVCHead


def test_expression_head_shape():
    assert ExpressionHead(16, 51)(torch.randn(2, 7, 16)).shape == (2, 7, 51)
    assert ExpressionHead(32, 1, n_hidden=16)(torch.randn(2, 7, 32)).shape == (2, 7, 1)


@pytest.mark.parametrize("query", ["inner_product", "concat", "sum"])
def test_mvc_shapes(query):
    head = MVCHead(8, 16, n_out=5, query=query)
    assert head(torch.randn(2, 6, 8), torch.randn(2, 16)).shape == (2, 6, 5)


def test_mvc_inner_product_is_bilinear_in_cell_embedding():
    head = MVCHead(8, 8, n_out=1)
    g, c = torch.randn(1, 4, 8), torch.randn(1, 8)
    torch.testing.assert_close(head(g, 2 * c), 2 * head(g, c))


def test_mvc_detach_query_blocks_gene_gradient():
    g = torch.randn(1, 3, 8, requires_grad=True)
    MVCHead(8, 8, detach_query=True)(g, torch.randn(1, 8)).sum().backward()
    assert g.grad is None


def test_ecs_paper_pushes_away_from_beta():
    ecs = ElasticCellSimilarity(beta=0.6)
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    orth = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert ecs(same) == pytest.approx(-(0.4**2))
    assert ecs(orth) == pytest.approx(-(0.6**2))
    # gradient on a pair with similarity 0.8 (> beta) increases the similarity
    a = torch.tensor([[1.0, 0.0], [0.8, 0.6]], requires_grad=True)
    ecs(a).backward()
    b = a.detach() - 0.1 * a.grad
    cos = torch.nn.functional.cosine_similarity(b[0], b[1], dim=0)
    assert cos > 0.8
    assert ecs(torch.randn(1, 4)) == 0


def test_ecs_scgpt_form():
    ecs = ElasticCellSimilarity(beta=0.3, style="scgpt")
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # cos = -1 -> relu -> 0
    assert ecs(x) == pytest.approx(1 - 0.3**2)
    with pytest.raises(ValueError, match="style"):
        ElasticCellSimilarity(style="other")


def test_ecs_center_removes_shared_offset():
    torch.manual_seed(0)
    x = torch.randn(8, 4) * 0.01 + torch.tensor([10.0, 0, 0, 0])  # nearly parallel: cos ~ 1
    plain = ElasticCellSimilarity(beta=0.6)
    centred = ElasticCellSimilarity(beta=0.6, center=True)
    assert plain(x) == pytest.approx(-(0.4**2), abs=1e-3)
    assert centred(x) < plain(x)  # centred similarities spread away from 1
