"""scFormer module: binned gene-value tokens, a transformer encoder and the MGM/MVC/ECS/DAR task heads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
from cellformers.nn import (
    AdversarialDiscriminator,
    CategoricalValueEncoder,
    ContinuousValueEncoder,
    DomainSpecificBatchNorm1d,
    ElasticCellSimilarity,
    ExpressionHead,
    MVCHead,
    TransformerEncoder,
    TrivialBaseline,
)

from ._base import GeneTokenModule, check_choice
from ._scformer_impute import ScFormerImputeMixin
from ._scformer_tokens import SCFORMER_KEYS, ScFormerTokensMixin

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import Tensor

Pooling = Literal["cls", "mean", "weighted"]
ValueEncoder = Literal["continuous", "categorical"]
ValueMode = Literal["binned", "log1p"]
LossKind = Literal["ce", "mse"]

__all__ = ["SCFORMER_KEYS", "ScFormerModule"]


class ScFormerModule(ScFormerTokensMixin, ScFormerImputeMixin, GeneTokenModule):
    """scFormer :cite:p:`Cui22`: tensors in, ``LossOutput`` out.

    Each cell becomes the sequence ``[<cls>, g_1 … g_M]`` of gene tokens with their binned values (eq. 1–3) and
    optional external tokens; the input embedding ``emb_g + emb_x + emb_e`` (eq. 5), optionally passed through
    domain-specific batch norm, goes through stacked transformer blocks (eq. 6). The ``<cls>`` output is the cell
    embedding (section 3.3). Task heads (section 3.4): MGM (eq. 7), MVC (eq. 8), ECS (eq. 9) and DAR (gradient
    reversal); each can be switched off for the ablations of Table 3.

    Parameters
    ----------
    gene_token_ids
        Vocabulary id of each input column (``-1`` for genes outside the vocabulary).
    n_tokens
        Vocabulary size.
    pad_id
        Id of ``<pad>``.
    cls_id
        Id of ``<cls>``.
    n_batch
        Number of sequencing batches (for DSBN, DAR and batch-conditional decoders).
    d_model
        Embedding width (paper 128).
    n_layers
        Transformer blocks (paper 4).
    n_heads
        Attention heads (paper 4).
    d_ff
        Feed-forward width (paper 128).
    dropout_rate
        Dropout in the embeddings, feed-forward layers and residual branches.
    attention_dropout_rate
        Dropout on the attention weights (off by default: it about triples the attention cost on CPU).
    activation
        Feed-forward non-linearity.
    norm_first
        Pre-norm blocks; the default post-norm is the Transformer/BERT layout the paper cites (and scGPT's).
    n_bins
        Value bins including the zero bin (scGPT 51). Fewer bins make the targets coarser: with counts, most
        non-zero values of a cell are 1s and 2s, so many bins split equal values.
    tie_breaking
        How a cell's equal non-zero values are binned (:func:`cellformers.data._binning.bin_cells`): ``"draw"``
        (default, :func:`cellformers.pp.bin_values`' rule: a per-cell draw, the same at every epoch), ``"redraw"``
        (a fresh draw at every training step, per-cell draw in evaluation: no arbitrary order to memorise) or
        ``"average"`` (the bin of the tie group's mean rank: equal values, equal bins; a learnable target).
    value_mode
        ``"binned"``: per-cell equal-frequency bins (eq. 2) as inputs and targets; ``"log1p"``: log1p of
        library-size normalised values (scGPT's perturbation model), which needs ``mgm_loss="mse"``.
    value_encoder
        ``"continuous"`` (paper default, fully connected) or ``"categorical"`` (embedding table over the bins).
    value_scale
        Factor applied to the values entering the continuous encoder. ``None``: ``1 / (n_bins - 1)`` for bins (so
        they span ``[0, 1]``), ``1`` for log1p values; scGPT feeds bin indices unscaled (``1.0``).
    mask_ratio
        Fraction of each cell's sequence whose values are masked (paper 0.4).
    include_zero_genes
        ``True`` (paper: the input is all ``M`` HVGs of the cell): zero-expressed genes are tokens too; ``False``:
        only expressed genes (scGPT's pre-training), much shorter sequences; ``"fill"``: every expressed gene
        (subsampled beyond ``max_length``) plus randomly drawn zero-expressed genes up to ``max_length`` tokens,
        so that MGM and MVC also learn which genes are not expressed at a fraction of the cost of ``True``.
    max_length
        Gene tokens per cell (besides ``<cls>``); longer sequences are subsampled, at random in training and with
        per-cell seeded draws (``cellformers._utils.counter_uniform``) otherwise. ``None`` keeps all.
    pooling
        Cell embedding used by the MVC, ECS and DAR heads: the ``<cls>`` output (paper), the mean of the gene
        outputs, or their mean weighted by the visible input values.
    use_mgm, use_mvc, use_ecs, use_dar, use_dsbn
        Task heads and domain-specific batch norm.
    mgm_loss
        ``"ce"``: cross entropy over the bins (paper eq. 7–8); ``"mse"``: squared error on the bin index (scGPT).
        Applies to MGM and MVC.
    mvc_query
        MVC arch style (:class:`~cellformers.nn.MVCHead`).
    mvc_detach_query
        Detach the gene embeddings in the MVC query (scGPT's ``"inner product, detach"``).
    ecs_beta, ecs_weight, ecs_style, ecs_center
        ECS threshold (paper 0.6), weight (paper 10), form and centring (:class:`~cellformers.nn.ElasticCellSimilarity`).
    dar_weight
        Weight of the batch-discriminator loss.
    grad_reverse_lambda
        Gradient-reversal scale.
    dsbn_affine, dsbn_eps, dsbn_include_padding
        Options of :class:`~cellformers.nn.DomainSpecificBatchNorm1d` (scGPT: no affine, ``eps=6.1e-5``, pads
        included).
    batch_conditional_decoders
        Concatenate a learned batch embedding to the inputs of the MGM and MVC decoders (scGPT's
        ``use_batch_labels``): the decoders explain batch effects so the cell embedding need not carry them.
    n_external
        Number of external token categories (eq. 4; ``0`` disables ``emb_e``). Category ``0`` means "none" and
        is used for ``<cls>`` and padding.
    external_token_ids
        Static external category of each input column (e.g. a pathway id), or ``None``.
    target_sum
        Library size for ``value_mode="log1p"`` and for converting predictions to the log1p scale.
    cls_value
        Input value of the ``<cls>`` token. scGPT's ``tokenize_batch`` (training, fine-tuning) uses ``0``; its
        ``embed_data`` gives ``<cls>`` the pad value ``-2``.

    Examples
    --------
    Models build their module (``model.module``); on its own it maps a minibatch of registered tensors to a loss:

    >>> import numpy as np
    >>> import torch
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=8, n_genes=40, sparse=False)
    >>> tensors = {"X": torch.as_tensor(adata.X), "batch": torch.zeros(8, 1), "cell_seed": torch.arange(8.0)[:, None]}
    >>> module = cf.module.ScFormerModule(
    ...     np.arange(40), n_tokens=43, pad_id=40, cls_id=41, d_model=16, n_layers=1, n_heads=2, d_ff=16
    ... )  # genes have token ids 0..39, then <pad>, <cls> and <mask>
    >>> inference_outputs, generative_outputs, loss = module(tensors)
    >>> sorted(loss.extra_metrics)  # training mode: no trivial baseline yet (it is fitted on training batches)
    ['ecs_loss', 'mgm_loss', 'mvc_loss', 'pretext_loss']
    >>> loss.loss.backward()
    >>> module.cell_embedding(tensors).shape  # the <cls> output
    torch.Size([8, 16])
    """

    def __init__(
        self,
        gene_token_ids: Sequence[int] | np.ndarray,
        n_tokens: int,
        *,
        pad_id: int,
        cls_id: int,
        n_batch: int = 0,
        d_model: int = 128,
        n_layers: int = 4,
        n_heads: int = 4,
        d_ff: int = 128,
        dropout_rate: float = 0.1,
        attention_dropout_rate: float = 0.0,
        activation: Literal["relu", "gelu"] = "relu",
        norm_first: bool = False,
        n_bins: int = 51,
        tie_breaking: Literal["draw", "redraw", "average"] = "draw",
        value_mode: ValueMode = "binned",
        value_encoder: ValueEncoder = "continuous",
        value_scale: float | None = None,
        mask_ratio: float = 0.4,
        include_zero_genes: bool | Literal["fill"] = True,
        max_length: int | None = None,
        pooling: Pooling = "cls",
        use_mgm: bool = True,
        use_mvc: bool = True,
        use_ecs: bool = True,
        use_dar: bool = False,
        use_dsbn: bool = False,
        mgm_loss: LossKind = "ce",
        mvc_query: Literal["inner_product", "concat", "sum"] = "inner_product",
        mvc_detach_query: bool = False,
        ecs_beta: float = 0.6,
        ecs_weight: float = 10.0,
        ecs_style: Literal["paper", "scgpt"] = "paper",
        ecs_center: bool = False,
        dar_weight: float = 1.0,
        grad_reverse_lambda: float = 1.0,
        dsbn_affine: bool = True,
        dsbn_eps: float = 1e-5,
        dsbn_include_padding: bool = False,
        batch_conditional_decoders: bool = False,
        n_external: int = 0,
        external_token_ids: Sequence[int] | np.ndarray | None = None,
        target_sum: float = 1e4,
        cls_value: float = 0.0,
    ):
        super().__init__(gene_token_ids, n_tokens)
        check_choice("value_mode", value_mode, ("binned", "log1p"))
        check_choice("value_encoder", value_encoder, ("continuous", "categorical"))
        check_choice("pooling", pooling, ("cls", "mean", "weighted"))
        check_choice("mgm_loss", mgm_loss, ("ce", "mse"))
        check_choice("activation", activation, ("relu", "gelu"))
        check_choice("tie_breaking", tie_breaking, ("draw", "redraw", "average"))
        if value_mode == "log1p" and (mgm_loss != "mse" or value_encoder != "continuous"):
            msg = "`value_mode='log1p'` predicts continuous values: use `mgm_loss='mse'` and `value_encoder='continuous'`."
            raise ValueError(msg)
        if not 0.0 <= mask_ratio < 1.0:
            msg = f"`mask_ratio` must be in [0, 1), got {mask_ratio}."
            raise ValueError(msg)
        if max_length is not None and max_length < 1:
            msg = f"`max_length` must be a positive integer or None, got {max_length}."
            raise ValueError(msg)
        if include_zero_genes not in (True, False, "fill"):
            msg = f"`include_zero_genes` must be True, False or 'fill', got {include_zero_genes!r}."
            raise ValueError(msg)
        if include_zero_genes == "fill" and max_length is None:
            msg = "`include_zero_genes='fill'` needs `max_length` (the number of tokens to fill up to)."
            raise ValueError(msg)
        if n_bins < 2:
            msg = f"`n_bins` must be >= 2, got {n_bins}."
            raise ValueError(msg)
        needs_batch = use_dar or use_dsbn or batch_conditional_decoders
        if needs_batch and n_batch < 1:
            msg = "DAR, DSBN and batch-conditional decoders need the batch: register `batch_key` in `setup_anndata`."
            raise ValueError(msg)
        self.pad_id, self.cls_id = int(pad_id), int(cls_id)
        self.n_batch = int(n_batch)
        self.d_model = int(d_model)
        self.n_bins = int(n_bins)
        self.tie_breaking = tie_breaking
        self.value_mode = value_mode
        self.mask_ratio = float(mask_ratio)
        self.include_zero_genes = include_zero_genes if include_zero_genes == "fill" else bool(include_zero_genes)
        self.max_length = None if max_length is None else int(max_length)
        self.pooling = pooling
        self.use_mgm, self.use_mvc, self.use_ecs = bool(use_mgm), bool(use_mvc), bool(use_ecs)
        self.use_dar, self.use_dsbn = bool(use_dar), bool(use_dsbn)
        self.mgm_loss = mgm_loss
        self.ecs_weight = float(ecs_weight)
        self.dar_weight = float(dar_weight)
        self.batch_conditional_decoders = bool(batch_conditional_decoders)
        self.target_sum = float(target_sum)
        self.cls_value = float(cls_value)
        self.n_out = self.n_bins if mgm_loss == "ce" else 1
        # per-gene bin marginal (CE) or mean (MSE) of the scored targets: the predictor that ignores the cell
        self.trivial = TrivialBaseline(self.n_genes, self.n_bins if mgm_loss == "ce" else None)

        # ---- input embedding (eq. 5)
        self.gene_embedding = nn.Embedding(n_tokens, d_model, padding_idx=self.pad_id)
        self.gene_norm = nn.LayerNorm(d_model)
        if value_encoder == "continuous":
            scale = (
                value_scale if value_scale is not None else (1.0 / (self.n_bins - 1) if value_mode == "binned" else 1.0)
            )
            self.value_encoder = ContinuousValueEncoder(d_model, dropout_rate=dropout_rate, scale=scale)
        else:
            self.value_encoder = CategoricalValueEncoder(self.n_bins, d_model, dropout_rate=dropout_rate)
        self.n_external = int(n_external)
        self.external_embedding = nn.Embedding(self.n_external, d_model) if self.n_external > 0 else None
        if external_token_ids is not None:
            ext = torch.as_tensor(np.asarray(external_token_ids, dtype=np.int64))
            if ext.numel() != self.n_input_vars:
                msg = f"`external_token_ids` has {ext.numel()} entries, expected one per input column ({self.n_input_vars})."
                raise ValueError(msg)
            if self.n_external < 1 or int(ext.min()) < 0 or int(ext.max()) >= self.n_external:
                msg = f"`external_token_ids` must lie in 0 … n_external-1 (n_external={self.n_external})."
                raise ValueError(msg)
            self.register_buffer("external_token_ids", ext[self.input_columns], persistent=True)
        else:
            self.external_token_ids = None
        self.dsbn = (
            DomainSpecificBatchNorm1d(
                d_model, n_batch, eps=dsbn_eps, affine=dsbn_affine, include_padding=dsbn_include_padding
            )
            if use_dsbn
            else None
        )

        # ---- encoder (eq. 6)
        self.encoder = TransformerEncoder(
            d_model,
            n_layers,
            n_heads,
            d_ff,
            dropout_rate=dropout_rate,
            activation=activation,
            norm_first=norm_first,
            final_norm=norm_first,
            attention_dropout_rate=attention_dropout_rate,
        )

        # ---- task heads (section 3.4)
        d_dec = 2 * d_model if batch_conditional_decoders else d_model
        self.batch_embedding = nn.Embedding(n_batch, d_model) if batch_conditional_decoders else None
        self.mgm_head = ExpressionHead(d_dec, self.n_out, n_hidden=d_model) if use_mgm else None
        self.mvc_head = (
            MVCHead(d_model, d_dec, self.n_out, query=mvc_query, detach_query=mvc_detach_query) if use_mvc else None
        )
        self.ecs = ElasticCellSimilarity(ecs_beta, style=ecs_style, center=ecs_center) if use_ecs else None
        # switched off during an ECS warm-up (see ScFormer.train); the loss is still computed and logged
        self.ecs_active = True
        self.discriminator = (
            AdversarialDiscriminator(d_model, n_batch, lambda_=grad_reverse_lambda) if use_dar else None
        )

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict[str, Tensor | None]:
        batch = tensors.get(REGISTRY_KEYS.BATCH_KEY)
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "cell_seed": tensors[REGISTRY_KEYS_CF.CELL_SEED],
            "batch_index": batch,
        }

    @auto_move_data
    def inference(
        self,
        x: Tensor,
        cell_seed: Tensor,
        batch_index: Tensor | None = None,
        external: Tensor | None = None,
        mask_ratio: float | None = None,
        mask: Tensor | None = None,
        all_genes: bool = False,
        values: Tensor | None = None,
        gene_index: Tensor | None = None,
        forced: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Tokenise, mask and encode a minibatch.

        Parameters
        ----------
        x
            Raw counts ``(B, n_vars)``.
        cell_seed
            Per-cell seeds ``(B, 1)``.
        batch_index
            Batch codes ``(B, 1)``.
        external
            Per-cell external categories of the module's genes, ``(B, n_genes)``.
        mask_ratio
            Overrides the module's mask ratio (``0`` for embeddings).
        mask
            Explicit ``(B, n_genes)`` boolean mask over the module's genes (used by imputation); overrides
            ``mask_ratio``.
        all_genes
            Put every gene in the sequence.
        values
            Precomputed values ``(B, n_genes)`` (skips binning).
        gene_index
            Explicit positions ``(B, L)`` (columns among the module's genes, ``-1`` = padding); skips
            :meth:`tokenize`.
        forced
            Genes :meth:`tokenize` must keep, boolean ``(B, n_genes)``.
        """
        seeds = cell_seed.reshape(-1)
        if values is None:
            values = self.encode_values(x, seeds)
        if gene_index is None:
            gene_index, valid = self.tokenize(values, seeds, all_genes=all_genes, forced=forced)
        else:
            valid = gene_index >= 0
        safe = gene_index.clamp_min(0)
        target = torch.where(valid, torch.gather(values, 1, safe), torch.zeros_like(safe, dtype=values.dtype))
        if mask is not None:
            masked = torch.gather(mask.bool(), 1, safe) & valid
        else:
            ratio = self.mask_ratio if mask_ratio is None else float(mask_ratio)
            masked = self.make_mask(gene_index, valid, seeds, ratio)
        b = values.shape[0]
        tok = torch.where(valid, self.input_gene_ids[safe], torch.full_like(safe, self.pad_id))
        tok = torch.cat([torch.full((b, 1), self.cls_id, device=tok.device, dtype=tok.dtype), tok], 1)
        padding = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=tok.device), ~valid], 1)
        vis = torch.where(masked, torch.zeros_like(target), target)
        in_values = torch.cat([torch.full((b, 1), self.cls_value, device=tok.device, dtype=vis.dtype), vis], 1)
        in_mask = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=tok.device), masked], 1)

        gene_emb = self.gene_norm(self.gene_embedding(tok))
        h = gene_emb + self.value_encoder(in_values, in_mask)
        ext = self._external(gene_index, valid, external)
        if ext is not None:
            ext = torch.cat([torch.zeros(b, 1, dtype=ext.dtype, device=ext.device), ext], 1)
            h = h + self.external_embedding(ext)
        bidx = None if batch_index is None else batch_index.reshape(-1).long()
        if self.dsbn is not None:
            h = self.dsbn(h, bidx, padding)
        out = self.encoder(h, padding)
        genes_out = out[:, 1:]
        cell = self.pool(out, padding, vis, self.pooling)
        return {
            MODULE_KEYS.TOKEN_EMBEDDING: genes_out,
            MODULE_KEYS.CELL_EMBEDDING: cell,
            MODULE_KEYS.PADDING_MASK: ~valid,
            MODULE_KEYS.MASK: masked,
            MODULE_KEYS.TARGET: target,
            SCFORMER_KEYS.GENE_INDEX: gene_index,
            SCFORMER_KEYS.GENE_EMBEDDING: gene_emb[:, 1:],
            SCFORMER_KEYS.VALUES: vis,
            SCFORMER_KEYS.BATCH_INDEX: bidx,
        }

    @staticmethod
    def pool(out: Tensor, padding: Tensor, visible_values: Tensor, pooling: Pooling) -> Tensor:
        """Cell embedding from the encoder output ``(B, 1 + L, d)`` (``<cls>`` first).

        ``"cls"``: the ``<cls>`` row (section 3.3); ``"mean"``: mean of the gene rows; ``"weighted"``: mean of the
        gene rows weighted by their visible (non-negative) input values, falling back to the mean for a cell
        without any.
        """
        if pooling == "cls":
            return out[:, 0]
        genes = out[:, 1:]
        w = (~padding[:, 1:]).to(genes.dtype)
        if pooling == "weighted":
            vw = visible_values.clamp_min(0).to(genes.dtype) * w
            has = vw.sum(1, keepdim=True) > 0
            w = torch.where(has, vw, w)
        w = w / w.sum(1, keepdim=True).clamp_min(1e-6)
        return torch.einsum("bl,bld->bd", w, genes)

    def _get_generative_input(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor], **kwargs):
        return {
            "token_embedding": inference_outputs[MODULE_KEYS.TOKEN_EMBEDDING],
            "cell_embedding": inference_outputs[MODULE_KEYS.CELL_EMBEDDING],
            "gene_embedding": inference_outputs[SCFORMER_KEYS.GENE_EMBEDDING],
            "batch_index": inference_outputs[SCFORMER_KEYS.BATCH_INDEX],
        }

    def generative(
        self,
        token_embedding: Tensor,
        cell_embedding: Tensor,
        gene_embedding: Tensor,
        batch_index: Tensor | None = None,
    ) -> dict[str, Tensor | None]:
        """MGM estimates from the gene outputs and MVC estimates from the cell embedding, ``(B, L, n_out)``."""
        tok_in, cell_in = token_embedding, cell_embedding
        if self.batch_embedding is not None:
            be = self.batch_embedding(batch_index)
            tok_in = torch.cat([token_embedding, be.unsqueeze(1).expand(-1, token_embedding.shape[1], -1)], -1)
            cell_in = torch.cat([cell_embedding, be], -1)
        return {
            MODULE_KEYS.PREDICTION: self.mgm_head(tok_in) if self.mgm_head is not None else None,
            SCFORMER_KEYS.MVC_PREDICTION: self.mvc_head(gene_embedding, cell_in) if self.mvc_head is not None else None,
        }

    def _value_loss(self, pred: Tensor, target: Tensor, positions: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-position CE over bins or squared error: per-cell means over ``positions``, batch mean, per position."""
        pred = pred.float()
        if self.mgm_loss == "ce":
            tgt = target.round().long().clamp(0, self.n_bins - 1)
            per_pos = F.cross_entropy(pred.transpose(1, 2), tgt, reduction="none")
        else:
            per_pos = (pred.squeeze(-1) - target.float()) ** 2
        w = positions.float()
        n = w.sum(1)
        per_cell = (per_pos * w).sum(1) / n.clamp_min(1.0)
        has = n > 0
        mean = per_cell[has].mean() if bool(has.any()) else per_cell.sum() * 0.0
        return per_cell, mean, per_pos

    def loss_positions(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor]) -> Tensor:
        """Positions scored by MGM and MVC: the masked ones (eq. 7–8)."""
        return inference_outputs[MODULE_KEYS.MASK]

    def loss_target(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor]) -> Tensor:
        """Values the heads predict at each position: the input values themselves."""
        return inference_outputs[MODULE_KEYS.TARGET]

    def loss(
        self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor], generative_outputs: dict[str, Tensor]
    ) -> LossOutput:
        """``L = L_MGM + L_MVC + w_ECS · L_ECS + w_DAR · L_DAR`` (section 3.4, weights from section 5).

        ``extra_metrics["pretext_loss"]`` is ``L_MGM + L_MVC``; in evaluation ``"trivial_loss"`` is the same sum for
        the per-gene bin marginal (CE) or mean (MSE) of the scored training targets
        (:class:`~cellformers.nn.TrivialBaseline`), and each head's loss is also split into zero and non-zero
        targets beside its trivial counterpart (``mgm_loss_zero``, ``mgm_loss_zero_trivial``, ...).
        """
        positions = self.loss_positions(tensors, inference_outputs)
        target = self.loss_target(tensors, inference_outputs)
        cell = inference_outputs[MODULE_KEYS.CELL_EMBEDDING]
        zero = cell.float().sum() * 0.0
        total = zero
        extra: dict[str, Tensor] = {}
        per_cell = None
        gene_index = inference_outputs.get(SCFORMER_KEYS.GENE_INDEX)
        trivial = self.score_trivial(self.trivial, target, positions, gene_index, per_cell=True)
        nonzero = positions & (target > 0)
        pretext = zero
        n_heads = 0
        for name, key, head in (
            ("mgm", MODULE_KEYS.PREDICTION, self.mgm_head),
            ("mvc", SCFORMER_KEYS.MVC_PREDICTION, self.mvc_head),
        ):
            if head is None:
                continue
            pc, term, per_pos = self._value_loss(generative_outputs[key], target, positions)
            total = total + term
            pretext = pretext + term.detach()
            n_heads += 1
            per_cell = pc if per_cell is None else per_cell
            extra[f"{name}_loss"] = term.detach()
            if trivial is not None:
                # the same loss on zero and non-zero targets: "expressed or not" vs the level of expressed genes
                for part, where in (("nonzero", nonzero), ("zero", positions & ~nonzero)):
                    w = where.float()
                    extra[f"{name}_loss_{part}"] = (per_pos.detach() * w).sum() / w.sum().clamp_min(1.0)
                    extra[f"{name}_loss_{part}_trivial"] = self.score_trivial(self.trivial, target, where, gene_index)
        if n_heads:
            extra["pretext_loss"] = pretext
            if trivial is not None:
                extra["trivial_loss"] = trivial * n_heads
        if self.ecs is not None:
            ecs = self.ecs(cell)
            if self.ecs_active:
                total = total + self.ecs_weight * ecs
            extra["ecs_loss"] = ecs.detach()
        if self.discriminator is not None:
            logits = self.discriminator(cell).float()
            labels = inference_outputs[SCFORMER_KEYS.BATCH_INDEX]
            dar = F.cross_entropy(logits, labels)
            total = total + self.dar_weight * dar
            extra["dar_loss"] = dar.detach()
            extra["dar_accuracy"] = (logits.argmax(-1) == labels).float().mean().detach()
        if per_cell is None:
            per_cell = torch.zeros(cell.shape[0], device=cell.device)
        return LossOutput(loss=total, reconstruction_loss=per_cell.detach(), extra_metrics=extra)

    # ------------------------------------------------------------------ inference helpers
    def cell_embedding(self, tensors: dict[str, Tensor]) -> Tensor:
        """Differentiable cell embedding of unmasked cells ``(B, d)``: the ``<cls>`` output (the module's pooling).

        Fine-tuning heads are trained on it (scFormer's cell-type classifier reads the ``<cls>`` embedding).
        """
        out = self.inference(**self._get_inference_input(tensors), mask_ratio=0.0, all_genes=self._embed_all_genes)
        return out[MODULE_KEYS.CELL_EMBEDDING]

    @property
    def _embed_all_genes(self) -> bool:
        """Embeddings of a ``"fill"`` model read every gene.

        With ``include_zero_genes="fill"`` the zero genes that fill a sequence are a random draw, different for
        every cell; at inference that draw would put per-cell noise into the embedding (measured on pancreas: AvgBIO
        0.31 with the draw, 0.73 with every gene, same weights), so embeddings use the deterministic full gene set.
        """
        return self.include_zero_genes == "fill"

    @torch.inference_mode()
    def embed(self, tensors: dict[str, Tensor], pooling: Pooling | None = None) -> Tensor:
        """Cell embeddings of unmasked cells ``(B, d)`` (evaluation mode expected; every gene for ``"fill"``)."""
        inp = self._get_inference_input(tensors)
        out = self.inference(**inp, mask_ratio=0.0, all_genes=self._embed_all_genes)
        pooling = self.pooling if pooling is None else pooling
        if pooling == self.pooling:
            return out[MODULE_KEYS.CELL_EMBEDDING]
        # rebuild the (cls + genes) layout the pooling expects
        genes = out[MODULE_KEYS.TOKEN_EMBEDDING]
        full = torch.cat([out[MODULE_KEYS.CELL_EMBEDDING].unsqueeze(1), genes], 1)
        b = genes.shape[0]
        pad = torch.cat([torch.zeros(b, 1, dtype=torch.bool, device=genes.device), out[MODULE_KEYS.PADDING_MASK]], 1)
        if pooling == "cls":
            msg = (
                "`pooling='cls'` needs a model trained with `pooling='cls'` (its <cls> output is the only one trained)."
            )
            raise ValueError(msg)
        return self.pool(full, pad, out[SCFORMER_KEYS.VALUES], pooling)
