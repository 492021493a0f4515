"""xTrimoGene: asymmetric encoder-decoder transformer for scRNA-seq :cite:p:`Gong23`."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from scvi import REGISTRY_KEYS
from scvi.data import AnnDataManager
from scvi.utils import setup_anndata_dsp

from cellformers._constants import MODULE_KEYS
from cellformers.model.base import CellformersModel
from cellformers.model.base._presets import preset_config
from cellformers.module import XTrimoGeneModule

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

__all__ = ["XTRIMOGENE_PRESETS", "XTrimoGene"]

Preset = Literal["tiny", "3M", "10M", "100M"]

#: App. Table 2 of :cite:p:`Gong23` (depth, heads, width of encoder and decoder). The paper does not give the
#: feed-forward widths: ``4 x width`` for the 10M model reproduces its 9.8M parameters of Table 1 exactly; the 3M
#: model uses ``2 x width`` and the 100M decoder ``2 x width`` (encoder ``4 x width`` = scFoundation's 3,072) so that
#: the parameter counts with 19,264 genes land within 15% of the names (3.3M, 9.9M, 113M).
XTRIMOGENE_PRESETS: dict[str, dict[str, int]] = {
    # one layer of width 16 (8 in the decoder): for examples and tests, not for learning
    "tiny": {
        "encoder_layers": 1,
        "encoder_heads": 2,
        "encoder_dim": 16,
        "encoder_ff": 32,
        "decoder_layers": 1,
        "decoder_heads": 2,
        "decoder_dim": 8,
        "decoder_ff": 16,
    },
    "3M": {
        "encoder_layers": 4,
        "encoder_heads": 2,
        "encoder_dim": 128,
        "encoder_ff": 256,
        "decoder_layers": 2,
        "decoder_heads": 2,
        "decoder_dim": 128,
        "decoder_ff": 256,
    },
    "10M": {
        "encoder_layers": 4,
        "encoder_heads": 8,
        "encoder_dim": 256,
        "encoder_ff": 1024,
        "decoder_layers": 2,
        "decoder_heads": 4,
        "decoder_dim": 256,
        "decoder_ff": 1024,
    },
    "100M": {
        "encoder_layers": 12,
        "encoder_heads": 12,
        "encoder_dim": 768,
        "encoder_ff": 3072,
        "decoder_layers": 6,
        "decoder_heads": 8,
        "decoder_dim": 512,
        "decoder_ff": 1024,
    },
}
Pooling = Literal["max", "mean", "weighted", "decoder", "all"]

# per-cell sufficient statistics of the masked-recovery evaluation (one row per cell)
_STAT_COLUMNS = (
    "n",
    "sp",
    "st",
    "spp",
    "stt",
    "spt",
    "n_nz",
    "sp_nz",
    "st_nz",
    "spp_nz",
    "stt_nz",
    "spt_nz",
    "zero_fraction",
)


class XTrimoGene(CellformersModel):
    """xTrimoGene :cite:p:`Gong23`.

    An asymmetric encoder-decoder transformer trained to recover masked expression values. The encoder (full
    attention) sees only the unmasked non-zero genes of each cell (about a tenth of the genes); a light Performer
    decoder runs over all genes and predicts the masked ones, zero or not. Expression values are embedded by
    auto-discretization (soft assignment to 100 learned bins). See :class:`~cellformers.module.XTrimoGeneModule`
    for the forward pass and every option.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata` (raw counts).
    vocab
        Gene vocabulary: a :class:`~cellformers.data.GeneVocab`, a reference name (e.g. ``"scfoundation-19264"``,
        xTrimoGene's gene list) or ``None`` to build one from ``adata.var_names``.
    preset
        Model size of App. Table 2: ``"3M"``, ``"10M"`` or ``"100M"`` (depth, heads and widths of encoder and
        decoder; see :data:`~cellformers.model.XTRIMOGENE_PRESETS`), or ``"tiny"`` (one layer of width 16, for
        examples and tests).
    **module_kwargs
        Override preset values or set other options of :class:`~cellformers.module.XTrimoGeneModule`
        (e.g. ``encoder_dim=64``, ``mask_strategy="rate"``, ``value_embedding="round"``).

    Examples
    --------
    The ``"tiny"`` preset (keyword arguments override any preset):

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.XTrimoGene.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.XTrimoGene(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> adata.obsm["X_xtrimogene"] = model.get_latent_representation()
    >>> adata.obsm["X_xtrimogene"].shape
    (100, 16)
    >>> model.get_imputed_expression().shape
    (100, 50)
    """

    _model_name: ClassVar[str] = "xtrimogene"
    # what `train` compares the validation pretext loss with, and what to try when it does not beat it
    _trivial_name: ClassVar[str] = "each gene's mean over the masked training positions"
    _trivial_hint: ClassVar[str] = (
        "For xTrimoGene from scratch on a CPU: a wider encoder (encoder_dim=128), more optimiser steps with warm-up and a cosine schedule (plan_kwargs), and more cells."
    )
    _module_cls = XTrimoGeneModule
    # the encoder length is the number of expressed genes: batch cells of similar length for inference
    _sort_inference_by_length: ClassVar[bool] = True

    @property
    def _inference_length_cap(self) -> int | None:
        return self.module.max_encoder_length

    def __init__(
        self,
        adata: AnnData | None = None,
        vocab: GeneVocab | str | dict | None = None,
        preset: Preset = "10M",
        **module_kwargs,
    ):
        super().__init__(adata)
        params = preset_config("XTrimoGene", XTRIMOGENE_PRESETS, preset, module_kwargs)
        if adata is None:
            msg = "`adata` is required: XTrimoGene builds its gene embedding table from the registered genes."
            raise ValueError(msg)
        vocab, gene_token_ids = self._resolve_vocab(adata, vocab)
        self.module = self._module_cls(gene_token_ids, len(vocab), **params)
        self.vocab = vocab
        if params.get("value_embedding") == "equalbin":
            self._fit_equal_bins(adata)
        m = self.module
        n_params = sum(p.numel() for p in m.parameters())
        self._model_summary_string = (
            f"XTrimoGene model ({preset} preset): encoder {len(m.encoder.layers)} x {m.encoder_dim} "
            f"({m.encoder.layers[0].attn.n_heads} heads, full attention), Performer decoder "
            f"{len(m.decoder.layers)} x {m.decoder_dim} ({m.decoder.layers[0].attn.n_heads} heads), "
            f"{m.n_genes} genes, mask_strategy: {m.mask_strategy}, parameters: {n_params / 1e6:.2f}M"
        )
        self.init_params_ = self._get_init_params(locals())

    @torch.no_grad()
    def _fit_equal_bins(self, adata: AnnData, n_cells: int = 2000) -> None:
        """Quantile edges of the ``"equalbin"`` value embedding from (up to ``n_cells``) registered cells."""
        idx = np.arange(min(adata.n_obs, n_cells))
        vals = []
        for tensors in self._make_data_loader(adata=adata, indices=idx, batch_size=256):
            v, _ = self.module.normalize(tensors[REGISTRY_KEYS.X_KEY])
            vals.append(v[v > 0])
        if vals:
            self.module.value_embedding.fit(torch.cat(vals))

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

        Raw counts are required (the model normalizes them itself, App. 1); a per-cell seed column is added to
        ``adata.obs`` so evaluation masks are reproducible.

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

    # ------------------------------------------------------------------ getters
    def _inference(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict[str, torch.Tensor]:
        return self.module.inference(**self.module._get_inference_input(tensors), **kwargs)

    @torch.inference_mode()
    def get_latent_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
        pooling: Pooling = "max",
        target_depth: float | None = None,
        max_encoder_length: int | None = None,
    ) -> np.ndarray:
        """Cell embeddings from the encoder alone (the decoder is not run).

        All non-zero genes of each cell go through the encoder (no masking); the gene tokens are pooled with padding
        excluded (App. 4: max pooling).

        Bulk RNA-seq (section 5.4.3) has almost every gene non-zero, so a sample is ~19,000 encoder tokens against
        a few hundred to a few thousand for a cell, and full attention costs ``O(length²)`` time (and memory where
        no fused attention kernel applies). ``max_encoder_length`` caps the encoder input at the most highly
        expressed genes of each sample: cost ``O(cap²)``, at the price of ignoring the weakest genes in the
        embedding (they are the least informative and the least reliably measured; a cap of 2,000-4,000 keeps
        the length within what the encoder saw in pre-training on single cells).

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to embed; ``None`` for all.
        batch_size
            Minibatch size (default 128).
        precision
            ``"bf16"`` (or ``"bf16-mixed"``) for autocast, ``None``/``"32"`` for float32, ``"int8"`` (CPU) for
            int8 dynamic quantization of the transformer blocks' ``Linear`` layers.
        pooling
            ``"max"`` (App. 4), ``"mean"``, ``"weighted"`` (mean of the gene tokens weighted by their normalized
            expression), ``"decoder"`` (mean of the decoder's per-gene outputs over all genes: unlike the encoder,
            the decoder sees which genes are zero), or ``"all"``: ``[S, T,] max, mean`` concatenated (scFoundation).
        target_depth
            Only with ``read_depth_tokens=True``: total count used for the ``T`` token (``None``: the cell's own).
        max_encoder_length
            Keep at most this many (the most highly expressed) non-zero genes per cell in the encoder; ``None``
            uses the module's ``max_encoder_length`` (no cap by default).

        Returns
        -------
        Array of shape ``(n_cells, encoder_dim)`` (``"all"``: 2 or 4 times wider).
        """
        return self._predict_batches(
            lambda t: self._inference(
                t,
                apply_mask=False,
                pooling=pooling,
                target_depth=target_depth,
                max_encoder_length=max_encoder_length,
            )[MODULE_KEYS.CELL_EMBEDDING],
            adata,
            indices,
            batch_size,
            precision,
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
        layer: Literal["decoder", "encoder"] = "decoder",
        max_encoder_length: int | None = None,
    ) -> np.ndarray:
        """Per-gene context embeddings: what the paper feeds GEARS and DeepDDS in place of expression (App. 8.2-8.3).

        Nothing is masked. ``layer="decoder"`` (default) gives the decoder's output at every gene, the intermediate
        representation from which the expression head predicts that gene, so each gene has an embedding that
        depends on the whole cell, zero-count genes included. ``layer="encoder"`` gives the encoder's output of
        each non-zero gene (zero vectors for the genes the encoder does not see). See
        :meth:`~cellformers.module.XTrimoGeneModule.context_embedding`.

        The result takes ``n_cells x n_genes x d x 4`` bytes (e.g. 1,000 cells x 19,264 genes x 256 = 19.7 GB):
        select genes with ``genes``, cells with ``indices``, or stream to disk with
        :func:`cellformers.tl.context_embedding`.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to embed; ``None`` for all.
        genes
            Gene names (among ``model.get_var_names()``, in the vocabulary) to return, in this order; ``None`` for
            every gene of the model in the vocabulary. The decoder always runs over all genes (the context).
        batch_size
            Minibatch size (default 128).
        precision
            ``"bf16"`` for autocast, ``None`` for float32.
        layer
            ``"decoder"`` (``decoder_dim`` wide) or ``"encoder"`` (``encoder_dim`` wide).
        max_encoder_length
            As in :meth:`get_latent_representation` (bulk samples).

        Returns
        -------
        Float32 array ``(n_cells, n_genes_selected, d)``.

        Examples
        --------
        >>> import cellformers as cf
        >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
        >>> cf.model.XTrimoGene.setup_anndata(adata)
        >>> model = cf.model.XTrimoGene(adata, preset="tiny")
        >>> model.train(max_epochs=1, enable_progress_bar=False)
        >>> model.get_context_embedding().shape
        (60, 30, 8)
        >>> model.get_context_embedding(genes=adata.var_names[:3], layer="encoder").shape
        (60, 3, 16)
        """
        from cellformers.model.base._context import context_genes

        positions, _ = context_genes(self, genes)
        select = torch.as_tensor(positions)
        return self._predict_batches(
            lambda t: self.module.context_embedding(
                **self.module._get_inference_input(t),
                layer=layer,
                genes=select,
                max_encoder_length=max_encoder_length,
            ),
            adata,
            indices,
            batch_size,
            precision,
        )

    @torch.inference_mode()
    def get_imputed_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        precision: str | None = None,
        mode: Literal["masked", "visible"] = "masked",
        n_passes: int | None = None,
        zero_groups: int | Literal["training"] | None = None,
    ) -> np.ndarray:
        """Decoder predictions for every gene, on the ``log1p(x / Σx · 1e4)`` scale.

        By default (``mode="masked"``) every gene is predicted at a position the decoder saw as ``[MASK]``, the
        positions the training loss covers: all zero-count genes are masked together (the encoder never sees them),
        the non-zero genes in ``n_passes`` groups (see :meth:`~cellformers.module.XTrimoGeneModule.impute`).
        ``mode="visible"`` runs one pass with nothing masked and reads the decoder where it was shown the gene;
        with the paper's ``mask_replacement=(1, 0, 0)`` those positions never enter the loss, so that output is
        untrained.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to impute; ``None`` for all.
        batch_size
            Minibatch size (default 128).
        precision
            ``"bf16"`` for autocast, ``None`` for float32.
        mode
            ``"masked"`` or ``"visible"`` (see above).
        n_passes
            Decoder passes of ``"masked"``; ``None``: ``ceil(1 / mask_ratio)``.
        zero_groups
            ``None``: every zero-count gene is ``[MASK]`` in every pass; an integer or ``"training"``: the zero genes
            are hidden a group at a time, the rest shown as zeros, so a pass looks like a training mask (more
            decoder passes; see :meth:`~cellformers.module.XTrimoGeneModule.impute`).

        Returns
        -------
        Array of shape ``(n_cells, n_vars)``; NaN in the columns of genes outside the vocabulary.
        """
        return self._imputed(
            adata, indices, batch_size, precision, mode=mode, n_passes=n_passes, zero_groups=zero_groups
        )

    def get_gene_embeddings(self) -> pd.DataFrame:
        """Learned (context-free) gene embeddings of the registered genes that are in the vocabulary.

        Returns
        -------
        DataFrame of shape ``(n_genes_in_vocab, encoder_dim)`` indexed by gene name.
        """
        m = self.module
        with torch.no_grad():
            return self._gene_table(m.gene_embedding.weight[m.input_gene_ids])

    @torch.inference_mode()
    def evaluate_masked_recovery(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        *,
        mask_ratio: float | None = None,
        n_groups: int = 4,
        precision: str | None = None,
    ) -> pd.DataFrame:
        """Pearson correlation between predicted and true values on masked positions (section 5.3, Fig. 3A).

        Masks are drawn per cell from its seed (:func:`~cellformers._utils.counter_uniform`), so the result does not
        depend on batch size or cell order and is reproducible. Correlations pool all masked positions of a group's
        cells: overall, per sparsity group (quantile bins of the cells' fraction of zero genes) and, when
        ``labels_key`` was registered, per cell type.

        Parameters
        ----------
        adata
            AnnData set up like the training data; ``None`` uses the model's.
        indices
            Cells to evaluate (e.g. held-out cells); ``None`` for all.
        batch_size
            Minibatch size (default 128).
        mask_ratio
            Fraction of non-zero genes masked; ``None`` uses the model's ``mask_ratio``.
        n_groups
            Number of sparsity groups.
        precision
            ``"bf16"`` for autocast, ``None`` for float32.

        Returns
        -------
        DataFrame with one row per group and columns ``group_type`` (``"all"``, ``"sparsity"``, ``"cell_type"``),
        ``group``, ``n_cells``, ``sparsity`` (mean zero fraction), ``n_masked``, ``pearson`` (all masked
        positions), ``mse``, ``n_masked_nonzero`` and ``pearson_nonzero`` (masked non-zero positions only).
        """

        def fn(tensors):
            inf = self._inference(tensors, apply_mask=True, mask_ratio=mask_ratio)
            gen = self.module.generative(**self.module._get_generative_input(tensors, inf))
            p = gen[MODULE_KEYS.PREDICTION].double()
            t = inf[MODULE_KEYS.TARGET].double()
            m = inf[MODULE_KEYS.MASK].double()
            nz = m * (t > 0)
            zero_frac = (t <= 0).double().mean(-1)
            cols = []
            for w in (m, nz):
                cols += [w.sum(-1), (w * p).sum(-1), (w * t).sum(-1)]
                cols += [(w * p * p).sum(-1), (w * t * t).sum(-1), (w * p * t).sum(-1)]
            return torch.stack([*cols, zero_frac], -1)

        stats = self._predict_batches(fn, adata, indices, batch_size, precision)
        df = pd.DataFrame(stats.astype(np.float64), columns=list(_STAT_COLUMNS))
        adata = self._validate_anndata(adata)
        obs_idx = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        rows = [_recovery_row("all", "all", df)]
        if len(df) and n_groups > 0:
            q = pd.qcut(df["zero_fraction"], q=n_groups, duplicates="drop")
            for interval in q.cat.categories:
                sel = df[q == interval]
                label = f"{interval.left:.3f}-{interval.right:.3f}"
                rows.append(_recovery_row("sparsity", label, sel))
        labels_key = self.adata_manager.registry["setup_args"].get("labels_key")
        if labels_key is not None:
            labels = adata.obs[labels_key].to_numpy()[obs_idx]
            for lab in pd.unique(labels):
                rows.append(_recovery_row("cell_type", str(lab), df[labels == lab]))
        return pd.DataFrame(rows)


def _pearson(n, sp, st, spp, stt, spt) -> float:
    if n < 2:
        return float("nan")
    cov = spt - sp * st / n
    vp = spp - sp * sp / n
    vt = stt - st * st / n
    if vp <= 0 or vt <= 0:
        return float("nan")
    return float(cov / np.sqrt(vp * vt))


def _recovery_row(group_type: str, group: str, df: pd.DataFrame) -> dict:
    s = df.sum(numeric_only=True)
    n = s.get("n", 0.0)
    mse = (s.get("spp", 0.0) - 2 * s.get("spt", 0.0) + s.get("stt", 0.0)) / n if n > 0 else float("nan")
    return {
        "group_type": group_type,
        "group": group,
        "n_cells": len(df),
        "sparsity": float(df["zero_fraction"].mean()) if len(df) else float("nan"),
        "n_masked": int(n),
        "pearson": _pearson(n, s["sp"], s["st"], s["spp"], s["stt"], s["spt"]) if len(df) else float("nan"),
        "mse": float(mse),
        "n_masked_nonzero": int(s.get("n_nz", 0.0)),
        "pearson_nonzero": _pearson(s["n_nz"], s["sp_nz"], s["st_nz"], s["spp_nz"], s["stt_nz"], s["spt_nz"])
        if len(df)
        else float("nan"),
    }
