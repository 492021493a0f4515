"""scFormer's input preparation: per-cell value bins (eq. 2), gene positions of each cell and the MGM mask."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch

from cellformers.data._binning import bin_cells

from ._tokens import ranks

if TYPE_CHECKING:
    from torch import Tensor


class _ScFormerKeys(NamedTuple):
    # inference outputs beyond MODULE_KEYS
    GENE_INDEX: str = "gene_index"  # (B, L) column of each position among the module's genes; -1 at padding
    GENE_EMBEDDING: str = "gene_embedding"  # (B, L, d) token embeddings emb_g of the sequence genes (MVC queries)
    VALUES: str = "values"  # (B, L) visible input values (0 where masked or padded)
    BATCH_INDEX: str = "batch_index"  # (B,) long
    # generative outputs beyond MODULE_KEYS.PREDICTION (the MGM estimate)
    MVC_PREDICTION: str = "mvc_prediction"


SCFORMER_KEYS = _ScFormerKeys()

# counter_uniform salts: independent per-cell streams for evaluation-time masking, subsampling and imputation passes
_SALT_MASK = 11
_SALT_SUBSAMPLE = 12
_SALT_IMPUTE = 13
_SALT_CHUNK = 14


class ScFormerTokensMixin:
    """Values, gene positions and masks of :class:`~cellformers.module.ScFormerModule` (its data preparation).

    Everything runs in torch on the minibatch's device; draws are random in training and seeded per cell in
    evaluation (:meth:`~cellformers.module.GeneTokenModule.uniform`).
    """

    # ------------------------------------------------------------------ values
    def _bin(self, x: Tensor, cell_seed: Tensor) -> Tensor:
        """Per-cell equal-frequency bins of the module's genes ``x`` ``(B, n_genes)``, on their device.

        The definition of :func:`cellformers.pp.bin_values` (:func:`cellformers.data._binning.bin_cells`): with
        ``tie_breaking="draw"`` ties are ordered by a draw from the registered per-cell seed, so a cell's bins equal
        ``pp.bin_values`` of the same counts (over the module's genes) and never depend on the minibatch;
        ``"redraw"`` draws anew at every training step and like ``"draw"`` in evaluation.
        """
        ties = self.tie_breaking
        if ties == "redraw" and not self.training:
            ties = "draw"
        return bin_cells(x.detach(), cell_seed.reshape(-1), self.n_bins, ties=ties)

    def encode_values(self, x_all: Tensor, cell_seed: Tensor) -> Tensor:
        """Raw counts ``(B, n_vars)`` -> model values ``(B, n_genes)``: bins (float) or log1p values."""
        if self.value_mode == "log1p":
            return self.log_normalize(x_all, self.target_sum)
        return self._bin(self.select_genes(x_all), cell_seed).float()

    # ------------------------------------------------------------------ tokens
    def tokenize(
        self,
        values: Tensor,
        cell_seed: Tensor,
        *,
        all_genes: bool = False,
        forced: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Choose each cell's gene positions.

        Parameters
        ----------
        values
            ``(B, G)`` values of the module's genes (zero = not expressed).
        cell_seed
            ``(B,)`` per-cell seeds.
        all_genes
            Use every gene, ignoring ``include_zero_genes`` and ``max_length``.
        forced
            Optional boolean ``(B, G)``: genes always kept (e.g. the perturbed genes), ahead of the subsample.

        Returns
        -------
        ``gene_index`` ``(B, L)``: the column (``0 … G-1``) at each position, ``-1`` at padding (in gene order);
        and ``valid`` ``(B, L)``.
        """
        b, g = values.shape
        device = values.device
        fill = self.include_zero_genes == "fill" and not all_genes
        zeros_in = all_genes or self.include_zero_genes is True or fill
        cand = torch.ones_like(values, dtype=torch.bool) if zeros_in else values > 0
        if forced is not None:
            cand = cand | forced
        n_cand = cand.sum(1)
        longest = int(n_cand.max()) if b else 0
        limit = None if all_genes else self.max_length
        subsample = limit is not None and longest > limit
        if bool(cand.all()) and not subsample:
            index = torch.arange(g, device=device).expand(b, g)
            return index, torch.ones_like(index, dtype=torch.bool)
        length = min(longest, limit) if subsample else longest
        length = max(length, 1)
        u = self.uniform(cell_seed, g, _SALT_SUBSAMPLE, device=device) if subsample else torch.zeros_like(values)
        if fill:  # expressed genes first, zero genes fill the remaining positions
            u = u * 0.5 + (values <= 0).to(u.dtype) * 0.5
        if forced is not None:
            u = torch.where(forced, torch.full_like(u, -1.0), u)
        score = torch.where(cand, u, torch.full_like(u, 2.0))
        order = torch.argsort(score, dim=1, stable=True)[:, :length]
        valid = torch.gather(score, 1, order) < 2.0
        # back to gene order; padding (index g) last
        order = torch.sort(torch.where(valid, order, torch.full_like(order, g)), dim=1).values
        valid = order < g
        return torch.where(valid, order, torch.full_like(order, -1)), valid

    def make_mask(self, gene_index: Tensor, valid: Tensor, cell_seed: Tensor, mask_ratio: float) -> Tensor:
        """Mask ``round(mask_ratio · n)`` (at least one) of each cell's ``n`` valid positions.

        Random in training; in evaluation drawn per cell and gene from ``counter_uniform``, so the validation
        loss and imputation do not depend on minibatch composition.
        """
        if mask_ratio <= 0:
            return torch.zeros_like(valid)
        u_genes = self.uniform(cell_seed, self.n_genes, _SALT_MASK, device=gene_index.device)
        u = torch.gather(u_genes, 1, gene_index.clamp_min(0))
        u = torch.where(valid, u, torch.full_like(u, 2.0))
        n_valid = valid.sum(1)
        n_mask = torch.round(n_valid.float() * mask_ratio).long().clamp_min(1).minimum(n_valid)
        return (ranks(u) < n_mask.unsqueeze(1)) & valid

    def _external(self, gene_index: Tensor, valid: Tensor, external: Tensor | None) -> Tensor | None:
        """External categories at each position: per-cell ``(B, G)`` if given, else the static per-gene ones."""
        if self.external_embedding is None:
            return None
        if external is None:
            if self.external_token_ids is None:
                return torch.zeros_like(gene_index)
            external = self.external_token_ids.expand(gene_index.shape[0], -1)
        ext = torch.gather(external.long(), 1, gene_index.clamp_min(0))
        return torch.where(valid, ext, torch.zeros_like(ext))
