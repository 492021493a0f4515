"""Base class of the cellformers modules: maps the data's genes to vocabulary tokens."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi.module.base import BaseModuleClass

from ._tokens import uniform_draws

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

    from cellformers.nn import TrivialBaseline


def check_choice(name: str, value, choices: Sequence) -> None:
    """Raise a ``ValueError`` naming the argument ``name`` when ``value`` is not one of ``choices``."""
    if value not in choices:
        msg = f"`{name}` must be one of {', '.join(repr(c) for c in choices)}; got {value!r}."
        raise ValueError(msg)


class GeneTokenModule(BaseModuleClass):
    """A :class:`~scvi.module.base.BaseModuleClass` that knows which vocabulary token each input column is.

    The data loader yields the registered expression matrix with all ``n_vars`` columns; columns whose gene is not in
    the vocabulary (token id ``-1``) are dropped by :meth:`select_genes`. Both index tensors are buffers, so they are
    saved with the weights and move with the module.

    Parameters
    ----------
    gene_token_ids
        Vocabulary token id of each column of the input matrix, ``-1`` for genes outside the vocabulary.
    n_tokens
        Size of the vocabulary (genes plus special tokens).

    Examples
    --------
    The base of every cellformers module. A subclass implements scvi-tools' ``inference``, ``generative`` and
    ``loss``, and reads the genes it knows with :meth:`select_genes`:

    >>> import torch
    >>> from scvi.module.base import LossOutput
    >>> import cellformers as cf
    >>> class LinearAutoencoder(cf.module.GeneTokenModule):
    ...     def __init__(self, gene_token_ids, n_tokens, n_latent=4):
    ...         super().__init__(gene_token_ids, n_tokens)
    ...         self.encoder = torch.nn.Linear(self.n_genes, n_latent)
    ...         self.decoder = torch.nn.Linear(n_latent, self.n_genes)
    ...
    ...     def _get_inference_input(self, tensors):
    ...         return {"x": tensors["X"]}
    ...
    ...     def inference(self, x):
    ...         x = torch.log1p(self.select_genes(x))
    ...         return {"z": self.encoder(x), "x": x}
    ...
    ...     def _get_generative_input(self, tensors, inference_outputs):
    ...         return {"z": inference_outputs["z"]}
    ...
    ...     def generative(self, z):
    ...         return {"prediction": self.decoder(z)}
    ...
    ...     def loss(self, tensors, inference_outputs, generative_outputs):
    ...         per_cell = ((generative_outputs["prediction"] - inference_outputs["x"]) ** 2).mean(-1)
    ...         return LossOutput(loss=per_cell.mean(), reconstruction_loss=per_cell)
    >>> module = LinearAutoencoder([0, 1, -1, 2], n_tokens=5)  # the third gene is not in the vocabulary
    >>> module.n_input_vars, module.n_genes
    (4, 3)
    >>> _, _, loss = module({"X": torch.ones(2, 4)})
    >>> loss.loss.shape
    torch.Size([])
    """

    def __init__(self, gene_token_ids: Sequence[int] | np.ndarray, n_tokens: int):
        super().__init__()
        ids = np.asarray(gene_token_ids, dtype=np.int64)
        if ids.ndim != 1:
            msg = "`gene_token_ids` must be one-dimensional."
            raise ValueError(msg)
        if (ids >= n_tokens).any():
            msg = f"`gene_token_ids` has ids >= n_tokens ({n_tokens})."
            raise ValueError(msg)
        keep = np.flatnonzero(ids >= 0)
        if keep.size == 0:
            msg = "No input gene is in the vocabulary; run `cellformers.pp.map_genes` and check its coverage."
            raise ValueError(msg)
        self.n_tokens = int(n_tokens)
        self.n_input_vars = int(ids.size)
        self.register_buffer("input_columns", torch.from_numpy(keep), persistent=True)
        self.register_buffer("input_gene_ids", torch.from_numpy(ids[keep]), persistent=True)

    @property
    def n_genes(self) -> int:
        """Number of input genes the module sees (columns that map to the vocabulary)."""
        return int(self.input_columns.numel())

    def cell_embedding(self, tensors: dict[str, Tensor]) -> Tensor:
        """Differentiable cell embedding ``(batch, d)`` of a minibatch of registered tensors (nothing masked).

        The hook fine-tuning heads are trained on (:meth:`~cellformers.model.CellformersModel.train_annotator`):
        unlike the models' ``get_latent_representation`` it runs outside ``torch.inference_mode``, so gradients can
        reach the backbone. Subclasses override it.
        """
        msg = f"{type(self).__name__} does not define `cell_embedding`, so it cannot be fine-tuned with a head."
        raise NotImplementedError(msg)

    def score_trivial(
        self,
        baseline: TrivialBaseline,
        target: Tensor,
        positions: Tensor,
        gene_index: Tensor | None = None,
        *,
        per_cell: bool = False,
    ) -> Tensor | None:
        """Fit ``baseline`` on a training minibatch, or return its loss on an evaluation minibatch.

        In training mode the scored positions update the per-gene statistics and ``None`` is returned. In evaluation
        mode the trivial predictor's loss is reduced like the module's own: pooled over all scored positions, or
        (``per_cell=True``) averaged per cell and then over the cells with a scored position. ``None`` before any
        training minibatch was seen.
        """
        if self.training:
            baseline.update(target, positions, gene_index)
            return None
        if not baseline.fitted:
            return None
        w = positions.float()
        if gene_index is not None:
            w = w * (gene_index >= 0).float()
        per_pos = baseline.per_position(target, gene_index) * w
        if not per_cell:
            return per_pos.sum() / w.sum().clamp_min(1.0)
        n = w.sum(-1)
        has = n > 0
        if not bool(has.any()):
            return None
        return (per_pos.sum(-1)[has] / n[has]).mean()

    def log_normalize(self, x: Tensor, target_sum: float) -> Tensor:
        """``log1p(target_sum · x / Σx)`` of the module's genes ``(batch, n_genes)``, float32.

        The library size ``Σx`` sums all ``n_vars`` input columns (genes outside the vocabulary count towards the
        depth of the cell), then the vocabulary columns are kept.
        """
        x = x.float()
        # Counts are integers, so a cell's total is 0 or at least 1: clamping at 1 only keeps an empty cell at 0
        # (0 / 1) and never changes a real cell, where a tiny epsilon would also blow a non-count row summing to
        # less than 1 up towards ``target_sum``.
        library = x.sum(-1, keepdim=True).clamp_min(1.0)
        return torch.log1p(self.select_genes(x) / library * target_sum)

    def uniform(
        self,
        cell_seed: Tensor | None,
        n: int,
        salt: int,
        *,
        n_cells: int | None = None,
        device: torch.device | str | None = None,
        seeded: bool | None = None,
    ) -> Tensor:
        """Uniform numbers ``(n_cells, n)``: torch's generator in training, per-cell seeded draws in evaluation.

        Seeded draws (:func:`~cellformers._utils.counter_uniform`, stream ``salt``) make validation losses,
        embeddings and imputations of a cell independent of its minibatch; training wants fresh numbers every step.

        Parameters
        ----------
        cell_seed
            Registered per-cell seeds (any shape with one element per cell); ``None`` always draws from torch.
        n
            Numbers per cell.
        salt
            Independent stream of the seeded draws.
        n_cells
            Number of cells; ``None``: one per seed.
        device
            Device of the result; ``None``: the module's.
        seeded
            Force seeded (``True``) or torch (``False``) draws; ``None``: seeded unless the module is training.
        """
        if n_cells is None:
            n_cells = int(cell_seed.numel())
        device = self.input_columns.device if device is None else device
        seeded = not self.training if seeded is None else seeded
        return uniform_draws(cell_seed, n, salt, n_cells=n_cells, device=device, seeded=seeded)

    def to_input_columns(self, values: Tensor, fill: float = float("nan")) -> Tensor:
        """Per-gene values ``(batch, n_genes, ...)`` -> all input columns ``(batch, n_vars, ...)``.

        Columns outside the vocabulary get ``fill`` (NaN: the module has no prediction for them).
        """
        if values.shape[1] != self.n_genes:
            msg = f"expected {self.n_genes} genes, got {values.shape[1]}"
            raise ValueError(msg)
        if self.n_genes == self.n_input_vars:
            return values
        out = values.new_full((values.shape[0], self.n_input_vars, *values.shape[2:]), fill)
        out[:, self.input_columns.to(values.device)] = values
        return out

    def select_genes(self, x: Tensor) -> Tensor:
        """Keep the vocabulary-mapped columns of ``x`` (``(batch, n_vars)`` -> ``(batch, n_genes)``)."""
        if x.shape[-1] != self.n_input_vars:
            msg = f"expected {self.n_input_vars} input columns, got {x.shape[-1]}"
            raise ValueError(msg)
        if self.n_genes == self.n_input_vars:
            return x
        return x.index_select(-1, self.input_columns)
