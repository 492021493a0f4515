"""Classification head on a cell embedding (cell-type annotation by fine-tuning)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from torch import Tensor


class CellTypeClassifier(nn.Module):
    """Cell-type classifier on a cell embedding.

    With ``n_hidden=None`` it is the single linear layer of xTrimoGene's annotation head :cite:p:`Gong23` (App.
    8.1: max-pooled encoder outputs, then one linear layer); with ``n_hidden`` a one-hidden-layer MLP (ReLU), as
    scGPT's classifier on the ``<cls>`` embedding :cite:p:`Cui24`. The embedding is first standardized with a fixed
    per-feature shift and scale (:meth:`fit_scaling`, from the training cells' embeddings; identity until then),
    which makes the head train as fast on any backbone's embedding scale and does not change what a linear head can
    express.

    Parameters
    ----------
    n_input
        Width of the cell embedding.
    n_classes
        Number of cell types.
    n_hidden
        Width of the hidden layer; ``None`` for a linear head.
    dropout_rate
        Dropout applied to the embedding (and hidden layer) during training.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> head = cf.module.CellTypeClassifier(n_input=16, n_classes=3)  # a linear head
    >>> embeddings = 5 + 10 * torch.randn(100, 16)
    >>> head.fit_scaling(embeddings)  # standardize with the training cells' statistics
    >>> head(embeddings).shape
    torch.Size([100, 3])
    >>> mlp = cf.module.CellTypeClassifier(n_input=16, n_classes=3, n_hidden=32, dropout_rate=0.1)
    """

    def __init__(self, n_input: int, n_classes: int, n_hidden: int | None = None, dropout_rate: float = 0.0):
        super().__init__()
        if n_input < 1 or n_classes < 2:
            msg = f"`n_input` must be >= 1 and `n_classes` >= 2, got {n_input} and {n_classes}."
            raise ValueError(msg)
        if n_hidden is not None and n_hidden < 1:
            msg = f"`n_hidden` must be a positive integer or None, got {n_hidden}."
            raise ValueError(msg)
        if not 0.0 <= dropout_rate < 1.0:
            msg = f"`dropout_rate` must be in [0, 1), got {dropout_rate}."
            raise ValueError(msg)
        self.n_input, self.n_classes, self.n_hidden = int(n_input), int(n_classes), n_hidden
        self.dropout_rate = float(dropout_rate)
        layers: list[nn.Module] = [nn.Dropout(dropout_rate)]
        if n_hidden is None:
            layers.append(nn.Linear(n_input, n_classes))
        else:
            layers += [
                nn.Linear(n_input, n_hidden),
                nn.ReLU(),
                nn.Dropout(dropout_rate),
                nn.Linear(n_hidden, n_classes),
            ]
        self.net = nn.Sequential(*layers)
        self.register_buffer("shift", torch.zeros(n_input))
        self.register_buffer("scale", torch.ones(n_input))

    @torch.no_grad()
    def fit_scaling(self, z: Tensor) -> None:
        """Set the input standardization from embeddings ``(n_cells, n_input)`` (mean and standard deviation)."""
        z = z.detach().float()
        self.shift.copy_(z.mean(0).to(self.shift))
        self.scale.copy_(z.std(0, unbiased=False).clamp_min(1e-6).to(self.scale) if z.shape[0] > 1 else 1.0)

    def forward(self, z: Tensor) -> Tensor:
        """Class logits.

        Parameters
        ----------
        z
            Cell embeddings ``(batch, n_input)``.

        Returns
        -------
        Float32 logits ``(batch, n_classes)``.
        """
        z = (z.float() - self.shift) / self.scale
        return self.net(z).float()
