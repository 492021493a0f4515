"""Masked value prediction from the cell embedding: scFormer's MVC task head (eq. 8)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor

MVCQuery = Literal["inner_product", "concat", "sum"]


class MVCHead(nn.Module):
    """Predict each gene's value from the cell embedding and a query built from the gene's token embedding.

    ``"inner_product"`` (scFormer eq. 8): ``q_j = sigmoid(Linear(emb_g(t_j)))`` and ``x̃_j = q_j · W h_c``. With
    ``n_out > 1`` (cross entropy over bins) ``W`` maps ``h_c`` to one vector per bin, so bin ``k`` gets the logit
    ``q_j · W_k h_c``; with ``n_out = 1`` this is scGPT's default ``MVCDecoder``. scGPT's other arch styles are
    available: ``"concat"`` (an MLP on ``[h_c, q_j]``) and ``"sum"`` (an MLP on ``h_c + q_j``).

    Parameters
    ----------
    n_gene
        Width of the gene-token embeddings.
    n_cell
        Width of the cell embedding (``d_model``, or ``2 * d_model`` with a concatenated batch embedding).
    n_out
        Outputs per gene (number of bins, or 1).
    query
        How the query and the cell embedding are combined.
    detach_query
        Stop the MVC gradient from reaching the gene embeddings (scGPT's ``"inner product, detach"``).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> mvc = cf.nn.MVCHead(n_gene=16, n_cell=16)
    >>> gene_tokens = torch.randn(2, 5, 16)  # token embeddings of the 5 genes to predict
    >>> cell = torch.randn(2, 16)  # cell embeddings
    >>> mvc(gene_tokens, cell).shape
    torch.Size([2, 5, 1])
    """

    def __init__(
        self, n_gene: int, n_cell: int, n_out: int = 1, query: MVCQuery = "inner_product", detach_query: bool = False
    ):
        super().__init__()
        if query not in ("inner_product", "concat", "sum"):
            msg = f"`query` must be 'inner_product', 'concat' or 'sum', got {query!r}."
            raise ValueError(msg)
        self.query, self.n_out, self.n_gene = query, int(n_out), int(n_gene)
        self.detach_query = bool(detach_query)
        self.gene_to_query = nn.Sequential(nn.Linear(n_gene, n_gene), nn.Sigmoid())
        if query == "inner_product":
            self.W = nn.Linear(n_cell, self.n_out * n_gene, bias=False)
        else:
            n_in = n_gene + n_cell if query == "concat" else n_gene
            self.cell_proj = nn.Linear(n_cell, n_gene) if query == "sum" else nn.Identity()
            self.mlp = nn.Sequential(
                nn.Linear(n_in, n_gene), nn.LeakyReLU(), nn.Linear(n_gene, n_gene), nn.LeakyReLU(),
                nn.Linear(n_gene, self.n_out),
            )  # fmt: skip

    def forward(self, gene_embedding: Tensor, cell_embedding: Tensor) -> Tensor:
        """Predict values.

        Parameters
        ----------
        gene_embedding
            Token embeddings of the genes to predict, ``(batch, length, n_gene)``.
        cell_embedding
            ``(batch, n_cell)``.

        Returns
        -------
        ``(batch, length, n_out)``.
        """
        g = gene_embedding.detach() if self.detach_query else gene_embedding
        q = self.gene_to_query(g)
        if self.query == "inner_product":
            w = self.W(cell_embedding).view(cell_embedding.shape[0], self.n_out, self.n_gene)
            return torch.einsum("bld,bkd->blk", q, w)
        if self.query == "concat":
            c = cell_embedding.unsqueeze(1).expand(-1, q.shape[1], -1)
            return self.mlp(torch.cat([c, q], dim=-1))
        return self.mlp(q + self.cell_proj(cell_embedding).unsqueeze(1))
