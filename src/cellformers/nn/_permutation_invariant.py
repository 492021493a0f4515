"""scPaLM's permutation-invariant embedding (section 3.1, Algorithm 2), computed without a cells × genes × width tensor."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class PermutationInvariantEmbedding(nn.Module):
    """Embed an expression vector of any length into ``n_pooled`` tokens, invariantly to the order of the genes.

    scPaLM :cite:p:`scPaLM`, section 3.1 and Algorithm 2. For gene ``i`` with (normalized) value ``x_i``:

    1. ``u_i = leaky_relu(x_i * P_i)`` with a gene-specific projection ``P_i`` (``n_value`` wide);
    2. ``E_value,i = alpha_i * u_i + W_mlp u_i + b_mlp`` (gene-specific scale ``alpha_i`` plus a shared linear layer);
    3. ``E_i = W [E_value,i ; E_gene,i] + b`` (learnable gene embedding, linear map to ``n_pooled`` channels);
    4. a symmetric pooling ``f`` over genes gives one ``n_pooled`` vector per cell. The pooling is **hierarchical**:
       the genes with a zero count are pooled first into one vector, which then enters the pooling of the non-zero
       genes as one more element;
    5. token ``j`` is ``f(E)_j * P'_j``, a scaling of one of ``n_pooled`` learnable vectors ``P'`` (``n_output``
       wide): ``(batch, n_pooled, n_output)``.

    With ``normalize_pooled=True`` (default) each channel of ``f(E)`` is standardised over the cells by a
    :class:`~torch.nn.BatchNorm1d` without affine parameters (running statistics at inference) before step 5. The
    paper does not say how the pooled coefficients are scaled. Without it, a channel's cell-to-cell variation is
    tiny next to its mean (each channel averages hundreds of genes), and the first LayerNorm of a transformer maps
    ``f_j * P'_j`` to ``sign(f_j) * LayerNorm(P'_j)``, discarding the value: the pathway encoder then sees almost
    the same tokens for every cell and the codebook collapses.

    Genes are identified by their vocabulary token id, so the parameters ``P``, ``alpha`` and ``E_gene`` are tables
    over the vocabulary and one module embeds any subset of genes, in any order.

    **Memory.** A zero count gives ``u_i = 0`` and ``E_value,i = b_mlp`` for every gene, so the embedding of a
    zero-count gene, ``Z_i = W [b_mlp ; E_gene,i] + b``, is the same in every cell: it is computed once per gene
    (``n_genes × n_pooled``). With ``pooling="mean"`` everything after step 2 is linear, so the pooling is taken
    *before* the linear map ``W``: the non-zero genes need ``nnz × n_value`` activations (``nnz`` = non-zero
    entries of the minibatch, flattened; no padding), the mean gene embedding of the zero-count genes of a cell is
    ``(Σ_all E_gene − Σ_nonzero E_gene) / n_zero`` (one dense ``(batch, n_genes) @ (n_genes, n_gene)`` product),
    and no ``(batch, n_genes, ·)`` tensor is ever built. The result equals the naive computation up to rounding.
    With ``pooling="max"`` the arg-max of every (cell, channel) is found without gradient in chunks, and only the
    winning ``batch × n_pooled`` entries are recomputed with gradient; max pooling is associative, so the
    hierarchical and the flat max coincide.

    Parameters
    ----------
    n_tokens
        Size of the gene vocabulary (rows of the gene-specific tables).
    n_pooled
        ``N``, the number of output tokens (channels of ``E``); 256 in the paper.
    n_output
        Width ``d`` of the output tokens (the transformer width).
    n_value
        Width ``d_1`` of the gene-specific value projection ``P``.
    n_gene
        Width of the learnable gene embedding ``E_gene``.
    pooling
        Symmetric pooling ``f``: ``"mean"`` or ``"max"``.
    hierarchical
        Pool the zero-count genes first (section 3.1). ``False`` pools all genes flatly (only differs for
        ``"mean"``).
    negative_slope
        Slope of the leaky ReLU.
    max_chunk
        Number of (entry, channel) rows processed at once in the gradient-free arg-max search of
        ``pooling="max"``.
    normalize_pooled
        Standardise each pooled channel over the cells (batch statistics in training, running statistics in eval).

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> emb = cf.nn.PermutationInvariantEmbedding(n_tokens=100, n_pooled=8, n_output=16, n_value=4, n_gene=4)
    >>> x = torch.log1p(torch.poisson(2 * torch.rand(3, 20)))  # 3 cells, 20 genes
    >>> gene_ids = torch.arange(20)  # token id of each column
    >>> emb(x, gene_ids).shape
    torch.Size([3, 8, 16])
    >>> order = torch.randperm(20)
    >>> _ = emb.eval()
    >>> torch.allclose(emb(x, gene_ids), emb(x[:, order], gene_ids[order]), atol=1e-5)  # gene order does not matter
    True
    """

    def __init__(
        self,
        n_tokens: int,
        n_pooled: int = 256,
        n_output: int = 256,
        n_value: int = 64,
        n_gene: int = 64,
        pooling: Literal["mean", "max"] = "mean",
        hierarchical: bool = True,
        negative_slope: float = 0.01,
        max_chunk: int = 1 << 22,
        normalize_pooled: bool = True,
    ):
        super().__init__()
        if pooling not in ("mean", "max"):
            msg = f"`pooling` must be 'mean' or 'max', got {pooling!r}."
            raise ValueError(msg)
        self.n_pooled = n_pooled
        self.n_output = n_output
        self.n_value = n_value
        self.pooling = pooling
        self.hierarchical = hierarchical
        self.negative_slope = negative_slope
        self.max_chunk = max_chunk
        self.value_projection = nn.Embedding(n_tokens, n_value)  # P
        self.value_scale = nn.Embedding(n_tokens, n_value)  # alpha
        self.gene_embedding = nn.Embedding(n_tokens, n_gene)  # E_gene
        self.mlp = nn.Linear(n_value, n_value)
        self.linear = nn.Linear(n_value + n_gene, n_pooled)
        self.basis = nn.Parameter(torch.empty(n_pooled, n_output))  # P'
        self.pooled_norm = nn.BatchNorm1d(n_pooled, affine=False) if normalize_pooled else nn.Identity()
        nn.init.normal_(self.value_projection.weight, std=1.0)
        nn.init.normal_(self.value_scale.weight, std=0.1)
        nn.init.normal_(self.gene_embedding.weight, std=1.0)
        nn.init.normal_(self.basis, std=1.0)

    # ------------------------------------------------------------------ pieces
    def _value_embedding(self, values: Tensor, proj: Tensor, scale: Tensor) -> Tensor:
        """``E_value`` of ``(nnz,)`` values with their genes' ``(nnz, n_value)`` projection and scale rows."""
        u = F.leaky_relu(values[:, None] * proj, self.negative_slope)
        return scale * u + self.mlp(u)

    def pooled(self, x: Tensor, gene_ids: Tensor) -> Tensor:
        """The pooled vector ``f(E)``.

        Parameters
        ----------
        x
            Normalized expression, ``(batch, n_genes)``; zero means "not detected".
        gene_ids
            Vocabulary token id of each column, ``(n_genes,)``.

        Returns
        -------
        Tensor of shape ``(batch, n_pooled)``.
        """
        if x.ndim != 2 or x.shape[1] != gene_ids.shape[0]:
            msg = f"expected x of shape (batch, {gene_ids.shape[0]}), got {tuple(x.shape)}"
            raise ValueError(msg)
        # pooling sums thousands of entries: keep it in float32 under autocast
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._pooled(x.float(), gene_ids)

    def _pooled(self, x: Tensor, gene_ids: Tensor) -> Tensor:
        nonzero = x != 0
        rows, cols = nonzero.nonzero(as_tuple=True)
        values = x[rows, cols]
        gene_emb = self.gene_embedding(gene_ids)  # (G, n_gene)
        if self.pooling == "mean":
            return self._mean_pool(x, nonzero, rows, cols, values, gene_ids, gene_emb)
        return self._max_pool(x, nonzero, rows, cols, values, gene_ids, gene_emb)

    def _mean_pool(self, x, nonzero, rows, cols, values, gene_ids, gene_emb) -> Tensor:
        b, g = x.shape
        w_value = self.linear.weight[:, : self.n_value]
        w_gene = self.linear.weight[:, self.n_value :]
        ids = gene_ids[cols]
        value_emb = self._value_embedding(values, self.value_projection(ids), self.value_scale(ids))
        sum_value = value_emb.new_zeros(b, self.n_value).index_add(0, rows, value_emb)
        nz = nonzero.to(gene_emb.dtype)
        sum_gene_nz = nz @ gene_emb  # (B, n_gene)
        n_nz = nz.sum(1, keepdim=True)
        # Σ over non-zero genes of E_i = W_v Σ E_value + W_g Σ E_gene + n_nz b
        sum_nz = sum_value @ w_value.T + sum_gene_nz @ w_gene.T + n_nz * self.linear.bias
        n_zero = g - n_nz
        # E_value of a zero count is the MLP bias for every gene
        zero_value = self.mlp.bias @ w_value.T  # (N,)
        mean_gene_zero = (gene_emb.sum(0, keepdim=True) - sum_gene_nz) / n_zero.clamp_min(1)
        mean_zero = zero_value + mean_gene_zero @ w_gene.T + self.linear.bias  # (B, N)
        if self.hierarchical:
            has_zero = (n_zero > 0).to(sum_nz.dtype)
            return (sum_nz + has_zero * mean_zero) / (n_nz + has_zero).clamp_min(1)
        return (sum_nz + n_zero * mean_zero) / g

    def _entry_embedding(self, values, ids, gene_emb_rows, channels) -> Tensor:
        """``E_i[c]`` for ``(m,)`` entries with given values, token ids, gene-embedding rows and channels."""
        value_emb = self._value_embedding(values, self.value_projection(ids), self.value_scale(ids))
        w = self.linear.weight[channels]  # (m, n_value + n_gene)
        return (
            (value_emb * w[:, : self.n_value]).sum(-1)
            + (gene_emb_rows * w[:, self.n_value :]).sum(-1)
            + self.linear.bias[channels]
        )

    def _max_pool(self, x, nonzero, rows, cols, values, gene_ids, gene_emb) -> Tensor:
        b, g = x.shape
        n = self.n_pooled
        device = x.device
        # zero-count genes: the same embedding Z_i in every cell
        zero_value = self.mlp(torch.zeros(self.n_value, device=device, dtype=gene_emb.dtype))
        z_table = self.linear(torch.cat([zero_value.expand(g, -1), gene_emb], -1))  # (G, N)
        with torch.no_grad():
            # arg-max over each cell's zero-count genes: walk the genes in decreasing Z order per channel and take
            # the first one that is zero in the cell
            order = z_table.detach().argsort(0, descending=True)  # (G, N)
            best_zero = torch.full((b, n), -1, dtype=torch.long, device=device)
            step = max(1, min(g, self.max_chunk // max(1, b * n)))
            for start in range(0, g, step):
                todo = best_zero < 0
                if not todo.any():
                    break
                cand = order[start : start + step]  # (k, N)
                is_zero = ~nonzero[:, cand]  # (B, k, N)
                first = is_zero.to(torch.int8).argmax(1)  # (B, N)
                found = is_zero.any(1) & todo
                best_zero[found] = cand.gather(0, first)[found]
            # arg-max over the non-zero entries, chunk by chunk
            best_nz_val = torch.full((b, n), float("-inf"), device=device)
            best_nz = torch.full((b, n), -1, dtype=torch.long, device=device)
            m = rows.numel()
            step = max(1, self.max_chunk // n)
            ids_all = gene_ids[cols]
            for start in range(0, m, step):
                sl = slice(start, start + step)
                ids = ids_all[sl]
                e = self.linear(
                    torch.cat(
                        [
                            self._value_embedding(values[sl], self.value_projection(ids), self.value_scale(ids)),
                            gene_emb[cols[sl]],
                        ],
                        -1,
                    )
                ).float()  # (k, N)
                r = rows[sl]
                chunk_max = torch.full((b, n), float("-inf"), device=device).scatter_reduce(
                    0, r[:, None].expand(-1, n), e, reduce="amax"
                )
                entry = torch.arange(start, start + e.shape[0], device=device)[:, None].expand(-1, n)
                is_max = e == chunk_max[r]
                chunk_arg = torch.full((b, n), m, dtype=torch.long, device=device).scatter_reduce(
                    0, r[:, None].expand(-1, n), torch.where(is_max, entry, m), reduce="amin"
                )
                better = chunk_max > best_nz_val
                best_nz_val = torch.where(better, chunk_max, best_nz_val)
                best_nz = torch.where(better, chunk_arg, best_nz)
        channels = torch.arange(n, device=device).expand(b, -1)
        has_zero = best_zero >= 0
        zero_part = z_table.gather(0, best_zero.clamp_min(0)).reshape(b, n)
        zero_part = torch.where(has_zero, zero_part, torch.full_like(zero_part, float("-inf")))
        has_nz = best_nz >= 0
        out = zero_part
        if has_nz.any():
            sel = best_nz[has_nz]
            nz_part = self._entry_embedding(values[sel], gene_ids[cols[sel]], gene_emb[cols[sel]], channels[has_nz])
            out = out.masked_scatter(has_nz, torch.maximum(nz_part, zero_part[has_nz]))
        # a cell without any gene (impossible in practice) gets zeros rather than -inf
        return torch.where(torch.isfinite(out), out, torch.zeros_like(out))

    def forward(self, x: Tensor, gene_ids: Tensor) -> Tensor:
        """Embed a batch of cells.

        Parameters
        ----------
        x
            Normalized expression, ``(batch, n_genes)``.
        gene_ids
            Vocabulary token id of each column, ``(n_genes,)``.

        Returns
        -------
        Tokens ``Ē``, shape ``(batch, n_pooled, n_output)``.
        """
        pooled = self.pooled(x, gene_ids)
        with torch.autocast(device_type=x.device.type, enabled=False):
            pooled = self.pooled_norm(pooled)
        return pooled[:, :, None] * self.basis[None]
