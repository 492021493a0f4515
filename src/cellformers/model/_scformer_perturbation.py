"""scFormer perturbation-response prediction (sections 3.4 and 4.3) :cite:p:`Cui22`."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.data.fields import CategoricalObsField, LayerField, NumericalObsField, ObsmField
from scvi.utils import setup_anndata_dsp

from cellformers._constants import CELL_SEED_OBS_COLUMN, REGISTRY_KEYS_CF
from cellformers._exceptions import MissingKeyError
from cellformers._settings import settings
from cellformers._utils import counter_uniform
from cellformers.metrics import perturbation_scores
from cellformers.module import ScFormerPerturbationModule
from cellformers.module._scformer_perturbation import PERTURBATION_KEYS
from cellformers.train._callbacks import KeepBestEpoch

from ._scformer import SCFORMER_PLAN_DEFAULTS, SCFORMER_PRESETS
from ._scformer_perturbation_data import PairedControlDataModule, perturbed_genes, top_de_genes
from .base import CellformersModel
from .base._presets import preset_config

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

#: ``adata.obsm`` key holding, per cell, the columns of its perturbed genes (``-1`` = none).
PERTURBED_GENES_OBSM = "_scformer_perturbed_genes"
_PERTURBATION_FIELD = "perturbation"
_GROUP_FIELD = "pairing_group"
_SALT_PICK = 22


class ScFormerPerturbation(CellformersModel):
    """scFormer :cite:p:`Cui22` for perturbation-response prediction (sections 3.4 and 4.3).

    Trained on pairs (control cell, perturbed cell): the control cell is the input, its perturbed genes carry the
    perturbation token (external token ``1``, eq. 4–5), and the MGM head predicts the perturbed cell's binned
    expression at every gene with cross entropy (section 3.4). Predictions for a perturbation are averaged over
    control cells and compared with the observed mean by Pearson correlation of the expression and of its change
    from control, on all genes and on the top-20 DE genes (App. A.1.2), beside the train-mean and additive
    baselines (:meth:`evaluate`).

    Data: raw counts with one label per cell naming its perturbed genes (``"A"``, ``"A+B"``, or GEARS'
    ``"A+ctrl"``) and a control label; :func:`cellformers.data.gears_dataset` loads GEARS' Norman and Adamson
    releases in that layout. Perturbed genes must be among ``adata.var_names``. For the paper's 5,000-HVG
    datasets on a CPU, set ``max_length`` (random gene subsets that always hold the perturbed genes in training;
    prediction covers all genes in chunks).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    vocab
        Gene vocabulary, a reference name, or ``None`` for the data's genes.
    preset, n_layers, d_model, n_heads, d_ff, dropout_rate, n_bins, include_zero_genes, max_length
        As in :class:`~cellformers.model.ScFormer`; zero genes are included by default because every gene's
        post-perturbation value is predicted.
    value_mode
        ``"binned"`` (paper: bins and cross entropy) or ``"log1p"`` (scGPT's perturbation model: log1p-normalised
        values and MSE).
    **module_kwargs
        Other options of :class:`~cellformers.module.ScFormerPerturbationModule`.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=60, n_per_perturbation=20, n_genes=30)
    >>> cf.model.ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation")
    >>> model = cf.model.ScFormerPerturbation(adata, preset="tiny", max_length=12)
    >>> model.train(
    ...     max_epochs=1,
    ...     batch_size=32,
    ...     train_perturbations=["CD3D", "CD3E", "CD4", "CD3D+CD3E"],
    ...     enable_progress_bar=False,
    ... )
    >>> model.predict(["CD3D+CD4"], n_control_cells=10).shape  # an unseen combination: mean expression of 30 genes
    (1, 30)
    >>> scores = model.evaluate(["CD3D+CD4"])  # against the mean and additive baselines
    >>> scores["method"].tolist()
    ['scformer', 'mean', 'additive']
    """

    _model_name: ClassVar[str] = "scformer_perturbation"
    _default_train_batch_size: ClassVar[int] = 16  # as scFormer
    _module_cls = ScFormerPerturbationModule

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | str | dict | None = None,
        preset: Literal["paper", "tiny"] = "paper",
        n_layers: int | None = None,
        d_model: int | None = None,
        n_heads: int | None = None,
        d_ff: int | None = None,
        dropout_rate: float | None = None,
        n_bins: int = 51,
        value_mode: Literal["binned", "log1p"] = "binned",
        include_zero_genes: bool = True,
        max_length: int | None = None,
        **module_kwargs,
    ):
        super().__init__(adata)
        if adata is None:
            msg = "`adata` is required: ScFormerPerturbation builds its gene token table from the registered genes."
            raise ValueError(msg)
        size = preset_config(
            "ScFormerPerturbation",
            SCFORMER_PRESETS,
            preset,
            {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, "dropout_rate": dropout_rate},
        )
        vocab, gene_token_ids = self._resolve_vocab(adata, vocab)
        self.module = self._module_cls(
            gene_token_ids,
            len(vocab),
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            **size,
            n_bins=n_bins,
            value_mode=value_mode,
            include_zero_genes=include_zero_genes,
            max_length=max_length,
            **module_kwargs,
        )
        self.vocab = vocab
        self.train_perturbations_: list[str] = []
        self.train_indices_ = np.zeros(0, dtype=np.int64)
        m = self.module
        self._model_summary_string = (
            f"ScFormerPerturbation model ({preset} preset): {size['n_layers']} blocks x {size['d_model']} "
            f"({size['n_heads']} heads, FFN {size['d_ff']}), "
            f"{m.n_genes} genes, values: {value_mode} ({m.mgm_loss}), max_length: {max_length}, "
            f"parameters: {sum(p.numel() for p in m.parameters()) / 1e6:.2f}M"
        )
        self.init_params_ = self._get_init_params(locals())

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        perturbation_key: str = "perturbation",
        control_value: str = "ctrl",
        cell_type_key: str | None = None,
        gene_mapping_key: str | None = None,
        **kwargs,
    ):
        """%(summary)s.

        Registers raw counts, the perturbation label of each cell, an optional cell type (control partners are
        drawn from the same cell type) and, in ``adata.obsm['_scformer_perturbed_genes']``, the columns of each
        cell's perturbed genes.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        perturbation_key
            Column of ``adata.obs`` with the perturbation of each cell (``"A"``, ``"A+B"``, ``"A+ctrl"``).
        control_value
            Label of the control cells.
        cell_type_key
            Column of ``adata.obs`` with the cell type or context of each cell; ``None`` for one context.
        gene_mapping_key
            ``key_added`` of :func:`cellformers.pp.map_genes`, when it was not the default: the model then uses the
            token ids of ``adata.var[gene_mapping_key]`` and the vocabulary recorded in ``adata.uns``.
        """
        for key, arg in ((perturbation_key, "perturbation_key"), (cell_type_key, "cell_type_key")):
            if key is not None and key not in adata.obs:
                msg = f"`{arg}={key!r}` is not a column of `adata.obs`."
                raise MissingKeyError(msg)
        labels = adata.obs[perturbation_key].astype(str)
        if not (labels == control_value).any():
            msg = f"No cell has `{perturbation_key}` == {control_value!r} (the control); set `control_value`."
            raise ValueError(msg)
        cls._prepare_setup(adata, layer, gene_mapping_key=gene_mapping_key)
        per_label = {lab: perturbed_genes(lab, control_value) for lab in labels.unique()}
        width = max(1, max(len(g) for g in per_label.values()))
        col = {g: i for i, g in enumerate(adata.var_names)}
        missing = sorted({g for gs in per_label.values() for g in gs if g not in col})
        if missing:
            msg = (
                f"{len(missing)} perturbed genes are not in `adata.var_names` (e.g. {missing[:5]}); their "
                "perturbation tokens are dropped. Keep the perturbed genes when subsetting to HVGs."
            )
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)
        table = {lab: [col.get(g, -1) for g in gs] + [-1] * (width - len(gs)) for lab, gs in per_label.items()}
        adata.obsm[PERTURBED_GENES_OBSM] = np.asarray([table[lab] for lab in labels], dtype=np.int64).reshape(-1, width)
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(_PERTURBATION_FIELD, perturbation_key),
            CategoricalObsField(_GROUP_FIELD, cell_type_key),
            NumericalObsField(REGISTRY_KEYS_CF.CELL_SEED, CELL_SEED_OBS_COLUMN),
            ObsmField(PERTURBATION_KEYS.PERTURBED_GENES, PERTURBED_GENES_OBSM),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ helpers
    @property
    def _setup_args(self) -> dict:
        return self.adata_manager.registry["setup_args"]

    def _labels(self, adata: AnnData | None = None) -> np.ndarray:
        adata = self.adata if adata is None else adata
        return adata.obs[self._setup_args["perturbation_key"]].astype(str).to_numpy()

    def _groups(self, adata: AnnData | None = None) -> np.ndarray:
        adata = self.adata if adata is None else adata
        key = self._setup_args["cell_type_key"]
        if key is None:
            return np.zeros(adata.n_obs, dtype=np.int64)
        return pd.Categorical(adata.obs[key].astype(str)).codes.astype(np.int64)

    def _canonical(self, label: str) -> str:
        genes = sorted(perturbed_genes(label, self._setup_args["control_value"]))
        return "+".join(genes) if genes else self._setup_args["control_value"]

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int = 10,
        *,
        batch_size: int | None = None,
        validation_size: float = 0.1,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        precision: str | int | None = None,
        early_stopping: bool = False,
        check_val_every_n_epoch: int | None = 1,
        enable_progress_bar: bool | None = None,
        plan_kwargs: dict | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        resume: bool = False,
        train_perturbations: Sequence[str] | None = None,
        train_indices: Sequence[int] | None = None,
        load_best: bool = True,
        **kwargs,
    ) -> None:
        """Train on (control, perturbed) pairs.

        Section 5: the perturbation model converges within a few epochs; the weights of the epoch with the best
        validation loss are kept. Optimiser defaults as :class:`~cellformers.model.ScFormer`. The common
        parameters come in the order of every model's ``train`` (:meth:`~cellformers.model.CellformersModel.train`;
        the pairs are drawn by this model, so ``train_size`` and ``datasplitter_kwargs`` do not apply), then this
        model's own.

        Parameters
        ----------
        max_epochs
            Number of epochs.
        batch_size
            Pairs per minibatch; ``None``: 16 (as scFormer), or less when the memory estimate says 16 will not fit
            (see :meth:`~cellformers.model.CellformersModel.train`).
        validation_size
            Fraction of the training cells kept for validation.
        accelerator
            ``"cpu"``, ``"gpu"``, ``"mps"`` or ``"auto"``.
        devices
            Devices to train on (Lightning's ``devices``).
        precision
            Lightning precision; ``None``: :attr:`cellformers.settings.precision`.
        early_stopping
            Stop when the validation loss stops improving (scvi-tools' early stopping).
        check_val_every_n_epoch
            Validation frequency (every epoch by default).
        enable_progress_bar
            Show Lightning's progress bar; ``None``: :attr:`cellformers.settings.progress_bar`.
        plan_kwargs
            Passed to :class:`~cellformers.train.MaskedModelingTrainingPlan`.
        checkpoint_dir
            Directory of a per-epoch Lightning checkpoint (see :meth:`~cellformers.model.CellformersModel.train`).
        resume
            Continue from the checkpoint in ``checkpoint_dir``.
        train_perturbations
            Perturbations whose cells are used for training (labels as in ``adata.obs``; ``"A+ctrl"`` and ``"A"``
            are the same); ``None`` uses all. Hold out the test perturbations here (section 4.3: test
            perturbations are unseen in training).
        train_indices
            Alternatively, the perturbed cells to train on (e.g. all but one cell type).
        load_best
            Restore the epoch with the lowest validation MGM loss.
        **kwargs
            Other :class:`lightning.pytorch.Trainer` options (``callbacks``, ``gradient_clip_val``, …).
        """
        batch_size = self._resolve_train_batch_size(batch_size, accelerator, checkpoint_dir, resume, plan_kwargs)
        control = self._setup_args["control_value"]
        labels = self._labels()
        canon = np.asarray([self._canonical(lab) for lab in labels])
        is_ctrl = canon == control
        if train_indices is not None:
            cand = np.asarray(train_indices)
            cand = cand[~is_ctrl[cand]]
        else:
            keep = ~is_ctrl
            if train_perturbations is not None:
                wanted = {self._canonical(p) for p in train_perturbations}
                unknown = wanted - set(canon)
                if unknown:
                    msg = f"`train_perturbations` has labels with no cells: {sorted(unknown)[:5]}."
                    raise ValueError(msg)
                keep &= np.isin(canon, list(wanted))
            cand = np.flatnonzero(keep)
        if cand.size == 0:
            msg = "No perturbed cell to train on."
            raise ValueError(msg)
        self.train_perturbations_ = sorted(set(canon[cand]))
        self.train_indices_ = np.sort(cand)
        groups = self._groups()
        pools = {int(g): np.flatnonzero(is_ctrl & (groups == g)) for g in np.unique(groups[cand])}
        empty = [g for g, p in pools.items() if p.size == 0]
        if empty:
            msg = "Some cell types of the training cells have no control cells to pair with."
            raise ValueError(msg)
        rng = np.random.default_rng(settings.seed)
        perm = rng.permutation(cand)
        n_val = int(round(validation_size * perm.size)) if validation_size > 0 else 0
        dm = PairedControlDataModule(self.adata_manager, perm[n_val:], perm[:n_val], pools, groups, batch_size)
        plan_kwargs = {**SCFORMER_PLAN_DEFAULTS, **(plan_kwargs or {})}
        callbacks = list(kwargs.pop("callbacks", None) or [])
        keep_cb = KeepBestEpoch("mgm_loss_validation") if (load_best and n_val > 0) else None
        if keep_cb is not None:
            callbacks.append(keep_cb)
        out = super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=devices,
            precision=precision,
            early_stopping=early_stopping,
            check_val_every_n_epoch=check_val_every_n_epoch,
            enable_progress_bar=enable_progress_bar,
            plan_kwargs=plan_kwargs,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            datamodule=dm,
            callbacks=callbacks,
            **kwargs,
        )
        if keep_cb is not None and keep_cb.epoch is not None:
            self.best_epoch_ = keep_cb.epoch
        return out

    # ------------------------------------------------------------------ prediction
    def _control_cells(self, n: int | None, cell_type: str | None) -> np.ndarray:
        control = self._setup_args["control_value"]
        is_ctrl = np.asarray([self._canonical(lab) == control for lab in self._labels()])
        if cell_type is not None:
            key = self._setup_args["cell_type_key"]
            if key is None:
                msg = "`cell_type` needs `cell_type_key` in `setup_anndata`."
                raise ValueError(msg)
            is_ctrl &= self.adata.obs[key].astype(str).to_numpy() == str(cell_type)
        pool = np.flatnonzero(is_ctrl)
        if pool.size == 0:
            msg = f"No control cell{'' if cell_type is None else f' of cell type {cell_type!r}'}."
            raise ValueError(msg)
        if n is None or n >= pool.size:
            return pool
        seeds = torch.as_tensor(self.adata.obs[CELL_SEED_OBS_COLUMN].to_numpy()[pool])
        order = np.argsort(counter_uniform(seeds, 1, salt=_SALT_PICK).numpy()[:, 0], kind="stable")
        return np.sort(pool[order[:n]])

    def _columns_of(self, perturbation: str) -> np.ndarray:
        col = {g: i for i, g in enumerate(self.adata.var_names)}
        genes = perturbed_genes(perturbation, self._setup_args["control_value"])
        width = self.adata.obsm[PERTURBED_GENES_OBSM].shape[1]
        cols = [col.get(g, -1) for g in genes]
        if any(c < 0 for c in cols):
            missing = [g for g, c in zip(genes, cols, strict=True) if c < 0]
            msg = f"Perturbed genes {missing} are not in `adata.var_names`."
            raise ValueError(msg)
        cols = cols + [-1] * max(0, width - len(cols))
        return np.asarray(cols, dtype=np.int64)

    @torch.inference_mode()
    def predict(
        self,
        perturbations: Sequence[str],
        *,
        cell_type: str | None = None,
        n_control_cells: int | None = 300,
        batch_size: int | None = None,
        precision: str | None = None,
        return_cells: bool = False,
    ) -> pd.DataFrame | dict[str, np.ndarray]:
        """Predicted post-perturbation expression, on the ``log1p(x / Σx · 1e4)`` scale of the registered genes.

        Each perturbation is applied to the same control cells (``n_control_cells`` picked by their seeds; all
        when ``None``, of ``cell_type`` when given) and every gene is predicted.

        Parameters
        ----------
        perturbations
            Perturbation labels (``"A"``, ``"A+B"``).
        cell_type
            Cell type of the control cells (needs ``cell_type_key``).
        n_control_cells
            Control cells per perturbation.
        batch_size
            Minibatch size (default 32).
        precision
            ``"bf16"`` for autocast, ``None`` for float32.
        return_cells
            Return a dict perturbation -> ``(n_cells, n_genes)`` predictions instead of the means.

        Returns
        -------
        DataFrame perturbation x gene (genes in the vocabulary) of mean predictions, or the dict.
        """
        ctrl = self._control_cells(n_control_cells, cell_type)
        genes = np.asarray(self.adata.var_names)[self.module.input_columns.cpu().numpy()]
        cells: dict[str, np.ndarray] = {}
        for p in perturbations:
            cols = torch.as_tensor(self._columns_of(p))

            def fn(t, cols=cols):
                t = dict(t)
                t[PERTURBATION_KEYS.PERTURBED_GENES] = cols.to(t[REGISTRY_KEYS.X_KEY].device).expand(
                    t[REGISTRY_KEYS.X_KEY].shape[0], -1
                )
                return self.module.predict_expression(t)

            cells[p] = self._predict_batches(fn, None, ctrl, batch_size, precision)
        if return_cells:
            return cells
        return pd.DataFrame(
            np.stack([cells[p].mean(0) for p in perturbations]), index=list(perturbations), columns=genes
        )

    def _log1p_rows(self, idx: np.ndarray) -> np.ndarray:
        adata = self.adata
        layer = self._setup_args["layer"]
        X = adata.X if layer is None else adata.layers[layer]
        X = X[idx]
        X = X.toarray() if sparse.issparse(X) else np.asarray(X)
        lib = np.maximum(X.sum(1, keepdims=True), 1.0)
        X = X[:, self.module.input_columns.cpu().numpy()]
        return np.log1p(X / lib * self.module.target_sum)

    def evaluate(
        self,
        perturbations: Sequence[str],
        *,
        cell_type: str | None = None,
        de_genes: Mapping[str, Sequence[str]] | None = None,
        n_de_genes: int = 20,
        n_control_cells: int | None = 300,
        batch_size: int | None = None,
        precision: str | None = None,
    ) -> pd.DataFrame:
        """Pearson metrics of App. A.1.2 for scFormer and two baselines, per perturbation.

        Mean expression vectors are compared on the ``log1p(x / Σx · 1e4)`` scale of the registered genes: the
        observed mean of the perturbation's cells (of ``cell_type`` when given) against

        * ``"scformer"``: the mean prediction over control cells (:meth:`predict`);
        * ``"mean"``: the mean of all perturbed training cells;
        * ``"additive"``: the control mean plus the training shift of the perturbation when it was seen in
          training (e.g. in another cell type), else the sum of the shifts of its single-gene perturbations that
          were (an unseen gene adds nothing; with no seen component this is the control mean, whose
          ``pearson_delta`` is NaN). A shift is the mean of the perturbation's training cells minus the mean of
          the control cells of the same cell types.

        Parameters
        ----------
        perturbations
            Test perturbations.
        cell_type
            Restrict truth and control cells to this cell type.
        de_genes
            Top DE genes per perturbation (e.g. :func:`cellformers.data.gears_de_genes`); missing ones are the
            ``n_de_genes`` genes with the largest absolute Welch t statistic between the perturbation's cells and the controls.
        n_de_genes
            Number of DE genes.
        n_control_cells
            Control cells used by :meth:`predict`.
        batch_size
            Minibatch size.
        precision
            ``"bf16"`` for autocast, ``None`` for float32.

        Returns
        -------
        One row per (perturbation, method): ``pearson``, ``pearson_delta``, ``pearson_de``, ``pearson_delta_de``,
        ``n_cells`` (observed cells).
        """
        if not self.train_perturbations_:
            msg = "The model has not been trained (no training perturbations recorded)."
            raise RuntimeError(msg)
        control = self._setup_args["control_value"]
        canon = np.asarray([self._canonical(lab) for lab in self._labels()])
        ctype = None
        if cell_type is not None:
            ctype = self.adata.obs[self._setup_args["cell_type_key"]].astype(str).to_numpy() == str(cell_type)
        in_ctx = np.ones(len(canon), dtype=bool) if ctype is None else ctype
        ctrl_mean = self._log1p_rows(np.flatnonzero((canon == control) & in_ctx)).mean(0)
        groups = self._groups()
        train_cells = self.train_indices_
        train_mean = self._log1p_rows(train_cells).mean(0)
        shift: dict[str, np.ndarray] = {}
        for p in self.train_perturbations_:
            cells_p = train_cells[canon[train_cells] == p]
            # controls of the same cell types as the training cells of p, so cell-type mix does not leak in
            ref = np.flatnonzero((canon == control) & np.isin(groups, np.unique(groups[cells_p])))
            shift[p] = self._log1p_rows(cells_p).mean(0) - self._log1p_rows(ref).mean(0)
        genes = list(np.asarray(self.adata.var_names)[self.module.input_columns.cpu().numpy()])
        gpos = {g: i for i, g in enumerate(genes)}
        preds = self.predict(
            perturbations,
            cell_type=cell_type,
            n_control_cells=n_control_cells,
            batch_size=batch_size,
            precision=precision,
        )
        ctrl_rows = self._log1p_rows(np.flatnonzero((canon == control) & in_ctx))
        rows = []
        for p in perturbations:
            cp = self._canonical(p)
            cells = np.flatnonzero((canon == cp) & in_ctx)
            if cells.size == 0:
                msg = f"No observed cell for perturbation {p!r}{'' if cell_type is None else f' in {cell_type!r}'}."
                raise ValueError(msg)
            obs_rows = self._log1p_rows(cells)
            truth = obs_rows.mean(0)
            if de_genes is not None and (p in de_genes or cp in de_genes):
                names = de_genes.get(p, de_genes.get(cp))
                de = np.asarray([gpos[g] for g in names if g in gpos][:n_de_genes], dtype=np.int64)
            else:
                de = top_de_genes(obs_rows, ctrl_rows, n_de_genes)
            if cp in shift:
                additive = ctrl_mean + shift[cp]
            else:
                parts = [shift[g] for g in perturbed_genes(cp, control) if g in shift]
                additive = ctrl_mean + (np.sum(parts, axis=0) if parts else 0.0)
            for method, pred in (("scformer", preds.loc[p].to_numpy()), ("mean", train_mean), ("additive", additive)):
                rows.append(
                    {
                        "perturbation": p,
                        "method": method,
                        **perturbation_scores(np.asarray(pred), truth, ctrl_mean, de),
                        "n_cells": int(cells.size),
                    }
                )
        return pd.DataFrame(rows)
