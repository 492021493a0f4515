"""scPaLM module: permutation-invariant embedding, pathway VQ autoencoder (stage 1), cell-token aggregation (stage 2)."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
from cellformers.nn import (
    PermutationInvariantEmbedding,
    TokenContrastiveLoss,
    TransformerEncoder,
    TrivialBaseline,
    VectorQuantizer,
)

from ._base import GeneTokenModule
from ._tokens import equal_groups, pack_left

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from torch import Tensor

# keys of the inference / generative outputs specific to scPaLM
_X_NORM = "x_norm"
_Z_E = "z_e"
_Z_Q = "z_q"
_CODES = "codes"
_VQ_LOSS = "vq_loss"
_PERPLEXITY = "perplexity"
_N_USED = "codes_used"
_KEEP = "keep"
_H_TOKENS = "h_tokens"
_H_CELL_2 = "cell_embedding_view2"
_STAGE = "stage"

#: counter_uniform salt of the stage-2 subset in evaluation (``get_cell_embedding`` uses 101, 102, ...; impute 7)
_SALT_EVAL_KEEP = 0


def code_statistics(codes: Tensor) -> dict[str, Tensor]:
    """How well the codes of a minibatch ``(batch, N)`` tell its cells apart, position by position.

    ``codes_per_position``: distinct codes among the cells at a position, averaged over the positions (1 when the
    code only encodes the position). ``code_entropy``: entropy (bits) of the code distribution over the cells at a
    position, averaged over the positions (at most ``log2(batch)``).
    """
    with torch.no_grad():
        c = codes.reshape(codes.shape[0], -1).T.long()  # (N, batch)
        k = int(c.max()) + 1 if c.numel() else 1
        counts = torch.zeros(c.shape[0], k, device=c.device).scatter_add_(1, c, torch.ones_like(c, dtype=torch.float))
        p = counts / counts.sum(1, keepdim=True).clamp_min(1)
        entropy = -(p * torch.log2(p.clamp_min(1e-12))).sum(1)
        return {"codes_per_position": (counts > 0).sum(1).float().mean(), "code_entropy": entropy.mean()}


def _param(*shape: int) -> nn.Parameter:
    # unit scale, like the tokens they are added to or stand beside (quantized codes and embedded tokens are O(1)
    # per dimension): with BERT's 0.02 the first LayerNorm would all but erase them
    return nn.Parameter(torch.randn(*shape))


class ScPaLMModule(GeneTokenModule):
    """Torch module of :class:`~cellformers.model.ScPaLM` (scPaLM :cite:p:`scPaLM`).

    Stage 1 (section 3.2): ``x -> PermutationInvariantEmbedding -> encoder -> VectorQuantizer -> decoder -> o``,
    trained with the MSE between ``o`` and the normalized expression plus the VQ loss. Stage 2 (section 3.3,
    Algorithm 3): with the stage-1 parts frozen, a learnable cell token ``e_C`` is prepended to a random ordered
    subset of the pathway tokens ``z``, a second encoder gives ``H = (h_C, h_i...)``, ``h_C`` is dropped, the left-out
    positions are filled with a mask token ``e_M``, and a second decoder reconstructs the genes of the left-out
    region; plus the token-level contrastive loss on ``h_C`` (appendix A.1).

    Output reshaping (Algorithm 1): each decoder maps its ``N`` tokens to ``s = ceil(n_output_genes / N)`` values,
    the ``N × s`` outputs are flattened, and gene ``g`` reads position ``token_id(g)`` (genes have token ids
    ``0 … n_genes-1`` in the vocabulary, so the output space is the vocabulary, not the data's columns). Token ``j``
    "owns" the genes with ``token_id // s == j``; in stage 2 the loss is taken on the genes owned by left-out tokens.

    Parameters
    ----------
    gene_token_ids
        Vocabulary token id of each input column, ``-1`` for genes outside the vocabulary.
    n_tokens
        Vocabulary size.
    n_output_genes
        Number of gene tokens of the vocabulary (size of the output space).
    n_hidden
        Transformer width ``d`` (256).
    n_layers
        Layers of each encoder (6).
    n_decoder_layers
        Layers of each decoder (``None``: ``n_layers``).
    n_heads
        Attention heads (8).
    n_intermediate
        Feed-forward width (1024).
    dropout_rate
        Dropout (0).
    n_pathway_tokens
        ``N``, the number of pooled / pathway tokens (256).
    n_codes
        Codebook size ``K`` (128).
    n_value_hidden
        Width of the gene-specific value projection of the embedding.
    n_gene_embedding
        Width of the learnable gene embedding of the embedding.
    pooling
        Symmetric pooling of the embedding (:class:`~cellformers.nn.PermutationInvariantEmbedding`).
    hierarchical_pooling
        Pool zero-count genes first (section 3.1).
    commitment_weight
        ``beta`` of the commitment loss.
    vq_affine
        Affine reparameterisation of the codebook (:class:`~cellformers.nn.VectorQuantizer`).
    dead_code_threshold
        Codes used fewer times than this between checks are re-initialised (0: never).
    dead_code_interval
        Training steps between dead-code checks.
    sync_nu
        Synchronised codebook update weight (0: off).
    vq_codebook
        ``"shared"``: one codebook of ``n_codes`` for all ``N`` positions (the paper); ``"per_position"``: one
        codebook of ``n_codes`` per position, with per-position statistics and dead-code re-seeding
        (:class:`~cellformers.nn.VectorQuantizer`).
    vq_residual
        Quantize each pathway token minus a running mean of its position (the mean is added back).
    vq_warmup
        Fraction of the first stage-1 training's steps run without quantization; the codebook is then initialised
        by k-means on the encoder outputs (0: random codes from the start, the paper).
    pre_vq_position
        Add a learned position embedding to the tokens before the pathway encoder (not in the paper; the tokens
        of the embedding already differ by position).
    quantize
        Quantize the pathway tokens (section 3.2). ``False`` is the "encoder without quantizer" ablation of Table 7:
        the continuous encoder outputs go to the decoders (codes are still computed for reporting, without VQ loss).
    keep_ratio
        ``p``: fraction of pathway tokens given to the stage-2 encoder; the rest is reconstructed.
    contrastive
        Use the token-level contrastive loss in stage 2.
    contrastive_weight
        Weight of the contrastive loss.
    temperature
        Temperature of the contrastive loss.
    queue_size
        Length of the ``h_C`` queue for the K-Means pseudo-labels.
    n_pseudo_labels
        Number of K-Means clusters.
    refit_interval
        ``T_r``, training steps between K-Means refits.
    n_negatives
        Negatives per cell.
    cell_token_in_decoder
        Also give ``h_C`` to the stage-2 decoder. The paper excludes it (``False``).
    cell_decoder_input
        What the stage-2 decoder reads: ``"tokens"`` (the paper: the encoder outputs of the kept tokens, ``e_M``
        elsewhere) or ``"cell_token"`` (``h_C`` alone at every position, plus the position embedding: the left-out
        region is reconstructed from the cell token only, so ``h_C`` has to summarise the cell).
    library_size
        Target library size of the normalization ``log1p(x / sum(x) * library_size)``.
    activation
        Feed-forward non-linearity of the transformers.

    Examples
    --------
    Models build their module (``model.module``); on its own it maps a minibatch of registered tensors to a loss:

    >>> import numpy as np
    >>> import torch
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=8, n_genes=40, sparse=False)
    >>> tensors = {"X": torch.as_tensor(adata.X), "batch": torch.zeros(8, 1), "cell_seed": torch.arange(8.0)[:, None]}
    >>> module = cf.module.ScPaLMModule(
    ...     np.arange(40),
    ...     n_tokens=40,
    ...     n_output_genes=40,
    ...     n_hidden=16,
    ...     n_layers=1,
    ...     n_heads=2,
    ...     n_intermediate=32,
    ...     n_pathway_tokens=8,
    ...     n_codes=16,
    ...     n_value_hidden=8,
    ...     n_gene_embedding=8,
    ... )
    >>> inference_outputs, generative_outputs, loss = module(tensors)  # stage 1
    >>> inference_outputs["z_q"].shape  # 8 quantized pathway tokens per cell
    torch.Size([8, 8, 16])
    >>> sorted(loss.extra_metrics)
    ['code_entropy', 'codes_per_position', 'codes_used', 'mse', 'perplexity', 'pretext_loss', 'vq_loss']
    >>> loss.loss.backward()
    """

    def __init__(
        self,
        gene_token_ids: Sequence[int] | np.ndarray,
        n_tokens: int,
        n_output_genes: int,
        n_hidden: int = 256,
        n_layers: int = 6,
        n_decoder_layers: int | None = None,
        n_heads: int = 8,
        n_intermediate: int = 1024,
        dropout_rate: float = 0.0,
        n_pathway_tokens: int = 256,
        n_codes: int = 128,
        n_value_hidden: int = 64,
        n_gene_embedding: int = 64,
        pooling: Literal["mean", "max"] = "mean",
        hierarchical_pooling: bool = True,
        commitment_weight: float = 0.25,
        vq_affine: Literal["running", "learned", "none"] = "running",
        dead_code_threshold: float = 1.0,
        dead_code_interval: int = 20,
        sync_nu: float = 0.0,
        vq_codebook: Literal["shared", "per_position"] = "shared",
        vq_residual: bool = False,
        vq_warmup: float = 0.0,
        pre_vq_position: bool = True,
        quantize: bool = True,
        keep_ratio: float = 0.5,
        contrastive: bool = True,
        contrastive_weight: float = 1.0,
        temperature: float = 0.1,
        queue_size: int = 4096,
        n_pseudo_labels: int = 16,
        refit_interval: int = 100,
        n_negatives: int = 64,
        cell_token_in_decoder: bool = False,
        cell_decoder_input: Literal["tokens", "cell_token"] = "tokens",
        library_size: float = 1e4,
        activation: Literal["gelu", "relu"] = "gelu",
    ):
        super().__init__(gene_token_ids, n_tokens)
        # per-gene mean of the normalized expression: the reconstruction that ignores the cell
        self.trivial = TrivialBaseline(self.n_genes)
        if not 0 < keep_ratio < 1:
            msg = f"`keep_ratio` must be in (0, 1), got {keep_ratio}."
            raise ValueError(msg)
        if int(self.input_gene_ids.max()) >= n_output_genes:
            msg = f"gene token ids must be < n_output_genes ({n_output_genes}); special tokens cannot be genes."
            raise ValueError(msg)
        n = int(n_pathway_tokens)
        d = int(n_hidden)
        n_dec = n_layers if n_decoder_layers is None else n_decoder_layers
        self.n_pathway_tokens = n
        self.n_hidden = d
        self.n_output_genes = int(n_output_genes)
        self.genes_per_token = math.ceil(self.n_output_genes / n)
        self.n_keep = min(n - 1, max(1, round(keep_ratio * n)))
        self.keep_ratio = keep_ratio
        self.commitment_weight = commitment_weight
        self.contrastive = contrastive
        self.contrastive_weight = contrastive_weight
        self.cell_token_in_decoder = cell_token_in_decoder
        if cell_decoder_input not in ("tokens", "cell_token"):
            msg = f"`cell_decoder_input` must be 'tokens' or 'cell_token', got {cell_decoder_input!r}."
            raise ValueError(msg)
        self.cell_decoder_input = cell_decoder_input
        self.library_size = library_size
        self.quantize = quantize
        if not 0 <= vq_warmup < 1:
            msg = f"`vq_warmup` must be in [0, 1), got {vq_warmup}."
            raise ValueError(msg)
        self.vq_warmup = float(vq_warmup)
        self.pre_vq_position = bool(pre_vq_position)
        self.stage = 1
        self.register_buffer("token_of_gene", self.input_gene_ids // self.genes_per_token, persistent=False)
        # which stages have been trained (saved with the weights)
        self.register_buffer("trained_stages", torch.zeros(2, dtype=torch.bool))

        def transformer(n_l: int) -> TransformerEncoder:
            return TransformerEncoder(d, n_l, n_heads, n_intermediate, dropout_rate, activation=activation)

        # ---- stage 1: embedding, pathway encoder, quantizer, decoder
        self.embedding = PermutationInvariantEmbedding(
            n_tokens,
            n_pooled=n,
            n_output=d,
            n_value=n_value_hidden,
            n_gene=n_gene_embedding,
            pooling=pooling,
            hierarchical=hierarchical_pooling,
        )
        self.pos_encoder = _param(n, d) if pre_vq_position else None
        self.encoder = transformer(n_layers)
        self.quantizer = VectorQuantizer(
            n_codes,
            d,
            beta=commitment_weight,
            affine=vq_affine,
            dead_code_threshold=dead_code_threshold,
            replace_interval=dead_code_interval,
            sync_nu=sync_nu,
            codebook=vq_codebook,
            n_positions=n,
            residual=vq_residual,
            # the training plan sets the number of warm-up steps from `vq_warmup` when stage 1 starts
            warmup_steps=1 if vq_warmup > 0 else 0,
        )
        self.pos_decoder = _param(n, d)
        self.decoder = transformer(n_dec)
        self.head = nn.Linear(d, self.genes_per_token)
        # one bias per output slot (gene): the per-gene mean does not have to be learned through shared weights
        self.output_bias = nn.Parameter(torch.zeros(n * self.genes_per_token))
        # ---- stage 2: cell token, mask token, cell encoder and decoder, contrastive loss
        self.cell_token = _param(d)  # e_C
        self.mask_token = _param(d)  # e_M
        self.pos_cell_encoder = _param(n, d)
        self.cell_encoder = transformer(n_layers)
        self.pos_cell_decoder = _param(n, d)
        self.cell_decoder = transformer(n_dec)
        self.cell_head = nn.Linear(d, self.genes_per_token)
        self.cell_output_bias = nn.Parameter(torch.zeros(n * self.genes_per_token))
        self.contrastive_loss = TokenContrastiveLoss(
            d,
            queue_size=queue_size,
            n_clusters=n_pseudo_labels,
            refit_interval=refit_interval,
            n_negatives=n_negatives,
            temperature=temperature,
        )
        self.set_stage(1)

    # ------------------------------------------------------------------ stages
    def _stage1_modules(self) -> list[nn.Module]:
        return [self.embedding, self.encoder, self.quantizer, self.decoder, self.head]

    def _stage1_params(self) -> list[nn.Parameter]:
        return [p for p in (self.pos_encoder, self.pos_decoder, self.output_bias) if p is not None]

    def _stage2_modules(self) -> list[nn.Module]:
        return [self.cell_encoder, self.cell_decoder, self.cell_head, self.contrastive_loss]

    def _stage2_params(self) -> list[nn.Parameter]:
        return [self.cell_token, self.mask_token, self.pos_cell_encoder, self.pos_cell_decoder, self.cell_output_bias]

    def set_stage(self, stage: Literal[1, 2]) -> None:
        """Select the training stage: its parameters are trainable, the others frozen (``requires_grad=False``)."""
        if stage not in (1, 2):
            msg = f"`stage` must be 1 or 2, got {stage!r}."
            raise ValueError(msg)
        self.stage = int(stage)
        for modules, params, active in (
            (self._stage1_modules(), self._stage1_params(), stage == 1),
            (self._stage2_modules(), self._stage2_params(), stage == 2),
        ):
            for m in modules:
                m.requires_grad_(active)
            for p in params:
                p.requires_grad_(active)
        self.train(self.training)

    def train(self, mode: bool = True):
        """Like :meth:`torch.nn.Module.train`, but the frozen stage-1 modules stay in eval mode during stage 2."""
        super().train(mode)
        if mode and self.stage == 2:
            for m in self._stage1_modules():
                m.eval()
        return self

    # ------------------------------------------------------------------ building blocks
    def normalize(self, x: Tensor) -> Tensor:
        """``log1p(x / sum(x) * library_size)``: the sum runs over all input columns, then the vocabulary columns."""
        return self.log_normalize(x, self.library_size)

    def encode_pathways(self, x_norm: Tensor):
        """Stage-1 encoder and quantizer: returns ``(z_e, QuantizerOutput)``, tokens ``(batch, N, d)``."""
        tokens = self.embedding(x_norm, self.input_gene_ids)
        if self.pos_encoder is not None:
            tokens = tokens + self.pos_encoder
        z_e = self.encoder(tokens)
        vq = self.quantizer(z_e)
        if not self.quantize:  # Table 7 ablation: continuous tokens, codes only reported
            vq = vq._replace(quantized=z_e, loss=vq.loss.detach() * 0.0)
        return z_e, vq

    def _to_genes(self, out: Tensor, bias: Tensor | None = None) -> Tensor:
        """``(batch, N, s)`` decoder outputs -> ``(batch, n_genes)`` (Algorithm 1: flatten, read each gene's slot)."""
        flat = out.reshape(out.shape[0], -1).float()
        if bias is not None:
            flat = flat + bias
        return flat.index_select(1, self.input_gene_ids)

    @torch.no_grad()
    def init_output_bias(self, gene_means: Tensor) -> None:
        """Initialise the per-gene output biases of both decoders to ``gene_means`` (``(n_genes,)``, input order)."""
        for bias in (self.output_bias, self.cell_output_bias):
            bias.zero_()
            bias[self.input_gene_ids] = gene_means.to(bias)

    def decode_pathways(self, z_q: Tensor) -> Tensor:
        """Stage-1 decoder: pathway tokens ``(batch, N, d)`` -> normalized expression ``(batch, n_genes)``."""
        return self._to_genes(self.head(self.decoder(z_q + self.pos_decoder)), self.output_bias)

    def random_keep(self, batch: int, *, device, cell_seeds: Tensor | None = None, salt: int = 0) -> Tensor:
        """Sorted indices ``(batch, n_keep)`` of a random subset of the pathway tokens.

        With ``cell_seeds`` the subset depends only on the cell (counter-based); otherwise on the torch RNG.
        """
        u = self.uniform(cell_seeds, self.n_pathway_tokens, salt, n_cells=batch, device=device, seeded=True)
        return u.argsort(1)[:, : self.n_keep].sort(1).values

    def encode_cell(self, z: Tensor, keep: Tensor | None = None) -> Tensor:
        """Stage-2 encoder over ``[e_C, z_keep]``: returns ``H`` ``(batch, 1 + n_kept, d)`` (``H[:, 0]`` is ``h_C``).

        ``keep=None`` uses all ``N`` pathway tokens.
        """
        tokens = z + self.pos_cell_encoder
        if keep is not None:
            tokens = tokens.gather(1, keep[:, :, None].expand(-1, -1, tokens.shape[-1]))
        cls = self.cell_token.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return self.cell_encoder(torch.cat([cls, tokens], 1))

    def decode_cell(self, h: Tensor, keep: Tensor) -> Tensor:
        """Stage-2 decoder -> expression ``(batch, n_genes)``.

        ``cell_decoder_input="tokens"``: ``H`` of the kept tokens, ``e_M`` elsewhere (``h_C`` too with
        ``cell_token_in_decoder``); ``"cell_token"``: ``h_C`` at every position (``keep`` is then not read).
        """
        b, _, d = h.shape
        if self.cell_decoder_input == "cell_token":
            out = self.cell_decoder(h[:, :1].expand(b, self.n_pathway_tokens, d) + self.pos_cell_decoder)
            return self._to_genes(self.cell_head(out), self.cell_output_bias)
        full = self.mask_token.to(h.dtype).expand(b, self.n_pathway_tokens, d).clone()
        full = full.scatter(1, keep[:, :, None].expand(-1, -1, d), h[:, 1:])
        full = full + self.pos_cell_decoder
        if self.cell_token_in_decoder:
            out = self.cell_decoder(torch.cat([h[:, :1], full], 1))[:, 1:]
        else:
            out = self.cell_decoder(full)
        return self._to_genes(self.cell_head(out), self.cell_output_bias)

    def left_out_genes(self, keep: Tensor) -> Tensor:
        """Boolean ``(batch, n_genes)``: genes owned by a token left out of ``keep`` (Algorithm 1's mask)."""
        left = torch.ones(keep.shape[0], self.n_pathway_tokens, dtype=torch.bool, device=keep.device)
        left.scatter_(1, keep, False)
        return left[:, self.token_of_gene]

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict[str, Tensor | None]:
        return {"x": tensors[REGISTRY_KEYS.X_KEY], "cell_seed": tensors.get(REGISTRY_KEYS_CF.CELL_SEED)}

    @auto_move_data
    def inference(
        self, x: Tensor, stage: int | None = None, cell_seed: Tensor | None = None
    ) -> dict[str, Tensor | int]:
        """Stage 1: pathway tokens; stage 2: cell-token encoder over a random subset (two views when contrastive).

        The stage-2 subset is drawn from torch's generator in training and, given the per-cell seeds ``cell_seed``
        ``(batch, 1)``, per cell in evaluation, so validation losses do not depend on the minibatch.
        """
        stage = self.stage if stage is None else int(stage)
        x_norm = self.normalize(x)
        if stage == 1:
            z_e, vq = self.encode_pathways(x_norm)
            return {
                _STAGE: 1,
                _X_NORM: x_norm,
                _Z_E: z_e,
                _Z_Q: vq.quantized,
                _CODES: vq.indices,
                _VQ_LOSS: vq.loss,
                _PERPLEXITY: vq.perplexity,
                _N_USED: vq.n_used,
            }
        with torch.no_grad():
            _, vq = self.encode_pathways(x_norm)
        z = vq.quantized.detach()
        seeds = None if self.training else cell_seed
        keep = self.random_keep(z.shape[0], device=z.device, cell_seeds=seeds, salt=_SALT_EVAL_KEEP)
        h = self.encode_cell(z, keep)
        out = {
            _STAGE: 2,
            _X_NORM: x_norm,
            _Z_Q: z,
            _CODES: vq.indices,
            _KEEP: keep,
            _H_TOKENS: h,
            MODULE_KEYS.CELL_EMBEDDING: h[:, 0],
        }
        if self.contrastive and self.training:
            keep2 = self.random_keep(z.shape[0], device=z.device)
            out[_H_CELL_2] = self.encode_cell(z, keep2)[:, 0]
        return out

    def _get_generative_input(self, tensors, inference_outputs, **kwargs) -> dict:
        if inference_outputs[_STAGE] == 1:
            return {"stage": 1, "z": inference_outputs[_Z_Q]}
        return {"stage": 2, "h": inference_outputs[_H_TOKENS], "keep": inference_outputs[_KEEP]}

    def generative(self, stage: int, z: Tensor | None = None, h: Tensor | None = None, keep: Tensor | None = None):
        """Decode: stage 1 from the pathway tokens ``z``, stage 2 from the cell-encoder outputs ``h``."""
        if stage == 1:
            return {MODULE_KEYS.PREDICTION: self.decode_pathways(z)}
        return {MODULE_KEYS.PREDICTION: self.decode_cell(h, keep)}

    def loss(self, tensors, inference_outputs, generative_outputs, **kwargs) -> LossOutput:
        """Stage 1: MSE over all genes + VQ loss. Stage 2: MSE over the left-out region + contrastive loss.

        ``extra_metrics["pretext_loss"]`` is the stage's MSE; in evaluation ``"trivial_loss"`` is the MSE of each
        gene's mean normalized expression over the training cells on the same genes
        (:class:`~cellformers.nn.TrivialBaseline`).
        """
        x_norm = inference_outputs[_X_NORM]
        pred = generative_outputs[MODULE_KEYS.PREDICTION]
        sq = (pred - x_norm) ** 2
        if inference_outputs[_STAGE] == 1:
            rec = sq.mean(-1)
            vq_loss = inference_outputs[_VQ_LOSS]
            loss = rec.mean() + vq_loss
            extra = {
                "mse": rec.mean().detach(),
                "vq_loss": vq_loss.detach(),
                "perplexity": inference_outputs[_PERPLEXITY],
                "codes_used": inference_outputs[_N_USED].float(),
                "pretext_loss": rec.mean().detach(),
                **code_statistics(inference_outputs[_CODES]),
            }
            trivial = self.score_trivial(self.trivial, x_norm, torch.ones_like(x_norm, dtype=torch.bool))
            if trivial is not None:
                extra["trivial_loss"] = trivial
            return LossOutput(loss=loss, reconstruction_loss=rec, extra_metrics=extra)
        left = self.left_out_genes(inference_outputs[_KEEP])
        mask = left.to(sq.dtype)
        rec = (sq * mask).sum(-1) / mask.sum(-1).clamp_min(1)
        loss = rec.mean()
        extra = {"masked_mse": rec.mean().detach(), "pretext_loss": rec.mean().detach()}
        trivial = self.score_trivial(self.trivial, x_norm, left, per_cell=True)
        if trivial is not None:
            extra["trivial_loss"] = trivial
        if self.contrastive and _H_CELL_2 in inference_outputs:
            cl = self.contrastive_loss(inference_outputs[MODULE_KEYS.CELL_EMBEDDING], inference_outputs[_H_CELL_2])
            loss = loss + self.contrastive_weight * cl
            extra["contrastive_loss"] = cl.detach()
        return LossOutput(loss=loss, reconstruction_loss=rec, extra_metrics=extra)

    # ------------------------------------------------------------------ inference helpers (used by the model)
    @torch.no_grad()
    def get_pathway_tokens(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Quantized pathway tokens ``(batch, N, d)`` and their codes ``(batch, N)``."""
        _, vq = self.encode_pathways(self.normalize(x))
        return vq.quantized, vq.indices

    def cell_embedding(self, tensors: dict[str, Tensor]) -> Tensor:
        """Differentiable ``h_C`` over all pathway tokens ``(batch, d)``, for fine-tuning heads.

        Gradients reach the stage-2 encoder and, through the quantizer's straight-through estimator, the stage-1
        encoder and embedding (for parameters that require gradients).
        """
        _, vq = self.encode_pathways(self.normalize(tensors[REGISTRY_KEYS.X_KEY].to(self.cell_token.device)))
        return self.encode_cell(vq.quantized)[:, 0]

    @torch.no_grad()
    def get_cell_embedding(self, x: Tensor, n_subsets: int | None = None, cell_seeds: Tensor | None = None) -> Tensor:
        """``h_C`` of the stage-2 encoder, ``(batch, d)``.

        ``n_subsets=None``: over all ``N`` pathway tokens (the paper). An integer: the mean of ``h_C`` over that many
        random subsets of ``keep_ratio * N`` tokens, as in training (seeded per cell by ``cell_seeds``).
        """
        z, _ = self.get_pathway_tokens(x)
        if not n_subsets:
            return self.encode_cell(z)[:, 0]
        out = 0.0
        for i in range(int(n_subsets)):
            keep = self.random_keep(z.shape[0], device=z.device, cell_seeds=cell_seeds, salt=101 + i)
            out = out + self.encode_cell(z, keep)[:, 0].float()
        return out / int(n_subsets)

    @torch.no_grad()
    def impute(self, tensors: dict[str, Tensor], decoder: Literal["pathway", "cell"] = "pathway") -> Tensor:
        """Predicted normalized expression ``(batch, n_genes)`` of a minibatch of registered data, clipped at 0.

        ``"pathway"``: the stage-1 reconstruction from the pathway tokens. ``"cell"``: the stage-2 decoder; the
        tokens are split into ``ceil(1 / (1 - keep_ratio))`` groups at random (per cell, from its registered seed),
        each group is left out once and its genes are read from that pass.
        """
        inputs = self._get_inference_input(tensors)
        x, cell_seeds = inputs["x"].to(self.device), inputs["cell_seed"]
        z, _ = self.get_pathway_tokens(x)
        if decoder == "pathway":
            return self.decode_pathways(z).clamp_min(0)
        n = self.n_pathway_tokens
        n_groups = max(2, math.ceil(n / (n - self.n_keep)))
        b = z.shape[0]
        u = self.uniform(cell_seeds, n, 7, n_cells=b, device=z.device, seeded=True)
        group = equal_groups(u, n_groups)  # (B, N), equal group sizes for every cell
        out = torch.zeros(b, self.n_genes, device=z.device)
        for g in range(n_groups):
            keep, _ = pack_left(group != g)  # every cell keeps the same number of tokens: no padding
            pred = self.decode_cell(self.encode_cell(z, keep), keep)
            left = self.left_out_genes(keep)
            out = torch.where(left, pred, out)
        return out.clamp_min(0)
