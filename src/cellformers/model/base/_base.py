"""Plumbing shared by the cellformers models (on scvi-tools' ``BaseModelClass``)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, ClassVar

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi.model.base import BaseModelClass, UnsupervisedTrainingMixin

from cellformers._constants import CELL_SEED_OBS_COLUMN, REGISTRY_KEYS_CF
from cellformers._settings import settings
from cellformers._utils import (
    check_counts,
    check_key,
    get_matrix,
    registered_cell_seeds,
    resolve_adata,
    resolve_precision,
    training_device,
)
from cellformers._utils._progress import show_progress
from cellformers._utils._validation import check_batch_size
from cellformers.train import MaskedModelingTrainingPlan, warn_if_trivial

from ._anndata_checks import check_has_cells, check_new_anndata, warn_unused_categories
from ._annotation import AnnotationMixin
from ._inference import InferenceMixin
from ._mudata import MuDataMixin
from ._plan_runner import run_training_plan
from ._pretrained import PretrainedMixin
from ._vocab import check_gene_mapping_key, resolve_vocab

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData
    from lightning.pytorch import LightningModule

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)


class CellformersModel(
    InferenceMixin, AnnotationMixin, MuDataMixin, PretrainedMixin, UnsupervisedTrainingMixin, BaseModelClass
):
    """Base class of the three models (:class:`~cellformers.model.XTrimoGene`, ScFormer, ScPaLM).

    It adds to scvi-tools' model base: the shared ``setup_anndata`` fields (raw counts, batch, labels, a per-cell
    seed), the gene vocabulary and the token id of each input gene, a batched inference loop with optional
    autocast, and cell-type annotation by fine-tuning (:meth:`train_annotator`, :meth:`predict_cell_types`).

    Examples
    --------
    The three models share this plumbing; for example, cell-type annotation and checkpoints:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> isinstance(model, cf.model.CellformersModel)
    True
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> annotator = model.train_annotator("labels", max_epochs=2)
    >>> annotator.classes
    ['label_0', 'label_1', 'label_2']
    >>> model.predict_cell_types()[:3]  # doctest: +SKIP
    array(['label_2', 'label_1', 'label_2'], dtype=object)
    >>> model.predict_cell_types(soft=True).shape
    (60, 3)
    """

    _model_name: ClassVar[str] = "cellformers"
    _training_plan_cls = MaskedModelingTrainingPlan
    #: The paper's training batch size, used by ``train(batch_size=None)`` when the memory estimate allows it.
    _default_train_batch_size: ClassVar[int] = 128
    #: Arguments added with a default that changed the behaviour -> the value giving models saved before their old one.
    _defaults_before: ClassVar[dict[str, object]] = {}

    # ------------------------------------------------------------------ setup
    @classmethod
    def _prepare_setup(
        cls, adata: AnnData, layer: str | None, gene_mapping_key: str | None = None, **obs_keys: str | None
    ) -> None:
        """Validate the expression layer (raw counts, finite, non-negative) and add the per-cell seed column.

        Subclasses call this first in their ``setup_anndata``, with their ``adata.obs`` keys as keyword arguments
        (``batch_key=batch_key, labels_key=labels_key``), so a missing column is reported before anything is
        written to ``adata``: nothing is, unless every check passes.
        """
        from anndata import AnnData

        if not isinstance(adata, AnnData):
            hint = (
                " For a MuData, set up its RNA modality and build the model on it: "
                f"`{cls.__name__}.setup_anndata(mdata['rna'])` (or `{cls.__name__}.setup_mudata(mdata)`), "
                f"`{cls.__name__}(mdata['rna'])`."
                if hasattr(adata, "mod")
                else ""
            )
            msg = f"`adata` must be an AnnData, got a {type(adata).__name__}.{hint}"
            raise TypeError(msg)
        if layer is not None:
            check_key(adata, "layers", layer, arg="layer")
        for arg, key in obs_keys.items():
            if key is not None:
                check_key(adata, "obs", key, arg=arg)
        check_gene_mapping_key(adata, gene_mapping_key)
        check_counts(get_matrix(adata, layer), arg="layer", layer=layer)
        cls._add_cell_seeds(adata)

    @staticmethod
    def _get_setup_method_args(**setup_locals) -> dict:
        """scvi-tools' record of the ``setup_anndata`` arguments, after checking the ``adata.obs`` keys among them.

        ``batch_key`` and ``labels_key`` must be columns of ``adata.obs``; a setup that calls this first (as
        scvi-tools asks) then fails before it writes anything. Categories no cell has are warned about: scvi-tools
        registers them, so they would count as batches (or labels) of the model.
        """
        from anndata import AnnData

        adata = setup_locals.get("adata")
        for arg in ("batch_key", "labels_key"):
            key = setup_locals.get(arg)
            if isinstance(key, str) and isinstance(adata, AnnData):
                check_key(adata, "obs", key, arg=arg)
                warn_unused_categories(adata.obs[key], key, arg)
        return BaseModelClass._get_setup_method_args(**setup_locals)

    @staticmethod
    def _add_cell_seeds(adata: AnnData) -> None:
        """Write the per-cell seed column (:func:`~cellformers._utils.registered_cell_seeds`) into ``adata.obs``."""
        adata.obs[CELL_SEED_OBS_COLUMN] = registered_cell_seeds(adata.obs_names)

    def _validate_anndata(self, adata: AnnData | None = None, copy_if_view: bool = True) -> AnnData:
        """scvi-tools' validation of the data passed to a getter, after checking a new AnnData against the setup.

        A MuData stands for its ``"rna"`` modality. An AnnData the model has not seen must have the model's genes
        in its order, raw counts where the model reads them, and the registered ``adata.obs`` covariates with
        known categories; otherwise a :class:`~cellformers.CellformersError` says what to fix, and ``adata`` is left
        unchanged. The per-cell seed column is then added (without it a trained model could not transfer its setup
        to a new AnnData, e.g. a query dataset).
        """
        if adata is not None:
            adata = resolve_adata(adata)
            check_has_cells(adata)
            if self.get_anndata_manager(adata) is None:
                check_new_anndata(self, adata)
        added = False
        if adata is not None and CELL_SEED_OBS_COLUMN not in adata.obs.columns:
            if adata.is_view:
                adata = adata.copy() if copy_if_view else adata
            self._add_cell_seeds(adata)
            added = True
        try:
            return super()._validate_anndata(adata, copy_if_view=copy_if_view)
        except BaseException:
            if added:
                adata.obs.drop(columns=[CELL_SEED_OBS_COLUMN], inplace=True, errors="ignore")
            raise

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
    def _get_init_params(self, locals: dict) -> dict:
        """scvi-tools' record of the constructor arguments, with the vocabulary the model resolved.

        ``vocab`` is recorded as the resolved vocabulary (a JSON-able dict), not as given: ``None`` or a reference
        name would be resolved again against the AnnData passed to ``load`` and could give another vocabulary.
        """
        params = super()._get_init_params(locals)
        if "vocab" in params["non_kwargs"] and getattr(self, "vocab", None) is not None:
            params["non_kwargs"]["vocab"] = self.vocab.to_dict()
        return params

    @property
    def _gene_mapping_key(self) -> str | None:
        """The ``gene_mapping_key`` of the setup (the ``key_added`` of :func:`cellformers.pp.map_genes`)."""
        setup_args = self.adata_manager.registry.get("setup_args", {}) if self.adata_manager is not None else {}
        return setup_args.get("gene_mapping_key")

    def _resolve_vocab(self, adata: AnnData, vocab: GeneVocab | str | None) -> tuple[GeneVocab, np.ndarray]:
        """:func:`~cellformers.model.base._vocab.resolve_vocab` with the ``gene_mapping_key`` of the setup."""
        return resolve_vocab(adata, vocab, self._gene_mapping_key)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = None,
        *,
        batch_size: int | None = None,
        train_size: float | None = None,
        validation_size: float | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | int | None = None,
        early_stopping: bool = False,
        check_val_every_n_epoch: int | None = 1,
        enable_progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
        datasplitter_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        training_plan: LightningModule | None = None,
        **kwargs,
    ) -> None:
        """scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`, optionally checkpointed and resumable.

        Every model's ``train`` takes these parameters in this order (``max_epochs``, then keywords), with its own
        defaults where its paper has them (batch size: xTrimoGene 128, scFormer 16, scPaLM 128), then its own
        options.

        Parameters
        ----------
        max_epochs
            Number of passes over the training cells; ``None``: scvi-tools' heuristic from the number of cells.
        batch_size
            Cells per minibatch. ``None``: the model's paper default (xTrimoGene 128, scFormer 16, scPaLM 128),
            reduced to the largest power of two whose estimated peak memory
            (:func:`~cellformers.train.estimate_training_memory`) fits 60% of the available memory, logged with the
            estimate; a resumed run keeps the batch size of the interrupted one. A given batch size is used as is,
            with a warning giving the estimate and a batch size that fits when it is expected to exceed the
            available memory.
        train_size
            Fraction of the cells used for training, the rest for validation; ``None``: scvi-tools' 0.9.
        validation_size
            Fraction of the cells used for validation; ``None``: the rest after ``train_size``.
        accelerator
            ``"cpu"``, ``"gpu"``, ``"mps"`` or ``"auto"``.
        devices
            Devices to train on (Lightning's ``devices``).
        precision
            Lightning precision (``"32-true"``, ``"bf16-mixed"``, …); ``None``: :attr:`cellformers.settings.precision`.
        early_stopping
            Stop when the validation loss stops improving (scvi-tools' early stopping).
        check_val_every_n_epoch
            Validation frequency (every epoch by default, so ``history_`` holds the per-epoch validation losses).
        enable_progress_bar
            Show Lightning's progress bar; ``None``: :attr:`cellformers.settings.progress_bar`.
        plan_kwargs
            Passed to the training plan (``lr``, ``weight_decay``, warm-up and schedule, …).
        datasplitter_kwargs
            Passed to the data splitter (``shuffle``, ``drop_last``, …).
        checkpoint_dir
            Directory receiving a Lightning checkpoint, ``last.ckpt`` (``last-stage<k>.ckpt`` for scPaLM's stages),
            after every epoch: weights, optimiser and schedule state, epoch, callback states. Each file is written
            under a temporary name and renamed, so a crash never leaves a truncated checkpoint. With a checkpoint
            directory, the randomness of each epoch (shuffling, masks, dropout) is seeded from ``(run seed, epoch)``
            and the run seed is kept in the checkpoint, so resuming gives the same result as not stopping.
        resume
            Continue from the checkpoint in ``checkpoint_dir`` when there is one (else start from the beginning).
            Pass the same data, ``max_epochs`` and options as the interrupted call (and the same
            ``scvi.settings.seed``, which fixes the train/validation split). Lightning checkpoints are pickles:
            resume only from checkpoints you wrote. ``history_`` then holds the resumed epochs only.
        training_plan
            A ready Lightning plan to run instead of the model's own, with ``datamodule=`` (as :meth:`train_annotator`
            does): it gets this method's precision, progress bar and SIGTERM handling, and leaves the model's
            ``history_``, training indices and ``trainer`` as they were.
        **kwargs
            Other :class:`lightning.pytorch.Trainer` options (``callbacks``, ``gradient_clip_val``, …), ``datamodule``
            and ``ckpt_path`` (a Lightning checkpoint to resume from, as in scvi-tools). ``precision``
            defaults to :attr:`cellformers.settings.precision` (``"auto"``: ``"bf16-mixed"`` where the hardware has
            bf16 units, ``"32-true"`` elsewhere; see :func:`cellformers.train.resolve_precision`).

        Notes
        -----
        A process that receives SIGTERM while training stops at the next batch boundary (the current batch finishes;
        no checkpoint is written for the partial epoch, so ``checkpoint_dir`` keeps the last complete one) and exits
        with status 143, instead of returning as if training had completed.

        Each validation epoch also records the loss of the trivial predictor of the same target
        (``history["trivial_loss_validation"]``, beside ``history["pretext_loss_validation"]`` and their ratio
        ``history["trivial_ratio_validation"]``); a warning says so when training ended without beating it.
        """
        check_batch_size(batch_size)
        if training_plan is not None:
            kwargs["check_val_every_n_epoch"] = check_val_every_n_epoch
            return run_training_plan(
                self, training_plan, max_epochs, accelerator, devices, precision, enable_progress_bar, kwargs
            )
        if checkpoint_dir is None and resume:
            msg = "`resume=True` needs `checkpoint_dir=` (the directory the interrupted run wrote its checkpoint to)."
            raise ValueError(msg)
        if kwargs.get("datamodule") is None:  # a data module brings its own batch size
            batch_size = self._resolve_train_batch_size(batch_size, accelerator, checkpoint_dir, resume, plan_kwargs)
        kwargs = {
            "max_epochs": max_epochs,
            "batch_size": self._default_train_batch_size if batch_size is None else batch_size,
            "train_size": train_size,
            "validation_size": validation_size,
            "accelerator": accelerator,
            "devices": devices,
            "precision": precision,
            "early_stopping": early_stopping,
            "check_val_every_n_epoch": check_val_every_n_epoch,
            "enable_progress_bar": show_progress(enable_progress_bar),
            "plan_kwargs": plan_kwargs,
            "datasplitter_kwargs": datasplitter_kwargs,
            **kwargs,
        }
        if checkpoint_dir is not None:
            from cellformers.train._checkpointing import resumable_train_kwargs

            kwargs = resumable_train_kwargs(checkpoint_dir, resume, kwargs)
        # validation every epoch (the default) gives the per-epoch validation loss and its trivial baseline; without
        # validation cells Lightning would fail on the missing validation loader
        train_size, validation_size = kwargs.get("train_size"), kwargs.get("validation_size")
        if train_size is not None and float(train_size) >= 1.0 and not validation_size:
            kwargs["check_val_every_n_epoch"] = None
        kwargs["precision"] = resolve_precision(
            kwargs.get("precision"), training_device(kwargs.get("accelerator"), kwargs.get("device"))
        )
        from cellformers.train._checkpointing import StopOnSigterm, checkpoint_path
        from cellformers.train._heap_trim import RetainedHeap

        stop = StopOnSigterm(None if checkpoint_dir is None else checkpoint_path(checkpoint_dir, plan_kwargs))
        heap = RetainedHeap()
        kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), stop, heap]
        with stop, heap:
            out = super().train(**kwargs)
        warn_if_trivial(self)
        return out

    #: The shared ``train`` (models' overrides add pretext options): what :meth:`train_annotator` runs its plan through.
    _shared_train = train

    def _resolve_train_batch_size(
        self,
        batch_size: int | None,
        accelerator: str | None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        plan_kwargs: dict | None = None,
    ) -> int:
        """The training batch size: the memory-checked paper default for ``None``, else ``batch_size`` (checked).

        A resumed run with ``batch_size=None`` keeps the batch size stored in its checkpoint, so that the memory
        available at the time of resuming does not change the minibatches (and the result).
        """
        from cellformers.train._checkpointing import checkpoint_batch_size
        from cellformers.train._memory import resolve_train_batch_size

        if batch_size is None and resume and checkpoint_dir is not None:
            stored = checkpoint_batch_size(checkpoint_dir, plan_kwargs)
            if stored is not None:
                logger.info(f"training batch size {stored} (from the checkpoint resumed)")
                return stored
        return resolve_train_batch_size(
            self, batch_size, accelerator=accelerator, max_batch_size=self._default_train_batch_size
        )

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **kwargs,
    ) -> None:
        """scvi-tools' :meth:`~scvi.model.base.BaseModelClass.save`, with every file written atomically.

        The files are written into a temporary folder inside ``dir_path`` and each is then renamed into place, so
        a crash while saving leaves the previous file or the new one, never a truncated one; the temporary folder
        of a killed save (its name carries the process id) is removed by the next save into ``dir_path``. This is
        scvi-tools' format, a pickle that :meth:`load` unpickles: load only models you trust, and share models with
        :meth:`save_pretrained` (safetensors, checksums, no pickle).

        Parameters
        ----------
        dir_path
            Directory to write to (created if needed).
        prefix
            Prefix of the file names.
        overwrite
            Replace the files of a model saved in ``dir_path`` before (other files are left alone).
        save_anndata
            Also write ``adata.h5ad``.
        **kwargs
            Passed to :meth:`scvi.model.base.BaseModelClass.save` (``save_kwargs``, AnnData write options, ...).
        """
        import shutil
        from pathlib import Path

        from cellformers._utils._debris import clean_stale, temp_name

        path = Path(dir_path)
        if path.exists() and not overwrite:
            msg = f"{dir_path} already exists. Please provide another directory for saving."
            raise ValueError(msg)
        path.mkdir(parents=True, exist_ok=True)
        clean_stale(path, ".saving-")  # folders of saves killed before their renames
        tmp = path / temp_name("", "saving")
        tmp.mkdir()
        try:
            super().save(str(tmp), prefix=prefix, overwrite=True, save_anndata=save_anndata, **kwargs)
            for file in sorted(tmp.iterdir()):
                os.replace(file, path / file.name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
    ) -> CellformersModel:
        """scvi-tools' :meth:`~scvi.model.base.BaseModelClass.load`, refusing model files that could run code.

        ``model.pt`` is a pickle. Before scvi-tools unpickles it, it is read with an unpickler that resolves only
        what a cellformers model saves (tensors, NumPy arrays, pandas tables, the gene vocabulary), so a crafted
        file that would call anything else is refused with :class:`~cellformers.UntrustedCheckpointError`.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            AnnData set up like the saved model's, or ``None`` to load the AnnData saved with it (if any).
        accelerator
            ``"cpu"``, ``"gpu"``, ``"mps"`` or ``"auto"``.
        device
            Device to load onto (``"auto"``, an index or a torch device string).
        prefix
            Prefix of the file names (as given to :meth:`save`).
        backup_url
            URL to download ``model.pt`` from when it is missing.

        Returns
        -------
        The model, trained as saved.
        """
        from cellformers.checkpoint._safe_load import check_model_file

        from ._checkpoint_io import restore_defaults_before

        saved = check_model_file(os.path.join(os.fspath(dir_path), f"{prefix or ''}model.pt"))
        model = super().load(
            os.fspath(dir_path), adata, accelerator=accelerator, device=device, prefix=prefix, backup_url=backup_url
        )
        restore_defaults_before(model, saved)
        return model

    def untrained_copy(self, seed: int | None = None) -> CellformersModel:
        """The same architecture on the same data, with freshly initialised weights, ready for inference.

        The reference every training result is read against: an embedding of the untrained network already
        carries structure (random projections of expression), so "training added X" is the trained model's score
        minus this one's. The copy is marked as trained so its getters run; it shares this model's AnnData and
        registration.

        Parameters
        ----------
        seed
            Seed of the weight initialisation (``None``: :attr:`cellformers.settings.seed`).

        Returns
        -------
        A new model of the same class and constructor options.

        Examples
        --------
        >>> import cellformers as cf
        >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
        >>> cf.model.ScFormer.setup_anndata(adata)
        >>> model = cf.model.ScFormer(adata, preset="tiny")
        >>> model.train(max_epochs=1, enable_progress_bar=False)
        >>> reference = model.untrained_copy()
        >>> reference.get_latent_representation().shape
        (60, 16)
        """
        params = getattr(self, "init_params_", None) or {}
        if "non_kwargs" not in params:
            msg = f"{type(self).__name__} has no recorded constructor options (`init_params_`); it cannot be rebuilt."
            raise ValueError(msg)
        non_kwargs = dict(params["non_kwargs"])
        kwargs = {k: v for group in params.get("kwargs", {}).values() for k, v in group.items()}
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(settings.seed if seed is None else int(seed))
            copy = type(self)(self.adata, **non_kwargs, **kwargs)
        copy.module.eval()
        copy.is_trained_ = True
        stages = getattr(copy.module, "trained_stages", None)
        if isinstance(stages, torch.Tensor):
            stages.fill_(True)
        return copy

    def _gene_table(self, embeddings: torch.Tensor) -> pd.DataFrame:
        """Per-gene rows ``(n_genes, d)`` of the module's vocabulary genes as a DataFrame indexed by gene name."""
        self._check_if_trained(warn=False)
        emb = embeddings.detach().float().cpu().numpy()
        names = np.asarray(self.adata.var_names)[self.module.input_columns.cpu().numpy()]
        return pd.DataFrame(emb, index=pd.Index(names, name="gene"), columns=[f"dim_{i}" for i in range(emb.shape[1])])

    def _imputed(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        precision: str | None,
        **options,
    ) -> np.ndarray:
        """``module.impute(tensors, **options)`` of every cell, ``(n_cells, n_vars)``: NaN outside the vocabulary."""
        n_vars = self.module.n_input_vars
        pred = self._predict_batches(
            lambda t: self.module.to_input_columns(self.module.impute(t, **options).float()),
            adata,
            indices,
            batch_size,
            precision,
        )
        return pred.reshape(-1, n_vars) if pred.size == 0 else pred

    @property
    def _progress(self) -> bool:
        return settings.progress_bar
