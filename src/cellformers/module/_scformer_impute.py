"""scFormer's imputation: every gene from the MGM head (masked passes) or the MVC head, bins mapped to expression."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch

from cellformers._constants import MODULE_KEYS

from ._scformer_tokens import _SALT_CHUNK, _SALT_IMPUTE, SCFORMER_KEYS
from ._tokens import equal_groups, scatter_to_genes

if TYPE_CHECKING:
    from torch import Tensor


class ScFormerImputeMixin:
    """Imputation of :class:`~cellformers.module.ScFormerModule`: predictions for every gene of a cell.

    Sequences can be shorter than the gene set (``max_length``), so every gene is covered by chunks of positions
    (:meth:`gene_chunks`) and, for MGM, by passes with disjoint per-cell seeded masks.
    """

    def _probs_or_scalar(self, pred: Tensor) -> Tensor:
        return pred.float().softmax(-1) if self.mgm_loss == "ce" else pred.float().squeeze(-1)

    @staticmethod
    def bin_representatives(bins: Tensor, lognorm: Tensor, n_bins: int) -> Tensor:
        """Per cell, the mean log1p value of the genes in each bin, ``(B, n_bins)``; empty bins are interpolated.

        Bin ``0`` is ``0``; an empty bin takes the linear interpolation of its nearest non-empty neighbours (the
        last non-empty value above the top, zero below the first).
        """
        b = bins.shape[0]
        idx = bins.long().clamp(0, n_bins - 1)
        sums = torch.zeros(b, n_bins, device=bins.device).scatter_add_(1, idx, lognorm.float())
        counts = torch.zeros(b, n_bins, device=bins.device).scatter_add_(1, idx, torch.ones_like(lognorm.float()))
        rep = sums / counts.clamp_min(1.0)
        has = counts > 0
        has[:, 0] = True
        rep[:, 0] = 0.0
        out = np.empty((b, n_bins), dtype=np.float32)
        grid = np.arange(n_bins)
        rep_np, has_np = rep.cpu().numpy(), has.cpu().numpy()
        for i in range(b):
            xp = grid[has_np[i]]
            out[i] = np.interp(grid, xp, rep_np[i, has_np[i]])
        return torch.from_numpy(out).to(bins.device)

    def gene_chunks(self, cell_seed: Tensor, forced: Tensor | None = None) -> list[Tensor]:
        """Positions that cover every gene in chunks of at most ``max_length`` tokens.

        Genes are split into chunks by per-cell seeded draws (``counter_uniform``);
        ``forced`` genes join every chunk. Without ``max_length`` (or when all genes fit) there is one chunk.

        Returns
        -------
        List of ``gene_index`` tensors ``(B, L_c)`` as returned by :meth:`tokenize`.
        """
        g = self.n_genes
        b = cell_seed.shape[0]
        device = self.input_gene_ids.device
        n_forced = int(forced.sum(1).max()) if forced is not None and forced.numel() else 0
        if self.max_length is None or self.max_length >= g:
            return [torch.arange(g, device=device).expand(b, g)]
        room = max(1, self.max_length - n_forced)
        n_chunks = math.ceil(g / room)
        chunk = equal_groups(self.uniform(cell_seed, g, _SALT_CHUNK, device=device, seeded=True), n_chunks)
        pos = torch.arange(g, device=device, dtype=torch.float32).expand(b, g)
        out = []
        for c in range(n_chunks):
            member = chunk == c
            if forced is not None:
                member = member | forced
            score = torch.where(member, pos, torch.full_like(pos, float("inf")))
            length = int(member.sum(1).max())
            order = torch.argsort(score, dim=1)[:, :length]
            keep = torch.isfinite(torch.gather(score, 1, order))
            out.append(torch.where(keep, order, torch.full_like(order, -1)))
        return out

    def _all_gene_estimates(
        self,
        tensors: dict[str, Tensor],
        values: Tensor,
        masks: list[Tensor | None],
    ) -> Tensor:
        """MGM head estimates (probabilities or scalars) for every gene ``(B, G[, n_bins])``.

        One pass per chunk (:meth:`gene_chunks`, keeping the ``forced`` genes of the inference input in every
        chunk) and per mask of ``masks`` (boolean ``(B, G)``, or ``None`` for an unmasked pass); a gene's estimate
        is taken from the passes where it is masked (or from every pass with ``None``).
        """
        inp = self._get_inference_input(tensors)
        seeds = inp["cell_seed"].reshape(-1)
        forced = inp.get("forced")
        b, g = values.shape
        pred = None
        for gene_index in self.gene_chunks(seeds, forced):
            safe = gene_index.clamp_min(0)
            for mask in masks:
                out = self.inference(**inp, mask=mask, values=values, gene_index=gene_index)
                gen = self.generative(**self._get_generative_input(tensors, out))
                est = self._probs_or_scalar(gen[MODULE_KEYS.PREDICTION])
                if pred is None:
                    pred = torch.zeros((b, g, *est.shape[2:]), device=est.device, dtype=est.dtype)
                take = gene_index >= 0
                if mask is not None:
                    take = take & torch.gather(mask, 1, safe)
                pred = scatter_to_genes(pred, torch.where(take, gene_index, torch.full_like(gene_index, -1)), est)
        return pred

    def to_expression(self, est: Tensor, values: Tensor, x_all: Tensor, scale: Literal["log1p", "bins"]) -> Tensor:
        """Turn head estimates ``(B, G[, n_bins])`` into values on ``scale`` for cells with inputs ``values``.

        In ``value_mode="binned"``, ``"log1p"`` maps bins to the input cell's own log1p-normalised values
        (:meth:`bin_representatives`; the expectation over the softmax for cross entropy); ``"bins"`` gives the
        expected bin. In ``value_mode="log1p"`` the estimates already are log1p values.
        """
        if self.value_mode == "log1p":
            return est
        if scale == "bins":
            if self.mgm_loss == "ce":
                return est @ torch.arange(self.n_bins, device=est.device, dtype=est.dtype)
            return est
        rep = self.bin_representatives(values, self.log_normalize(x_all, self.target_sum), self.n_bins)
        if self.mgm_loss == "ce":
            return torch.einsum("bgk,bk->bg", est, rep)
        pos = est.clamp(0, self.n_bins - 1)
        lo = pos.floor().long().clamp(max=self.n_bins - 1)
        hi = (lo + 1).clamp(max=self.n_bins - 1)
        frac = pos - lo.float()
        return torch.gather(rep, 1, lo) * (1 - frac) + torch.gather(rep, 1, hi) * frac

    @torch.inference_mode()
    def impute(
        self,
        tensors: dict[str, Tensor],
        source: Literal["mgm", "mvc"] = "mgm",
        scale: Literal["log1p", "bins"] = "log1p",
    ) -> Tensor:
        """Predicted values of all the module's genes ``(B, n_genes)`` (evaluation mode expected).

        ``"mgm"``: ``ceil(1 / mask_ratio)`` passes with disjoint, per-cell seeded masks over every gene (zeros
        included; in chunks of ``max_length`` when set); each gene's value comes from the MGM head while it is
        masked. ``"mvc"``: one unmasked pass gives the cell embedding, from which the MVC head predicts every gene.
        ``scale`` as in :meth:`to_expression`.
        """
        inp = self._get_inference_input(tensors)
        x, seeds = inp["x"], inp["cell_seed"].reshape(-1)
        values = self.encode_values(x, seeds)
        b, g = values.shape
        if source == "mgm":
            if self.mgm_head is None:
                msg = "This model has no MGM head (`use_mgm=False`); use `source='mvc'`."
                raise ValueError(msg)
            n_pass = min(g, math.ceil(1.0 / self.mask_ratio)) if self.mask_ratio > 0 else 1
            u = self.uniform(seeds, g, _SALT_IMPUTE, device=values.device, seeded=True)
            group = equal_groups(u, n_pass)
            est = self._all_gene_estimates(tensors, values, [group == p for p in range(n_pass)])
        else:
            if self.mvc_head is None:
                msg = "This model has no MVC head (`use_mvc=False`); use `source='mgm'`."
                raise ValueError(msg)
            out = self.inference(**inp, mask_ratio=0.0, values=values)
            cell = out[MODULE_KEYS.CELL_EMBEDDING]
            bidx = out[SCFORMER_KEYS.BATCH_INDEX]
            if self.batch_embedding is not None:
                cell = torch.cat([cell, self.batch_embedding(bidx)], -1)
            genes = self.gene_norm(self.gene_embedding(self.input_gene_ids)).unsqueeze(0).expand(b, -1, -1)
            est = self._probs_or_scalar(self.mvc_head(genes, cell))
        return self.to_expression(est, values, x, scale)
