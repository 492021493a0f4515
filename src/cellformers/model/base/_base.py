"""Plumbing shared by the cellformers models (on scvi-tools' ``BaseModelClass``)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from ..._constants import CELL_SEED_OBS_COLUMN, REGISTRY_KEYS_CF, VAR_KEYS
from ..._exceptions import GeneMappingError
from ..._settings import settings
from ..._utils import autocast_context, cell_seed, check_counts, check_key, get_matrix
from ...pretrained import PretrainedMixin
from ...train import MaskedModelingTrainingPlan

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData

    from ...data import GeneVocab

logger = logging.getLogger(__name__)


class CellformersModel(PretrainedMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """Base class of :class:`~cellformers.model.XTrimoGene`, :class:`~cellformers.model.ScFormer` and
    :class:`~cellformers.model.ScPaLM`.

    It adds to scvi-tools' model base: the shared ``setup_anndata`` fields (raw counts, batch, labels, a per-cell
    seed), the gene vocabulary and the token id of each input gene, and a batched inference loop with optional
    autocast.
    """

    _model_name: ClassVar[str] = "cellformers"
    _training_plan_cls = MaskedModelingTrainingPlan

    # ------------------------------------------------------------------ setup
    @classmethod
    def _prepare_setup(cls, adata: AnnData, layer: str | None) -> None:
        """Validate the expression layer (raw counts, finite, non-negative) and add the per-cell seed column.

        Subclasses call this first in their ``setup_anndata``. Nothing is written to ``adata`` unless the checks
        pass.
        """
        if layer is not None:
            check_key(adata, "layers", layer, arg="layer")
        check_counts(get_matrix(adata, layer), arg="layer", layer=layer)
        cls._add_cell_seeds(adata)

    @staticmethod
    def _add_cell_seeds(adata: AnnData) -> None:
        """Write the per-cell seed column (24 bits of a hash of the cell name) into ``adata.obs``."""
        seeds = np.fromiter(
            (cell_seed(str(name), salt="cell") % (1 << 24) for name in adata.obs_names),
            dtype=np.float64,
            count=adata.n_obs,
        )
        adata.obs[CELL_SEED_OBS_COLUMN] = seeds.astype(np.float32)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """scvi-tools' validation, after adding the per-cell seed column to a new AnnData that lacks it.

        Without it, a trained model could not transfer its setup to a new AnnData (e.g. a query dataset).
        """
        if adata is not None and CELL_SEED_OBS_COLUMN not in adata.obs.columns:
            if adata.is_view:
                adata = adata.copy() if copy_if_view else adata
            self._add_cell_seeds(adata)
        return super()._validate_anndata(adata, copy_if_view=copy_if_view)

    @classmethod
    def _anndata_fields(cls, layer: str | None, batch_key: str | None, labels_key: str | None) -> list:
        """The ``AnnDataManager`` fields every cellformers model registers."""
        return [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            NumericalObsField(REGISTRY_KEYS_CF.CELL_SEED, CELL_SEED_OBS_COLUMN),
        ]

    # ------------------------------------------------------------------ vocabulary
    @staticmethod
    def _resolve_vocab(adata: AnnData, vocab: GeneVocab | str | None) -> tuple[GeneVocab, np.ndarray]:
        """The vocabulary and the token id of each gene of ``adata`` (``-1`` when absent).

        ``vocab=None`` builds the vocabulary from the data's genes (scFormer section 3.1). With a vocabulary or a
        reference name, ``adata.var['cellformers_token_id']`` from :func:`cellformers.pp.map_genes` is used when
        present (it resolves Ensembl ids and case), else the var names are looked up directly.
        """
        from ...data import GeneVocab

        if vocab is None:
            vocab = GeneVocab.from_adata(adata)
        elif isinstance(vocab, str):
            vocab = GeneVocab.load(vocab)
        elif not isinstance(vocab, GeneVocab):
            msg = f"`vocab` must be a GeneVocab, a reference name or None, got {type(vocab).__name__}."
            raise TypeError(msg)
        if VAR_KEYS.TOKEN_ID in adata.var.columns:
            ids = adata.var[VAR_KEYS.TOKEN_ID].to_numpy(dtype=np.int64)
            if ids.max(initial=-1) >= len(vocab):
                msg = (
                    f"`adata.var[{VAR_KEYS.TOKEN_ID!r}]` holds token ids beyond this vocabulary ({len(vocab)} "
                    "tokens): it was mapped against another vocabulary. Rerun `cellformers.pp.map_genes` with "
                    "the model's vocabulary."
                )
                raise GeneMappingError(msg)
        else:
            ids = vocab.lookup(adata.var_names)
        n_mapped = int((ids >= 0).sum())
        if n_mapped == 0:
            msg = (
                "None of the genes of `adata` is in the vocabulary. Check that `adata.var_names` are gene symbols "
                "(or run `cellformers.pp.map_genes(adata, vocab, gene_symbols=...)`)."
            )
            raise GeneMappingError(msg)
        if n_mapped < ids.size:
            logger.info(f"{n_mapped} of {ids.size} genes are in the vocabulary; the others are ignored")
        return vocab, ids

    # ------------------------------------------------------------------ inference
    def _batch_size(self, batch_size: int | None) -> int:
        return 128 if batch_size is None else int(batch_size)

    @torch.inference_mode()
    def _predict_batches(
        self,
        fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        precision: str | None = None,
    ) -> np.ndarray:
        """Run ``fn`` on every minibatch of registered tensors and stack the outputs as float32 NumPy rows."""
        self._check_if_trained(warn=False)
        adata = self._validate_anndata(adata)
        dl = self._make_data_loader(adata=adata, indices=indices, batch_size=self._batch_size(batch_size))
        was_training = self.module.training
        self.module.eval()
        out = []
        try:
            for tensors in dl:
                with autocast_context(self.device, precision):
                    y = fn(tensors)
                out.append(y.detach().float().cpu())
        finally:
            self.module.train(was_training)
        if not out:
            return np.zeros((0,), dtype=np.float32)
        return torch.cat(out).numpy()

    @property
    def _progress(self) -> bool:
        return settings.progress_bar
