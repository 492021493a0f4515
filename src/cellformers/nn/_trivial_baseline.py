"""The trivial predictor of a per-gene target: what a model must beat before it has learned anything about cells."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class TrivialBaseline(nn.Module):
    """Per-gene statistics of a pretext target, fitted on the training minibatches, and the trivial predictor's loss.

    A masked-modelling loss can fall by learning gene identity alone: predicting each gene's mean (regression) or
    each gene's value distribution (classification over bins) needs no information about the cell. This block keeps
    those statistics over the positions the model is scored on and returns the loss of that predictor, per position,
    so the module can reduce it exactly as it reduces its own loss.

    - ``n_classes=None`` (squared error): the predictor is the per-gene mean of the target; its per-position loss is
      ``(mean_g - y)^2``.
    - ``n_classes=K`` (cross-entropy over ``K`` bins): the predictor is the per-gene bin marginal (add-one
      smoothed); its per-position loss is ``-log p_g(y)``.

    The statistics are buffers that are not saved with the weights (``persistent=False``): checkpoints keep their
    layout, and a resumed or reloaded model re-estimates them from its next training minibatches.

    Parameters
    ----------
    n_genes
        Number of genes (columns of the module's input).
    n_classes
        Number of target classes (bins) for cross-entropy targets; ``None`` for regression targets.

    Examples
    --------
    >>> import torch
    >>> from cellformers.nn import TrivialBaseline
    >>> base = TrivialBaseline(n_genes=3)
    >>> y = torch.tensor([[1.0, 0.0, 2.0], [3.0, 0.0, 2.0]])
    >>> base.update(y, torch.ones_like(y, dtype=torch.bool))
    >>> base.per_position(y)  # squared distance to each gene's mean (2, 0, 2)
    tensor([[1., 0., 0.],
            [1., 0., 0.]])
    """

    def __init__(self, n_genes: int, n_classes: int | None = None):
        super().__init__()
        self.n_genes = int(n_genes)
        self.n_classes = None if n_classes is None else int(n_classes)
        width = 2 if self.n_classes is None else self.n_classes
        # regression: (sum, count) per gene; classification: count per (gene, class)
        self.register_buffer("stats", torch.zeros(self.n_genes, width), persistent=False)

    @property
    def fitted(self) -> bool:
        """Whether any training position has been seen."""
        return bool(self.stats.sum() > 0) if self.n_classes is not None else bool(self.stats[:, 1].sum() > 0)

    def reset(self) -> None:
        """Forget the statistics."""
        self.stats.zero_()

    @staticmethod
    def _genes(target: Tensor, gene_index: Tensor | None) -> Tensor:
        if gene_index is not None:
            return gene_index.long()
        return torch.arange(target.shape[-1], device=target.device).expand_as(target)

    @torch.no_grad()
    def update(self, target: Tensor, positions: Tensor, gene_index: Tensor | None = None) -> None:
        """Add the scored positions of a training minibatch.

        Parameters
        ----------
        target
            ``(B, L)`` targets: values (regression) or class indices (classification).
        positions
            ``(B, L)`` boolean, the positions the model is scored on.
        gene_index
            ``(B, L)`` gene (column) of each position, ``-1`` at padding; ``None`` when position ``j`` is gene ``j``.
        """
        genes = self._genes(target, gene_index)
        keep = positions.bool() & (genes >= 0)
        g = genes[keep]
        y = target[keep].float()
        if g.numel() == 0:
            return
        if self.n_classes is None:
            self.stats[:, 0].index_add_(0, g, y.to(self.stats.dtype))
            self.stats[:, 1].index_add_(0, g, torch.ones_like(y, dtype=self.stats.dtype))
        else:
            c = y.round().long().clamp(0, self.n_classes - 1)
            flat = self.stats.view(-1)
            flat.index_add_(0, g * self.n_classes + c, torch.ones_like(y, dtype=self.stats.dtype))

    @torch.no_grad()
    def per_position(self, target: Tensor, gene_index: Tensor | None = None) -> Tensor:
        """Loss of the trivial predictor at every position, ``(B, L)`` (zero at padding)."""
        genes = self._genes(target, gene_index)
        g = genes.clamp_min(0)
        if self.n_classes is None:
            count = self.stats[:, 1]
            mean = self.stats[:, 0] / count.clamp_min(1.0)
            out = (mean[g] - target.float()) ** 2
        else:
            probs = (self.stats + 1.0) / (self.stats.sum(-1, keepdim=True) + self.n_classes)
            c = target.float().round().long().clamp(0, self.n_classes - 1)
            out = -probs.log()[g, c]
        return out.masked_fill(genes < 0, 0.0)
