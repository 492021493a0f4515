"""xTrimoGene's imputation: every gene read from the decoder where it was hidden, over passes with per-cell masks."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch

from cellformers._constants import MODULE_KEYS

from ._xtrimogene_tokens import HIDDEN

if TYPE_CHECKING:
    from torch import Tensor

#: Salt of the per-cell draws that split the genes into imputation passes (the zero genes use ``_SALT_IMPUTE + 1``).
_SALT_IMPUTE = 7104

#: Most groups ``zero_groups="training"`` splits a cell's zero genes into (each costs one decoder pass).
_MAX_ZERO_GROUPS = 64


class XTrimoGeneImputeMixin:
    """Imputation of :class:`~cellformers.module.XTrimoGeneModule`: the normalized expression of every gene."""

    @torch.no_grad()
    def impute(
        self,
        tensors: dict[str, Tensor],
        mode: Literal["masked", "visible"] = "masked",
        n_passes: int | None = None,
        zero_groups: int | Literal["training"] | None = None,
    ) -> Tensor:
        """Predicted normalized expression of every gene, ``(batch, n_genes)``.

        ``"masked"``: each gene is read where the decoder saw it as ``[MASK]``, the only positions the training
        loss (eq. 5) covers. Zero-count genes are masked in every pass (the encoder never sees them, so this leaves
        the encoder input unchanged) and their predictions are averaged over the passes; the non-zero genes are
        split into ``n_passes`` groups by per-cell draws, and pass ``k`` hides group ``k`` from the encoder.
        ``None``: ``ceil(1 / mask_ratio)`` passes, so the encoder sees about as much of the cell as in training.
        ``"visible"``: one pass with nothing masked, reading the decoder at the positions it was shown (trained only
        when ``mask_replacement`` keeps some masked positions visible).

        ``zero_groups``: ``None`` hides every zero-count gene in every pass (hundreds to thousands of ``[MASK]``
        positions, where training hides a few dozen); an integer ``m`` splits each cell's zero genes into ``m`` groups
        (per-cell draws) and each pass hides one group, the others entering the decoder as zeros, as in training;
        ``"training"`` picks ``m`` per cell so that a pass hides about as many zeros as a training mask
        (``balanced_zero_ratio`` times the masked non-zeros, or ``zero_mask_rate`` of the zeros), at most 64.
        There are ``max(n_passes, m)`` decoder passes (the encoder runs ``n_passes`` times, as zeros never enter it),
        and each gene's prediction is the mean over the passes that hid it.

        ``tensors`` is a minibatch of the registered data (counts and cell seeds), as every module's ``impute``
        takes it.
        """
        inputs = self._get_inference_input(tensors)
        x, cell_seed = inputs["x"].to(self.device), inputs["cell_seed"]
        if mode not in ("masked", "visible"):
            msg = f"`mode` must be 'masked' or 'visible', got {mode!r}."
            raise ValueError(msg)
        if mode == "visible":
            inf = self.inference(x, cell_seed, apply_mask=False)
            return self.generative(**self._get_generative_input({}, inf))[MODULE_KEYS.PREDICTION]
        if n_passes is None:
            n_passes = max(1, math.ceil(1.0 / max(self.mask_ratio, 1e-6)))
        if int(n_passes) < 1:
            msg = f"`n_passes` must be a positive integer or None, got {n_passes!r}."
            raise ValueError(msg)
        n_passes = int(n_passes)
        values, _ = self.normalize(x)
        nonzero = values > 0
        b, g = values.shape
        # per-cell seeded whatever the mode (a prediction must not depend on the minibatch); torch's without seeds
        u = self.uniform(cell_seed, g, _SALT_IMPUTE, n_cells=b, device=values.device, seeded=True)
        group = (u * n_passes).long().clamp(max=n_passes - 1)
        m = self._zero_groups(nonzero, zero_groups)  # (B,) groups of zero genes per cell
        u0 = self.uniform(cell_seed, g, _SALT_IMPUTE + 1, n_cells=b, device=values.device, seeded=True)
        zgroup = (u0 * m[:, None]).long().minimum(m[:, None] - 1)
        sums = torch.zeros_like(values)
        counts = torch.zeros_like(values)
        encoded: dict[int, dict[str, Tensor]] = {}
        for p in range(max(n_passes, int(m.max()) if b else 1)):
            k = p % n_passes
            if k not in encoded:  # zeros never enter the encoder: one encoder pass per group of non-zero genes
                encoded[k] = self.inference(x, cell_seed, hidden=~nonzero | (group == k))
            hidden = (nonzero & (group == k)) | (~nonzero & (zgroup == (p % m)[:, None]))
            inf = {**encoded[k], HIDDEN: hidden}
            pred = self.generative(**self._get_generative_input({}, inf))[MODULE_KEYS.PREDICTION].float()
            sums += pred * hidden
            counts += hidden
        return sums / counts.clamp_min(1.0)

    def _zero_groups(self, nonzero: Tensor, zero_groups: int | str | None) -> Tensor:
        """Number of groups the zero genes of each cell are split into for masked imputation, ``(batch,)``."""
        b = nonzero.shape[0]
        if zero_groups is None:
            return torch.ones(b, dtype=torch.long, device=nonzero.device)
        if zero_groups == "training":
            n_nz = nonzero.sum(1).float()
            n_zero = (~nonzero).sum(1).float()
            if self.mask_strategy == "balanced":
                per_pass = (n_nz * self.mask_ratio).round().clamp_min(1) * self.balanced_zero_ratio
            else:
                per_pass = n_zero * self.zero_mask_rate
            return torch.ceil(n_zero / per_pass.clamp_min(1.0)).long().clamp(1, _MAX_ZERO_GROUPS)
        if isinstance(zero_groups, bool) or not isinstance(zero_groups, int) or zero_groups < 1:
            msg = f"`zero_groups` must be None, 'training' or a positive integer, got {zero_groups!r}."
            raise ValueError(msg)
        return torch.full((b,), int(zero_groups), dtype=torch.long, device=nonzero.device)
