"""xTrimoGene's input preparation: normalization, masks (section 4.2, App. 6) and packing of the encoder's genes."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ._tokens import pack_left, ranks

if TYPE_CHECKING:
    from torch import Tensor

#: Salts of the counter-based generator for evaluation masks (independent streams).
_SALT_SELECT, _SALT_REPLACE, _SALT_RANDOM = 7101, 7102, 7103

# inference outputs beyond MODULE_KEYS
INPUT_VALUES = "input_values"  # (B, n_genes) values the decoder sees (random replacements applied)
HIDDEN = "hidden"  # (B, n_genes) positions shown as [MASK]
ENCODER_INDEX = "encoder_index"  # (B, L) gene of each encoder token; n_genes at padding


class XTrimoGeneTokensMixin:
    """Normalization, masking and packing of :class:`~cellformers.module.XTrimoGeneModule` (its data preparation).

    Draws are random in training and seeded per cell in evaluation (:meth:`~cellformers.module.GeneTokenModule.uniform`).
    """

    def normalize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Raw counts ``(batch, n_vars)`` -> ``log1p(x / Σx · target_sum)`` of the vocabulary genes and the library size.

        Returns
        -------
        ``values`` ``(batch, n_genes)`` (float32) and ``library`` ``(batch,)`` (sum over all registered genes).
        """
        return self.log_normalize(x, self.target_sum), x.float().sum(-1)

    def make_mask(
        self,
        values: Tensor,
        cell_seed: Tensor | None = None,
        mask_ratio: float | None = None,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Choose the positions to predict and what the encoder sees there.

        Parameters
        ----------
        values
            Normalized expression ``(batch, n_genes)``.
        cell_seed
            Per-cell seeds ``(batch, 1)``; used in evaluation mode so masks are reproducible per cell.
        mask_ratio
            Overrides the module's ``mask_ratio``.

        Returns
        -------
        ``mask`` (positions in the loss), ``hidden`` (positions shown as ``[MASK]``, a subset of ``mask``) and the
        input values (random replacements applied), all ``(batch, n_genes)``.
        """
        b, g = values.shape
        device = values.device
        ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
        nonzero = values > 0
        u = self.uniform(cell_seed, g, _SALT_SELECT, n_cells=b, device=device)
        if self.mask_strategy == "balanced":
            nnz = nonzero.sum(-1)
            k_nz = torch.round(ratio * nnz.float()).long()
            k_z = torch.minimum(torch.round(self.balanced_zero_ratio * k_nz.float()).long(), g - nnz)
            # rank positions inside each group by u: non-zeros get ranks 0..nnz-1, zeros nnz..g-1
            rank = ranks(u + (~nonzero).float())
            mask = torch.where(nonzero, rank < k_nz[:, None], (rank - nnz[:, None]) < k_z[:, None])
        else:
            p = torch.where(nonzero, ratio, self.zero_mask_rate)
            mask = u < p
        p_mask, p_random, _ = self.mask_replacement
        if p_mask >= 1.0:
            return mask, mask, values
        r = self.uniform(cell_seed, g, _SALT_REPLACE, n_cells=b, device=device)
        hidden = mask & (r < p_mask)
        randomized = mask & (r >= p_mask) & (r < p_mask + p_random)
        input_values = values
        if randomized.any():
            # a random non-zero value of the same cell (values sorted descending: non-zeros first)
            nnz = nonzero.sum(-1, keepdim=True)
            sorted_vals = values.sort(dim=-1, descending=True).values
            u3 = self.uniform(cell_seed, g, _SALT_RANDOM, n_cells=b, device=device)
            pick = (u3 * nnz).long().clamp(max=g - 1)
            input_values = torch.where(randomized, sorted_vals.gather(-1, pick), values)
        return mask, hidden, input_values

    def pack(self, keep: Tensor, values: Tensor, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        """Left-pack the kept genes of each cell, loop-free.

        Kept genes come first in gene order (:func:`~cellformers.module._tokens.pack_left`), followed by padding. With ``max_encoder_length`` and more kept genes than that, the most highly expressed
        kept genes are chosen instead.

        Parameters
        ----------
        keep
            Boolean ``(batch, n_genes)``.
        values
            Values ``(batch, n_genes)`` (used only to rank genes above ``max_encoder_length``).
        max_length
            Overrides the module's ``max_encoder_length`` for this call.

        Returns
        -------
        ``index`` ``(batch, length)`` gene positions (padding slots point at ``n_genes``) and ``padding_mask``
        ``(batch, length)``.
        """
        b, g = keep.shape
        n_keep = keep.sum(-1)
        length = max(int(n_keep.max().item()) if b else 0, 1)
        cap = self.max_encoder_length if max_length is None else int(max_length)
        if cap is not None and length > cap:
            length = cap
            score = torch.where(keep, values.float(), torch.full_like(values, -1.0, dtype=torch.float32))
            index = score.topk(length, dim=-1).indices
            padding = ~keep.gather(-1, index)
        else:
            index, padding = pack_left(keep)
        index = index.masked_fill(padding, g)
        return index, padding
