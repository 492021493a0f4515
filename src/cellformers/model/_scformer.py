"""scFormer: a transformer that jointly learns cell and gene embeddings from binned expression :cite:p:`Cui22`."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from scvi.data import AnnDataManager
from scvi.utils import setup_anndata_dsp

from cellformers._exceptions import MissingKeyError
from cellformers._settings import settings
from cellformers.module import ScFormerModule
from cellformers.train import BatchGroupedDataSplitter
from cellformers.train._callbacks import DarRamp, EcsWarmup, KeepBestEpoch

from .base import CellformersModel
from .base._presets import preset_config

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

Pooling = Literal["cls", "mean", "weighted"]

#: Architecture presets. ``"paper"``: section 5 (4 blocks of width 128, 4 heads; the paper gives no feed-forward
#: width or dropout: 128 and 0.1, as scGPT's integration example); ``"tiny"``: examples and tests.
SCFORMER_PRESETS: dict[str, dict[str, int | float]] = {
    "paper": {"n_layers": 4, "d_model": 128, "n_heads": 4, "d_ff": 128, "dropout_rate": 0.1},
    "tiny": {"n_layers": 1, "d_model": 16, "n_heads": 2, "d_ff": 16, "dropout_rate": 0.1},
}

#: scFormer section 5: Adam, lr 1e-3, x0.9 after every epoch, no weight decay, no warmup.
SCFORMER_PLAN_DEFAULTS = {
    "optimizer": "Adam",
    "lr": 1e-3,
    "lr_scheduler": "step",
    "step_gamma": 0.9,
    "weight_decay": 0.0,
    "warmup_steps": 0,
}


class ScFormer(CellformersModel):
    """scFormer :cite:p:`Cui22`.

    Each cell is a "sentence" of gene tokens with their per-cell binned expression values (section 3.1), led by a
    ``<cls>`` token whose output is the cell embedding (section 3.3). A transformer encoder (4 blocks of width 128
    with 4 heads and a 128-wide feed-forward layer by default, section 5) is trained by masked gene modelling
    (MGM), masked value prediction from the cell embedding (MVC) and elastic cell similarity (ECS); with a
    ``batch_key`` also by an adversarial batch classifier behind gradient reversal (DAR) and domain-specific batch
    norm on the input embedding (DSBN). See :class:`~cellformers.module.ScFormerModule` for every option.

    The input length ``M`` is "the number of highly variable genes used" (eq. 1): subset the data to its HVGs
    before the model sees it, as in section 4.1, e.g.::

        sc.pp.normalize_total(tmp := adata.copy())
        sc.pp.log1p(tmp)
        sc.pp.highly_variable_genes(tmp, n_top_genes=1200, batch_key="batch")
        adata = adata[:, tmp.var["highly_variable"]].copy()  # raw counts, HVGs only

    With ``include_zero_genes=True`` (paper) every HVG is a token of every cell; ``max_length`` caps the number of
    tokens (random subsets in training, per-cell seeded subsets at inference). Given more than 1,200 genes as
    tokens of every cell (a whole gene set, no ``max_length``), the model warns with the expected cost: attention
    grows with the square of the length.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    vocab
        Gene vocabulary (:class:`~cellformers.data.GeneVocab`, a reference name such as ``"scgpt-default"``), or
        ``None`` for the union of the data's genes (section 3.1).
    preset
        Architecture of :data:`SCFORMER_PRESETS`: ``"paper"`` (section 5: 4 blocks of width 128, 4 heads) or
        ``"tiny"`` (one block of width 16, for examples and tests). The five arguments below override it.
    n_layers
        Transformer blocks (``None``: the preset's).
    d_model
        Embedding width (``None``: the preset's).
    n_heads
        Attention heads (``None``: the preset's).
    d_ff
        Feed-forward width (``None``: the preset's).
    dropout_rate
        Dropout (``None``: the preset's, 0.1; the paper does not give one; scGPT's integration example uses 0.2).
    n_bins
        Value bins including the zero bin.
    mask_ratio
        Fraction of values masked for MGM and MVC.
    value_encoder
        ``"continuous"`` (paper default ``emb_x``) or ``"categorical"``.
    include_zero_genes
        Include the zero-expressed input genes as tokens (``True``, paper), only the expressed ones (``False``,
        scGPT pre-training), or the expressed ones filled up to ``max_length`` with random zero-expressed ones
        (``"fill"``).
    max_length
        Maximum number of gene tokens per cell; ``None`` keeps all.
    pooling
        Cell embedding for the MVC/ECS/DAR heads: ``"cls"`` (paper), ``"mean"`` or ``"weighted"``.
    use_mgm, use_mvc, use_ecs
        Switch the task heads (Table 3 ablations).
    use_dar, use_dsbn
        Adversarial batch classifier and domain-specific batch norm; ``None`` turns them on when the registered
        batch has more than one category.
    mgm_loss
        ``"ce"`` (paper) or ``"mse"`` (scGPT).
    ecs_beta
        ECS threshold.
    ecs_weight
        ECS loss weight.
    external_tokens
        Per-gene external categories (eq. 4): an ``adata.var`` column of non-negative integers (``0`` = none) or an
        array with one entry per gene. Per-cell external tokens (perturbation flags) are handled by
        :class:`~cellformers.model.ScFormerPerturbation`.
    **module_kwargs
        Other options of :class:`~cellformers.module.ScFormerModule` (``tie_breaking``, ``mvc_query``, ``ecs_style``,
        ``dsbn_affine``, ``dsbn_eps``, ``dsbn_include_padding``, ``batch_conditional_decoders``,
        ``grad_reverse_lambda``, ``dar_weight``, ``activation``, ``norm_first`` …).

    Notes
    -----
    Defaults follow the paper; where the paper is silent they follow scGPT (post-norm blocks, ReLU, 51 bins,
    scGPT's LayerNorms in the embeddings). Options for every documented difference between the paper and scGPT's
    code: ``mgm_loss="mse"``, ``ecs_style="scgpt"``, ``mvc_query``/``mvc_detach_query``, ``dsbn_affine=False``,
    ``dsbn_eps=6.1e-5``, ``dsbn_include_padding=True``, ``batch_conditional_decoders=True``,
    ``include_zero_genes=False`` and ``max_length`` (scGPT's pre-training input), ``pooling`` (scGPT's
    ``cell_emb_style``) and ``value_encoder="categorical"``.

    Training from scratch on a CPU, two observations from ``benchmarks/scformer_integration.py``: with all HVGs as
    tokens an epoch is slow (attention over ~1,200 tokens), so the benchmarks use expressed genes only with
    ``max_length=128``; and the ECS loss at the paper's weight 10 dominates the objective while the cell embeddings
    are still nearly parallel (pairwise cosine ~0.99 at initialisation) and scrambles them in short trainings.
    ``train(ecs_warmup_epochs=...)``, ``ecs_weight`` and ``ecs_center`` are the knobs for that.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> adata.obsm["X_scformer"] = model.get_latent_representation()
    >>> adata.obsm["X_scformer"].shape
    (100, 16)
    """

    _model_name: ClassVar[str] = "scformer"
    # what `train` compares the validation pretext loss with, and what to try when it does not beat it
    _trivial_name: ClassVar[str] = "each gene's value distribution over the masked training positions"
    _trivial_hint: ClassVar[str] = (
        "For scFormer from scratch: score zero genes too (include_zero_genes=True on highly variable genes), and leave ECS/DAR off until the masked losses fall."
    )
    _module_cls = ScFormerModule
    _data_splitter_cls = BatchGroupedDataSplitter
    #: scFormer's practice (section 4.1): 1,200 highly variable genes as the tokens of a cell; longer inputs warn
    _paper_length: ClassVar[int] = 1200
    _default_train_batch_size: ClassVar[int] = 16  # section 5

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
        mask_ratio: float = 0.4,
        value_encoder: Literal["continuous", "categorical"] = "continuous",
        include_zero_genes: bool | Literal["fill"] = True,
        max_length: int | None = None,
        pooling: Pooling = "cls",
        use_mgm: bool = True,
        use_mvc: bool = True,
        use_ecs: bool = True,
        use_dar: bool | None = None,
        use_dsbn: bool | None = None,
        mgm_loss: Literal["ce", "mse"] = "ce",
        ecs_beta: float = 0.6,
        ecs_weight: float = 10.0,
        external_tokens: str | np.ndarray | Sequence[int] | None = None,
        **module_kwargs,
    ):
        super().__init__(adata)
        if adata is None:
            msg = "`adata` is required: ScFormer builds its gene token table from the registered genes."
            raise ValueError(msg)
        size = preset_config(
            "ScFormer",
            SCFORMER_PRESETS,
            preset,
            {"n_layers": n_layers, "d_model": d_model, "n_heads": n_heads, "d_ff": d_ff, "dropout_rate": dropout_rate},
        )
        vocab, gene_token_ids = self._resolve_vocab(adata, vocab)
        n_batch = int(self.summary_stats.n_batch)
        multi_batch = n_batch > 1
        use_dar = multi_batch if use_dar is None else bool(use_dar)
        use_dsbn = multi_batch if use_dsbn is None else bool(use_dsbn)
        extra = dict(module_kwargs)
        if external_tokens is not None:
            ext = self._external_tokens(adata, external_tokens)
            extra.setdefault("n_external", int(ext.max()) + 1)
            extra["external_token_ids"] = ext
        self.module = self._module_cls(
            gene_token_ids,
            len(vocab),
            pad_id=vocab.pad_id,
            cls_id=vocab.cls_id,
            n_batch=n_batch,
            **size,
            n_bins=n_bins,
            mask_ratio=mask_ratio,
            value_encoder=value_encoder,
            include_zero_genes=include_zero_genes,
            max_length=max_length,
            pooling=pooling,
            use_mgm=use_mgm,
            use_mvc=use_mvc,
            use_ecs=use_ecs,
            use_dar=use_dar,
            use_dsbn=use_dsbn,
            mgm_loss=mgm_loss,
            ecs_beta=ecs_beta,
            ecs_weight=ecs_weight,
            **extra,
        )
        self.vocab = vocab
        m = self.module
        heads = [n for n, on in (("MGM", use_mgm), ("MVC", use_mvc), ("ECS", use_ecs), ("DAR", use_dar)) if on]
        n_params = sum(p.numel() for p in m.parameters())
        self._model_summary_string = (
            f"ScFormer model ({preset} preset): {size['n_layers']} blocks x {size['d_model']} ({size['n_heads']} heads, "
            f"FFN {size['d_ff']}), {m.n_genes} genes, "
            f"{n_bins} bins ({mgm_loss}), heads: {'+'.join(heads) or 'none'}{', DSBN' if use_dsbn else ''}, "
            f"mask_ratio: {mask_ratio}, zero genes: {include_zero_genes}, max_length: {max_length}, "
            f"parameters: {n_params / 1e6:.2f}M"
        )
        self._warn_long_input(size["n_heads"])
        self.init_params_ = self._get_init_params(locals())

    def _warn_long_input(self, n_heads: int) -> None:
        """Warn, with the expected cost, when every cell gets more gene tokens than scFormer's 1,200 HVGs."""
        m = self.module
        if m.include_zero_genes is False:  # expressed genes only: the length varies per cell
            return
        length = m.n_genes if m.max_length is None else min(m.n_genes, int(m.max_length))
        if length <= self._paper_length:
            return
        tokens = length + 1  # and <cls>
        factor = (tokens / (self._paper_length + 1)) ** 2
        gib = 16 * n_heads * tokens**2 * 4 / 2**30
        msg = (
            f"ScFormer gets {length} gene tokens per cell: every gene of `adata` in the vocabulary, zeros included "
            f"(`include_zero_genes={m.include_zero_genes!r}`, `max_length={m.max_length}`). Attention grows with the "
            f"square of that length: each layer costs about {factor:.1f}x what it costs on scFormer's "
            f"{self._paper_length} highly variable genes (section 4.1), with {gib:.2f} GiB of attention scores per "
            "layer for a minibatch of 16 cells where no fused attention kernel applies. Subset `adata` to its highly "
            "variable genes first (`sc.pp.highly_variable_genes(lognorm, n_top_genes=1200)` on a log-normalized "
            "copy, then `adata = adata[:, hvg].copy()`; see the class docstring), or cap the tokens with "
            f"`max_length={self._paper_length}`, or use the expressed genes only (`include_zero_genes=False`)."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 1)

    @staticmethod
    def _external_tokens(adata: AnnData, external_tokens) -> np.ndarray:
        if isinstance(external_tokens, str):
            if external_tokens not in adata.var.columns:
                msg = f"`external_tokens={external_tokens!r}` is not a column of `adata.var`."
                raise MissingKeyError(msg)
            values = adata.var[external_tokens].to_numpy()
        else:
            values = np.asarray(external_tokens)
        if values.shape != (adata.n_vars,) or not np.issubdtype(values.dtype, np.integer) or (values < 0).any():
            msg = "`external_tokens` must hold one non-negative integer category per gene (0 = none)."
            raise ValueError(msg)
        return values.astype(np.int64)

    # ------------------------------------------------------------------ setup
    @classmethod
    @setup_anndata_dsp.dedent
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        gene_mapping_key: str | None = None,
        **kwargs,
    ):
        """%(summary)s.

        Raw counts are required (values are binned per cell, eq. 2); a per-cell seed column is added to
        ``adata.obs`` so binning ties, evaluation masks and subsampling are reproducible per cell.

        Parameters
        ----------
        %(param_adata)s
        %(param_layer)s
        %(param_batch_key)s
        %(param_labels_key)s
        gene_mapping_key
            ``key_added`` of :func:`cellformers.pp.map_genes`, when it was not the default: the model then uses the
            token ids of ``adata.var[gene_mapping_key]`` and the vocabulary recorded in ``adata.uns``.
        """
        cls._prepare_setup(adata, layer, batch_key=batch_key, labels_key=labels_key, gene_mapping_key=gene_mapping_key)
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = cls._anndata_fields(layer, batch_key, labels_key)
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    # ------------------------------------------------------------------ training
    def train(
        self,
        max_epochs: int | None = 30,
        *,
        batch_size: int | None = None,
        train_size: float | None = 0.9,
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
        group_by_batch: bool | None = None,
        load_best: bool = True,
        ecs_warmup_epochs: int = 0,
        dar_schedule: Literal["constant", "ganin"] = "constant",
        **kwargs,
    ) -> None:
        """Train with scvi-tools' :meth:`~scvi.model.base.UnsupervisedTrainingMixin.train`, scFormer's defaults.

        Section 5: 30 epochs, minibatches of 16, a 9:1 train/validation split, Adam at ``lr=1e-3`` decayed by
        0.9 after every epoch (``SCFORMER_PLAN_DEFAULTS``, overridden by ``plan_kwargs``), and the weights
        of the epoch with the best validation MGM loss are kept. On a CPU, minibatches of 16 are slow; larger
        ones (64–128) train several times faster per epoch. The parameters up to ``resume`` are those of every
        model's ``train`` (:meth:`~cellformers.model.CellformersModel.train`), in the same order.

        Parameters
        ----------
        max_epochs
            Number of epochs (30, section 5).
        batch_size
            Cells per minibatch; ``None``: 16 (section 5), or less when the memory estimate says 16 will not fit
            (see :meth:`~cellformers.model.CellformersModel.train`).
        train_size
            Fraction of cells used for training, the rest for validation (0.9, section 5).
        validation_size
            Fraction of cells used for validation; ``None``: the rest after ``train_size``.
        accelerator
            ``"cpu"``, ``"gpu"``, ``"mps"`` or ``"auto"``.
        devices
            Devices to train on (Lightning's ``devices``).
        precision
            Lightning precision; ``None``: :attr:`cellformers.settings.precision`.
        early_stopping
            Stop when the validation loss stops improving (scvi-tools' early stopping).
        check_val_every_n_epoch
            Validation frequency (every epoch by default, so ``history_`` holds the per-epoch validation losses).
        enable_progress_bar
            Show Lightning's progress bar; ``None``: :attr:`cellformers.settings.progress_bar`.
        plan_kwargs
            Passed to :class:`~cellformers.train.MaskedModelingTrainingPlan`.
        datasplitter_kwargs
            Passed to :class:`~cellformers.train.BatchGroupedDataSplitter`.
        checkpoint_dir
            Directory of a per-epoch Lightning checkpoint (see :meth:`~cellformers.model.CellformersModel.train`).
        resume
            Continue from the checkpoint in ``checkpoint_dir``.
        group_by_batch
            Draw each training minibatch from a single batch (as DSBN expects in scGPT). ``None``: when DSBN is on.
        load_best
            Restore the weights of the epoch with the lowest validation MGM loss (MVC loss without MGM) at the
            end (section 5); ignored without a validation set.
        ecs_warmup_epochs
            Train without the ECS loss for this many epochs first (not in the paper). From scratch, all cell
            embeddings start nearly parallel, and ECS at weight 10 then dominates MGM/MVC and scrambles the
            embedding (see the ablations in ``benchmarks/scformer_integration.py``).
        dar_schedule
            Scale of the reversed DAR gradient over training: ``"constant"`` (the paper, ``grad_reverse_lambda``
            from the first step) or ``"ganin"`` (Ganin and Lempitsky's ramp from 0 to ``grad_reverse_lambda``, not
            in the paper).
        **kwargs
            Other :class:`lightning.pytorch.Trainer` options (``callbacks``, ``gradient_clip_val``, …).
        """
        plan_kwargs = {**SCFORMER_PLAN_DEFAULTS, **(plan_kwargs or {})}
        datasplitter_kwargs = dict(datasplitter_kwargs or {})
        if group_by_batch is None:
            group_by_batch = self.module.use_dsbn
        datasplitter_kwargs.setdefault("group_by_batch", bool(group_by_batch))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        if ecs_warmup_epochs > 0 and self.module.ecs is not None:
            callbacks.append(EcsWarmup(ecs_warmup_epochs))
        if dar_schedule not in ("constant", "ganin"):
            msg = f"`dar_schedule` must be 'constant' or 'ganin', got {dar_schedule!r}."
            raise ValueError(msg)
        if dar_schedule == "ganin" and self.module.discriminator is not None:
            callbacks.append(DarRamp())
        keep = None
        has_validation = train_size is None or train_size < 1.0
        if load_best and has_validation and (self.module.use_mgm or self.module.use_mvc):
            monitor = "mgm_loss_validation" if self.module.use_mgm else "mvc_loss_validation"
            keep = KeepBestEpoch(monitor)
            callbacks.append(keep)
        out = super().train(
            max_epochs=max_epochs,
            batch_size=batch_size,
            train_size=train_size,
            validation_size=validation_size,
            accelerator=accelerator,
            devices=devices,
            precision=precision,
            early_stopping=early_stopping,
            check_val_every_n_epoch=check_val_every_n_epoch,
            enable_progress_bar=enable_progress_bar,
            plan_kwargs=plan_kwargs,
            datasplitter_kwargs=datasplitter_kwargs,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            callbacks=callbacks,
            **kwargs,
        )
        if keep is not None and keep.epoch is not None:
            self.best_epoch_ = keep.epoch
        return out

    # ------------------------------------------------------------------ getters
    def _batch_size(self, batch_size: int | None) -> int:
        return 32 if batch_size is None else int(batch_size)

    @property
    def _sort_inference_by_length(self) -> bool:
        # with expressed genes only, the sequence length is the number of expressed genes
        return self.module.include_zero_genes is False

    @property
    def _inference_length_cap(self) -> int | None:
        return self.module.max_length

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
        pooling: Pooling | None = None,
    ) -> np.ndarray:
        """Cell embeddings of the unmasked cells.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to embed; ``None`` for all.
        batch_size
            Minibatch size (default 32).
        precision
            ``"bf16"`` (or ``"bf16-mixed"``) for autocast, ``None``/``"32"`` for float32, ``"int8"`` (CPU) for
            int8 dynamic quantization of the transformer blocks' ``Linear`` layers.
        pooling
            ``"cls"`` (the ``<cls>`` output, section 3.3), ``"mean"`` or ``"weighted"`` (the gene outputs, mean or
            weighted by their binned values); ``None`` uses the model's training pooling.

        Returns
        -------
        Array of shape ``(n_cells, d_model)``.
        """
        return self._predict_batches(
            lambda t: self.module.embed(t, pooling=pooling), adata, indices, batch_size, precision
        )

    @torch.inference_mode()
    def get_context_embedding(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        genes: Sequence[str] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
    ) -> np.ndarray:
        """Per-gene outputs of the transformer (the gene rows after ``<cls>``), for every gene of each cell.

        scFormer's counterpart of :meth:`XTrimoGene.get_context_embedding <cellformers.model.XTrimoGene.get_context_embedding>`:
        every gene is a token (zero-expressed ones too, whatever ``include_zero_genes`` the model was trained
        with), nothing is masked, and with ``max_length`` the genes go through in per-cell seeded chunks of at most
        ``max_length`` tokens (:meth:`~cellformers.module.ScFormerModule.gene_chunks`), each gene's output being
        read from its chunk. The result takes ``n_cells x n_genes x d_model x 4`` bytes.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to embed; ``None`` for all.
        genes
            Gene names (among ``model.get_var_names()``, in the vocabulary) to return, in this order; ``None`` for
            all. Every gene is still in the input sequence (the context).
        batch_size
            Minibatch size (default 32).
        precision
            ``"bf16"`` for autocast, ``None`` for float32.

        Returns
        -------
        Float32 array ``(n_cells, n_genes_selected, d_model)``.

        Examples
        --------
        >>> import cellformers as cf
        >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
        >>> cf.model.ScFormer.setup_anndata(adata)
        >>> model = cf.model.ScFormer(adata, preset="tiny")
        >>> model.train(max_epochs=1, enable_progress_bar=False)
        >>> model.get_context_embedding(genes=adata.var_names[:5]).shape
        (60, 5, 16)
        """
        from cellformers._constants import MODULE_KEYS
        from cellformers.model.base._context import context_genes

        positions, _ = context_genes(self, genes)
        m = self.module
        select = torch.as_tensor(positions, device=m.input_gene_ids.device)

        def fn(tensors: dict[str, torch.Tensor]) -> torch.Tensor:
            device = m.input_gene_ids.device
            inp = {
                k: v.to(device) if isinstance(v, torch.Tensor) else v
                for k, v in m._get_inference_input(tensors).items()
            }
            seeds = inp["cell_seed"].reshape(-1)
            values = m.encode_values(inp["x"], seeds)
            b, g = values.shape
            out = None
            none = torch.zeros_like(values, dtype=torch.bool)
            for gene_index in m.gene_chunks(seeds, inp.get("forced")):
                h = m.inference(**inp, mask=none, values=values, gene_index=gene_index)[MODULE_KEYS.TOKEN_EMBEDDING]
                if out is None:
                    out = h.new_zeros(b, g + 1, h.shape[-1])
                idx = torch.where(gene_index >= 0, gene_index, torch.full_like(gene_index, g))
                out.scatter_(1, idx.unsqueeze(-1).expand_as(h), h)
            return out[:, :g].index_select(1, select)

        return self._predict_batches(fn, adata, indices, batch_size, precision)

    @torch.inference_mode()
    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
        source: Literal["mgm", "mvc"] = "mgm",
        scale: Literal["log1p", "bins"] = "log1p",
    ) -> np.ndarray:
        """Predicted expression of every gene, on the ``log1p(x / Σx · 1e4)`` scale by default.

        scFormer predicts bins, which are relative to each cell; a predicted bin is mapped back to the cell's own
        log1p-normalised values (the mean value of the cell's genes in that bin, interpolated for empty bins), and
        the cross-entropy heads give the expectation over their softmax. All genes of the cell are in the sequence.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to impute; ``None`` for all.
        batch_size
            Minibatch size (default 32).
        precision
            ``"bf16"`` for autocast, ``None`` for float32.
        source
            ``"mgm"``: each gene is predicted by the MGM head while masked (``ceil(1/mask_ratio)`` passes with
            disjoint per-cell seeded masks); ``"mvc"``: every gene is predicted from the cell embedding by MVC.
        scale
            ``"log1p"`` or ``"bins"`` (expected bin index).

        Returns
        -------
        Array of shape ``(n_cells, n_vars)``; NaN in the columns of genes outside the vocabulary.
        """
        return self._imputed(adata, indices, batch_size, precision, source=source, scale=scale)

    def get_gene_embeddings(self) -> pd.DataFrame:
        """Learned gene-token embeddings ``emb_g`` (after its LayerNorm) of the registered genes in the vocabulary.

        These are the gene embeddings of Fig. 2c; :func:`cellformers.tl.gene_embeddings` writes them to
        ``adata.varm``.

        Returns
        -------
        DataFrame of shape ``(n_genes_in_vocab, d_model)`` indexed by gene name.
        """
        m = self.module
        with torch.no_grad():
            return self._gene_table(m.gene_norm(m.gene_embedding(m.input_gene_ids)))
