"""scFormer in perturbation mode (sections 3.4 and 4.3): control cell + perturbation tokens -> perturbed cell."""

from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple

import torch
from scvi import REGISTRY_KEYS

from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF

from ._scformer import SCFORMER_KEYS, ScFormerModule

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from torch import Tensor


class _PerturbationKeys(NamedTuple):
    # minibatch tensors of the perturbation data module
    TARGET_X: str = "target_X"  # (B, n_vars) raw counts of the perturbed cell
    TARGET_SEED: str = "target_cell_seed"  # (B, 1) its per-cell seed
    PERTURBED_GENES: str = "perturbed_genes"  # (B, K) input columns of the perturbed genes, -1 = none


PERTURBATION_KEYS = _PerturbationKeys()


class ScFormerPerturbationModule(ScFormerModule):
    """scFormer trained to predict post-perturbation expression :cite:p:`Cui22`.

    The input is a control cell (gene tokens and binned values) whose perturbed genes carry the external token
    ``1`` (eq. 4–5, "perturbation tokens"); the target is a perturbed cell of that condition. No value is masked:
    the MGM head and its cross-entropy loss of eq. 7 are applied at every position with the perturbed cell's
    values as targets (section 3.4). With ``value_mode="log1p"`` the values are log1p-normalised expression and
    the loss is MSE (scGPT's perturbation model). Perturbed genes are always in the sequence, also when
    ``max_length`` subsamples the others.

    Parameters
    ----------
    gene_token_ids
        Vocabulary id of each input column.
    n_tokens
        Vocabulary size.
    pad_id
        Id of ``<pad>``.
    cls_id
        Id of ``<cls>``.
    **kwargs
        Options of :class:`~cellformers.module.ScFormerModule`; here MVC, ECS, DAR and DSBN are off, ``mask_ratio``
        is 0, ``n_external`` is 2 and ``mgm_loss`` follows ``value_mode`` unless given.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=40, n_per_perturbation=10, n_genes=30)
    >>> cf.model.ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = cf.model.ScFormerPerturbation(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)
    >>> module = model.module
    >>> isinstance(module, cf.module.ScFormerPerturbationModule), module.n_genes
    (True, 30)
    >>> isinstance(module, cf.module.ScFormerModule)  # scFormer with perturbation tokens
    True
    """

    def __init__(
        self, gene_token_ids: Sequence[int] | np.ndarray, n_tokens: int, *, pad_id: int, cls_id: int, **kwargs
    ):
        value_mode = kwargs.get("value_mode", "binned")
        defaults = {
            "use_mvc": False,
            "use_ecs": False,
            "use_dar": False,
            "use_dsbn": False,
            "mask_ratio": 0.0,
            "n_external": 2,
            "mgm_loss": "ce" if value_mode == "binned" else "mse",
        }
        super().__init__(gene_token_ids, n_tokens, pad_id=pad_id, cls_id=cls_id, **{**defaults, **kwargs})
        col_to_gene = torch.full((self.n_input_vars,), -1, dtype=torch.long)
        col_to_gene[self.input_columns] = torch.arange(self.n_genes)
        self.register_buffer("column_to_gene", col_to_gene, persistent=False)

    def perturbation_flags(self, perturbed_columns: Tensor) -> Tensor:
        """``(B, K)`` input columns of the perturbed genes (``-1`` = none) -> boolean ``(B, n_genes)`` flags."""
        cols = perturbed_columns.long().reshape(perturbed_columns.shape[0], -1)
        genes = self.column_to_gene[cols.clamp_min(0)]
        ok = (cols >= 0) & (genes >= 0)
        hits = torch.zeros(cols.shape[0], self.n_genes, dtype=torch.long, device=cols.device)
        hits.scatter_add_(1, genes.clamp_min(0), ok.long())
        return hits > 0

    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict[str, Tensor | None]:
        flags = self.perturbation_flags(tensors[PERTURBATION_KEYS.PERTURBED_GENES])
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "cell_seed": tensors[REGISTRY_KEYS_CF.CELL_SEED],
            "batch_index": tensors.get(REGISTRY_KEYS.BATCH_KEY) if self.n_batch else None,
            "external": flags.long(),
            "forced": flags,
        }

    def loss_positions(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor]) -> Tensor:
        """Every gene position (supervised: no masking)."""
        return ~inference_outputs[MODULE_KEYS.PADDING_MASK]

    def loss_target(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor]) -> Tensor:
        """The perturbed cell's values at the input cell's gene positions."""
        target_x = tensors[PERTURBATION_KEYS.TARGET_X]
        values = self.encode_values(target_x, tensors[PERTURBATION_KEYS.TARGET_SEED].reshape(-1))
        index = inference_outputs[SCFORMER_KEYS.GENE_INDEX]
        out = torch.gather(values.to(index.device), 1, index.clamp_min(0))
        return torch.where(index >= 0, out, torch.zeros_like(out))

    @torch.inference_mode()
    def predict_expression(self, tensors: dict[str, Tensor]) -> Tensor:
        """Predicted log1p-normalised expression of every gene after the perturbation, ``(B, n_genes)``.

        Every gene is predicted (in chunks of ``max_length`` holding the perturbed genes when set); predicted bins
        are mapped to the input control cell's log1p values (:meth:`~cellformers.module.ScFormerModule.to_expression`).
        """
        inp = self._get_inference_input(tensors)
        x, seeds = inp["x"], inp["cell_seed"].reshape(-1)
        values = self.encode_values(x, seeds)
        est = self._all_gene_estimates(tensors, values, [None])
        return self.to_expression(est, values, x, "log1p")
