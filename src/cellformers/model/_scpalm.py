"""scPaLM: single-cell language model with genetic pathway learning."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.utils import setup_anndata_dsp

from cellformers._constants import REGISTRY_KEYS_CF
from cellformers.module import ScPaLMModule
from cellformers.train import ScPaLMTrainingPlan

from ._scpalm_pathways import ScPaLMPathwaysMixin
from .base import CellformersModel
from .base._presets import preset_config

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    import pandas as pd
    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

#: Architecture presets. ``"paper"`` is Table 2 of the paper (with N = 256 tokens and K = 128 codes, section B.1);
#: ``"small"`` is a CPU-sized configuration for tutorials and quick runs; ``"tiny"`` for examples and tests.
SCPALM_PRESETS: dict[str, dict[str, int | float]] = {
    "paper": {
        "n_hidden": 256,
        "n_layers": 6,
        "n_heads": 8,
        "n_intermediate": 1024,
        "n_pathway_tokens": 256,
        "n_codes": 128,
        "dropout_rate": 0.0,
        "n_value_hidden": 64,
        "n_gene_embedding": 64,
    },
    "small": {
        "n_hidden": 64,
        "n_layers": 2,
        "n_heads": 4,
        "n_intermediate": 256,
        "n_pathway_tokens": 64,
        "n_codes": 128,
        "dropout_rate": 0.0,
        "n_value_hidden": 16,
        "n_gene_embedding": 16,
    },
    "tiny": {
        "n_hidden": 16,
        "n_layers": 1,
        "n_heads": 2,
        "n_intermediate": 32,
        "n_pathway_tokens": 8,
        "n_codes": 16,
        "dropout_rate": 0.0,
        "n_value_hidden": 8,
        "n_gene_embedding": 8,
    },
}


#: Quantizer settings selected by ``ScPaLM(quantizer=...)``. ``"paper"``: one codebook shared by all positions,
#: random codes, a learned position embedding before the pathway encoder (as in the paper). ``"per_position"`` (the
#: default): one codebook per position with per-position statistics and dead-code re-seeding, no pre-VQ position
#: embedding, and 30% of the stage-1 steps without quantization before a k-means initialisation of the codebooks
#: (measured in ``benchmarks/results/scpalm_codebook_*.json``; see the scPaLM user guide).
SCPALM_QUANTIZERS: dict[str, dict[str, object]] = {
    "paper": {"vq_codebook": "shared", "vq_warmup": 0.0, "pre_vq_position": True},
    "per_position": {"vq_codebook": "per_position", "vq_warmup": 0.3, "pre_vq_position": False},
}

#: Stage-2 settings selected by ``ScPaLM(stage2=...)``. ``"paper"``: the stage-2 decoder reads the encoder outputs of
#: the kept pathway tokens (``e_M`` elsewhere) and the token-level contrastive loss is on (section 3.3, appendix A.1).
#: ``"bottleneck"`` (the default): the decoder reconstructs the left-out region from the cell token ``h_C`` alone and
#: the contrastive loss is off. Measured from scratch on pbmc3k and pancreas (see the scPaLM user guide), the
#: contrastive term keeps the stage-2 reconstruction at the per-gene-mean baseline at any weight tried (1, 0.1,
#: 0.01), and a decoder that sees the kept tokens does not need ``h_C`` to reconstruct.
SCPALM_STAGE2: dict[str, dict[str, object]] = {
    "paper": {"cell_decoder_input": "tokens", "contrastive": True},
    "bottleneck": {"cell_decoder_input": "cell_token", "contrastive": False},
}


class ScPaLM(ScPaLMPathwaysMixin, CellformersModel):
    """scPaLM :cite:p:`scPaLM`.

    A transformer that reads the whole expression vector through a permutation-invariant embedding into ``N``
    tokens (section 3.1), learns discrete "pathway" tokens with a vector-quantized autoencoder (stage 1, section
    3.2), and then aggregates them into a cell token ``h_C`` with a masked second encoder/decoder and a token-level
    contrastive loss (stage 2, section 3.3 and appendix A.1).

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    vocab
        Gene vocabulary: a :class:`~cellformers.data.GeneVocab`, a reference name (``"scfoundation-19264"``) or
        ``None`` to build it from ``adata.var_names``. Genes outside the vocabulary are ignored (their imputed
        values are NaN).
    preset
        Architecture preset, see ``cellformers.model.SCPALM_PRESETS``: ``"paper"`` (Table 2: 6 layers, width 256, 8 heads,
        feed-forward 1024, N = 256, K = 128) or ``"small"`` (2 layers, width 64, 4 heads, N = 64, K = 128).
        Explicit arguments below override it.
    n_hidden
        Transformer and token width.
    n_layers
        Layers of each of the four transformers (two encoders, two decoders).
    n_heads
        Attention heads.
    n_intermediate
        Feed-forward width.
    n_pathway_tokens
        ``N``, tokens made by the embedding.
    n_codes
        ``K``, codebook size.
    dropout_rate
        Dropout of the transformers.
    quantizer
        ``"per_position"`` (default) or ``"paper"``: the quantizer settings of ``cellformers.model.SCPALM_QUANTIZERS``
        (``vq_codebook``, ``vq_warmup``, ``pre_vq_position`` of :class:`~cellformers.module.ScPaLMModule`;
        explicit ``module_kwargs`` override them). The paper's shared codebook describes the positions rather than
        the cells (a few distinct codes per position on pbmc3k); see the scPaLM user guide for the measurements.
    genes
        Input genes when the vocabulary is built from the data (``vocab=None`` and no
        :func:`~cellformers.pp.map_genes` vocabulary): ``"hvg"`` (default) uses ``adata.var['highly_variable']``,
        or the 2,000 highly variable genes of scanpy's ``seurat`` flavour when that column is missing and the data
        has more genes; ``"all"`` uses every gene. From scratch, the per-gene means explain most of an all-gene
        reconstruction error and stage 1 does not learn (see the user guide). Library sizes are always taken over
        all genes; other genes are outside the vocabulary (NaN in imputations).
    stage2
        ``"bottleneck"`` (default) or ``"paper"``: the stage-2 settings of ``cellformers.model.SCPALM_STAGE2``
        (``cell_decoder_input``, ``contrastive`` of :class:`~cellformers.module.ScPaLMModule`; explicit
        ``module_kwargs`` override them). ``"bottleneck"`` reconstructs the left-out pathway tokens' genes from
        ``h_C`` alone, without the contrastive loss: from scratch it is what makes ``h_C`` carry the cell (see the
        user guide for the measurements); ``"paper"`` is section 3.3 as written.
    **module_kwargs
        Passed to :class:`~cellformers.module.ScPaLMModule` (pooling, VQ and contrastive options, ``keep_ratio``, …).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScPaLM.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.ScPaLM(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)  # stage 1, then stage 2
    >>> adata.obsm["X_scpalm"] = model.get_latent_representation()
    >>> adata.obsm["X_scpalm"].shape
    (100, 16)
    >>> model.get_codebook_usage()["n_codes"]  # one codebook of 16 codes for each of the 8 positions
    128
    >>> model.get_codebook_statistics()["n_codes"]
    16
    >>> pathways = model.get_pathway_genes(n_genes=3)  # top genes of each code used
    >>> list(pathways.columns[:3])
    ['gene_1', 'gene_2', 'gene_3']

    Notes
    -----
    Training runs in two stages (appendix B.1: AdamW, lr ``1e-3`` then ``5e-4``, batch 128); ``train()`` runs both,
    ``train(stage=1)`` / ``train(stage=2)`` one. See :meth:`train`.
    """

    _model_name: ClassVar[str] = "scpalm"
    # what `train` compares the validation pretext loss with, and what to try when it does not beat it
    _trivial_name: ClassVar[str] = "each gene's mean normalized expression over the training cells"
    _trivial_hint: ClassVar[str] = (
        "For scPaLM from scratch: train on highly variable genes (on all genes the per-gene means explain most of the error)."
    )
    _module_cls = ScPaLMModule
    _training_plan_cls = ScPaLMTrainingPlan
    # models saved before `stage2` existed trained the paper's stage 2
    _defaults_before: ClassVar[dict[str, object]] = {"stage2": "paper"}

    def __init__(
        self,
        adata: AnnData,
        vocab: GeneVocab | str | dict | None = None,
        preset: Literal["paper", "small", "tiny"] = "paper",
        n_hidden: int | None = None,
        n_layers: int | None = None,
        n_heads: int | None = None,
        n_intermediate: int | None = None,
        n_pathway_tokens: int | None = None,
        n_codes: int | None = None,
        dropout_rate: float | None = None,
        quantizer: Literal["per_position", "paper"] = "per_position",
        genes: Literal["hvg", "all"] = "hvg",
        stage2: Literal["bottleneck", "paper"] = "bottleneck",
        **module_kwargs,
    ):
        super().__init__(adata)
        if quantizer not in SCPALM_QUANTIZERS:
            msg = f"`quantizer` must be one of {sorted(SCPALM_QUANTIZERS)}, got {quantizer!r}."
            raise ValueError(msg)
        if stage2 not in SCPALM_STAGE2:
            msg = f"`stage2` must be one of {sorted(SCPALM_STAGE2)}, got {stage2!r}."
            raise ValueError(msg)
        if genes not in ("hvg", "all"):
            msg = f"`genes` must be 'hvg' or 'all', got {genes!r}."
            raise ValueError(msg)
        explicit = {
            "n_hidden": n_hidden,
            "n_layers": n_layers,
            "n_heads": n_heads,
            "n_intermediate": n_intermediate,
            "n_pathway_tokens": n_pathway_tokens,
            "n_codes": n_codes,
            "dropout_rate": dropout_rate,
        }
        config = preset_config("ScPaLM", SCPALM_PRESETS, preset, explicit)
        config.update(SCPALM_QUANTIZERS[quantizer])
        config.update(SCPALM_STAGE2[stage2])
        # module_kwargs win over the preset (they are saved as given, so `load` rebuilds the same module)
        config.update(module_kwargs)
        if vocab is None and genes == "hvg":
            vocab = _hvg_vocab(self.adata, self._gene_mapping_key)
        gene_vocab, gene_token_ids = self._resolve_vocab(self.adata, vocab)
        self.vocab = gene_vocab
        self.module = self._module_cls(
            gene_token_ids=gene_token_ids,
            n_tokens=len(gene_vocab),
            n_output_genes=gene_vocab.n_genes,
            **config,
        )
        self.module.init_output_bias(torch.from_numpy(self._gene_means()))
        self._model_summary_string = (
            f"ScPaLM model with {config['n_layers']} layers per transformer, width {config['n_hidden']}, "
            f"{config['n_heads']} heads, N={config['n_pathway_tokens']} pathway tokens, K={config['n_codes']} codes, "
            f"{self.module.n_genes} of {self.summary_stats.n_vars} genes in the vocabulary."
        )
        self.init_params_ = self._get_init_params(locals())

    def _gene_means(self, chunk_size: int = 4096) -> np.ndarray:
        """Mean ``log1p(counts / library * library_size)`` of each vocabulary gene over the registered cells.

        Used to initialise the decoders' per-gene output biases (the per-gene mean is then not learned from zero
        through shared weights, which takes hundreds of optimiser steps).
        """
        from scipy import sparse

        x = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        cols = self.module.input_columns.cpu().numpy()
        total = np.zeros(cols.size)
        scale = self.module.library_size
        for start in range(0, x.shape[0], chunk_size):
            block = x[start : start + chunk_size]
            block = sparse.csr_matrix(block, dtype=np.float64)
            lib = np.asarray(block.sum(1)).ravel()
            block = sparse.diags(np.divide(scale, lib, out=np.zeros_like(lib), where=lib > 0)) @ block
            block = sparse.csr_matrix(block)
            block.data = np.log1p(block.data)
            total += np.asarray(block[:, cols].sum(0)).ravel()
        return (total / max(1, x.shape[0])).astype(np.float32)

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
    ) -> None:
        """%(summary)s.

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
        stage: Literal[1, 2] | None = None,
        max_epochs_stage2: int | None = None,
        lr: float | None = None,
        **kwargs,
    ) -> None:
        """Train stage 1 (pathway learning), stage 2 (cell aggregation), or both in turn.

        The parameters up to ``resume`` are those of every model's ``train``
        (:meth:`~cellformers.model.CellformersModel.train`), in the same order; scPaLM's own follow.

        Parameters
        ----------
        max_epochs
            Epochs of the stage (of stage 1 when ``stage=None``). ``None``: scvi-tools' heuristic capped at 100.
        batch_size
            Minibatch size; ``None``: 128 (appendix B.1), or less when the memory estimate says 128 will not fit
            (see :meth:`~cellformers.model.CellformersModel.train`).
        train_size
            Fraction of the cells used for training, the rest for validation; ``None``: scvi-tools' 0.9.
        validation_size
            Fraction of the cells used for validation; ``None``: the rest after ``train_size``.
        accelerator
            ``"cpu"``, ``"gpu"``, ``"mps"`` or ``"auto"``.
        devices
            Devices to train on (Lightning's ``devices``).
        precision
            Lightning precision; ``None``: :attr:`cellformers.settings.precision`.
        early_stopping
            Stop a stage when its validation loss stops improving (scvi-tools' early stopping).
        check_val_every_n_epoch
            Validation frequency (every epoch by default).
        enable_progress_bar
            Show Lightning's progress bar; ``None``: :attr:`cellformers.settings.progress_bar`.
        plan_kwargs
            Passed to :class:`~cellformers.train.ScPaLMTrainingPlan` (schedule, weight decay, …).
        datasplitter_kwargs
            Passed to scvi-tools' data splitter.
        checkpoint_dir
            Directory of a per-epoch Lightning checkpoint per stage (see
            :meth:`~cellformers.model.CellformersModel.train`).
        resume
            Continue from the checkpoint in ``checkpoint_dir``.
        stage
            ``1``, ``2`` or ``None`` for both (stage 1, then stage 2 with the stage-1 parts frozen).
        max_epochs_stage2
            With ``stage=None``: epochs of stage 2 (``None``: the same as ``max_epochs``).
        lr
            Learning rate of every stage run by this call; ``None`` uses the paper's (``1e-3`` for stage 1,
            ``5e-4`` for stage 2).
        **kwargs
            Other :class:`lightning.pytorch.Trainer` options (``callbacks``, ``gradient_clip_val``, …).
        """
        if stage not in (None, 1, 2):
            msg = f"`stage` must be 1, 2 or None (both), got {stage!r}."
            raise ValueError(msg)
        if stage == 2 and not bool(self.module.trained_stages[0]):
            msg = "`stage=2` needs a trained stage 1: call `train(stage=1)` (or `train()` for both) first."
            raise ValueError(msg)
        if max_epochs is None:
            from scvi.model._utils import get_max_epochs_heuristic

            max_epochs = min(100, get_max_epochs_heuristic(self.adata.n_obs))
        stages = (1, 2) if stage is None else (stage,)
        for s in stages:
            epochs = max_epochs_stage2 if (s == 2 and stage is None and max_epochs_stage2 is not None) else max_epochs
            pk = dict(plan_kwargs or {})
            pk["stage"] = s
            if lr is not None:
                pk["lr"] = lr
            logger.info(f"scPaLM stage {s}: {epochs} epochs")
            previous = dict(self.history_) if isinstance(self.history_, dict) else None
            # Lightning keeps the modules' train/eval mode at the start of `fit`; the plan enforces it again
            self.module.set_stage(s)
            self.module.train()
            super().train(
                max_epochs=epochs,
                batch_size=batch_size,
                train_size=train_size,
                validation_size=validation_size,
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                early_stopping=early_stopping,
                check_val_every_n_epoch=check_val_every_n_epoch,
                enable_progress_bar=enable_progress_bar,
                plan_kwargs=pk,
                datasplitter_kwargs=datasplitter_kwargs,
                checkpoint_dir=checkpoint_dir,
                resume=resume,
                **kwargs,
            )
            self._merge_history(previous)
            self._keep_stage_history(s, previous)
            self.module.trained_stages[s - 1] = True
        self.module.set_stage(1 if stage is None else stages[-1])
        self.module.eval()

    def _keep_stage_history(self, stage: int, previous: dict | None) -> None:
        """Copy this stage's epochs of the pretext / trivial losses to ``stage<s>_<key>``.

        Both stages log ``pretext_loss_validation`` (and its trivial baseline); scvi-tools appends the second run's
        epochs to the first's, so the stage-1 reconstruction is read from ``stage1_pretext_loss_validation``.
        """
        if not isinstance(self.history_, dict):
            return
        for key in ("pretext_loss_validation", "trivial_loss_validation", "trivial_ratio_validation"):
            frame = self.history_.get(key)
            if frame is None:
                continue
            before = len(previous[key]) if previous and key in previous else 0
            self.history_[f"stage{stage}_{key}"] = frame.iloc[before:].rename(columns=lambda c: f"stage{stage}_{c}")

    def _merge_history(self, previous: dict | None) -> None:
        """Keep metrics that exist in only one stage (scvi-tools keeps only the keys of the first run)."""
        logger_ = getattr(getattr(self, "trainer", None), "logger", None)
        new = getattr(logger_, "history", None)
        if previous is None or not isinstance(new, dict) or not isinstance(self.history_, dict):
            return
        for key, value in new.items():
            if key not in self.history_:
                self.history_[key] = value

    # ------------------------------------------------------------------ checks
    def _check_annotation_ready(self) -> None:
        """Fine-tuning reads ``h_C``, the output of the stage-2 encoder."""
        self._require_stage(2, "Fine-tuning a cell-type classifier (on h_C)")

    def _require_stage(self, stage: int, what: str) -> None:
        self._check_if_trained(warn=False)
        if not bool(self.module.trained_stages[stage - 1]):
            msg = f"{what} needs a trained stage {stage}: call `train(stage={stage})` (or `train()`) first."
            raise ValueError(msg)

    # ------------------------------------------------------------------ getters
    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        representation: Literal["cell", "mean", "concat"] = "cell",
        n_subsets: int | None = None,
        precision: str | None = None,
    ) -> np.ndarray:
        """Cell embeddings.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells to embed; ``None`` for all.
        batch_size
            Minibatch size for inference.
        representation
            ``"cell"``: ``h_C``, the cell token of the stage-2 encoder over all ``N`` pathway tokens (``n_hidden``
            wide; section 3.3). ``"mean"``: the mean of the quantized pathway tokens (``n_hidden`` wide).
            ``"concat"``: all quantized pathway tokens concatenated (``N × n_hidden`` wide, large). These are the
            variants of Table 6; ``"mean"`` and ``"concat"`` only need stage 1.
        n_subsets
            With ``representation="cell"``: ``None`` reads ``h_C`` over all ``N`` tokens (the paper); an integer
            averages ``h_C`` over that many random subsets of ``keep_ratio * N`` tokens, the number the stage-2
            encoder sees in training (seeded per cell, so reproducible).
        precision
            ``"bf16"`` or ``"16"`` to run under autocast, ``"int8"`` (CPU) for dynamically quantized transformer
            blocks' ``Linear`` layers (int8 dynamic quantization).

        Returns
        -------
        Array of shape ``(n_cells, n_hidden)`` (``(n_cells, N * n_hidden)`` for ``"concat"``).
        """
        if representation == "cell":
            self._require_stage(2, "`representation='cell'`")
            fn = lambda t: self.module.get_cell_embedding(
                t[REGISTRY_KEYS.X_KEY].to(self.device), n_subsets=n_subsets, cell_seeds=t[REGISTRY_KEYS_CF.CELL_SEED]
            )
        elif representation in ("mean", "concat"):
            self._require_stage(1, f"`representation={representation!r}`")

            def fn(t):
                z, _ = self.module.get_pathway_tokens(t[REGISTRY_KEYS.X_KEY].to(self.device))
                return z.mean(1) if representation == "mean" else z.flatten(1)
        else:
            msg = f"`representation` must be 'cell', 'mean' or 'concat', got {representation!r}."
            raise ValueError(msg)
        return self._predict_batches(fn, adata, indices, batch_size, precision)

    @torch.inference_mode()
    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        decoder: Literal["pathway", "cell"] = "pathway",
        precision: str | None = None,
    ) -> np.ndarray:
        """Denoised / imputed expression on the ``log1p`` of counts per 10,000 scale.

        Parameters
        ----------
        adata
            AnnData with the same genes as the registered one; ``None`` uses the registered AnnData.
        indices
            Cells; ``None`` for all.
        batch_size
            Minibatch size for inference.
        decoder
            ``"pathway"``: the stage-1 reconstruction of the expression from the quantized pathway tokens.
            ``"cell"``: the stage-2 decoder; the pathway tokens are split at random (per cell, reproducibly) into
            groups, each group is left out once, and each gene is read from the pass where its token was left out.
        precision
            ``"bf16"`` or ``"16"`` to run under autocast.

        Returns
        -------
        Array ``(n_cells, n_vars)``, clipped at 0; NaN in the columns of genes outside the vocabulary.
        """
        if decoder not in ("pathway", "cell"):
            msg = f"`decoder` must be 'pathway' or 'cell', got {decoder!r}."
            raise ValueError(msg)
        self._require_stage(1 if decoder == "pathway" else 2, f"`decoder={decoder!r}`")
        return self._imputed(adata, indices, batch_size, precision, decoder=decoder)

    def get_gene_embeddings(self) -> pd.DataFrame:
        """The learnable gene embeddings ``E_gene`` of the embedding layer, for the registered genes in the vocab.

        Returns
        -------
        DataFrame ``(n_genes_in_vocab, n_gene_embedding)`` indexed by gene name.
        """
        return self._gene_table(self.module.embedding.gene_embedding.weight[self.module.input_gene_ids])


def _hvg_vocab(adata: AnnData, mapping_key: str | None = None, n_top_genes: int = 2000) -> GeneVocab | None:
    """Vocabulary of the highly variable genes of ``adata`` (``None``: every gene, or a map_genes vocabulary)."""
    from cellformers.data import GeneVocab
    from cellformers.model.base._vocab import mapped_vocab_name

    if mapped_vocab_name(adata, mapping_key) is not None:
        return None
    if "highly_variable" in adata.var.columns:
        mask = adata.var["highly_variable"].to_numpy(dtype=bool)
        source = "adata.var['highly_variable']"
    elif adata.n_vars > n_top_genes:
        import scanpy as sc

        norm = sc.AnnData(adata.X.copy(), var=adata.var[[]].copy())
        sc.pp.normalize_total(norm, target_sum=1e4)
        sc.pp.log1p(norm)
        sc.pp.highly_variable_genes(norm, n_top_genes=n_top_genes, flavor="seurat")
        mask = norm.var["highly_variable"].to_numpy(dtype=bool)
        source = f"the {n_top_genes} highly variable genes (scanpy, flavor='seurat')"
    else:
        return None
    if not mask.any():
        return None
    logger.info(f"scPaLM input: {int(mask.sum())} genes from {source} (pass genes='all' for every gene)")
    return GeneVocab.from_adata(adata[:, mask])
