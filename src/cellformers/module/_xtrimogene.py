"""xTrimoGene's asymmetric encoder-decoder :cite:p:`Gong23` as an scvi-tools module."""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from scvi import REGISTRY_KEYS
from scvi.module.base import LossOutput, auto_move_data
from torch import nn

from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
from cellformers.nn import Performer, TransformerEncoder, TrivialBaseline, make_value_embedding

from ._base import GeneTokenModule, check_choice
from ._tokens import scatter_to_genes
from ._xtrimogene_impute import XTrimoGeneImputeMixin
from ._xtrimogene_tokens import ENCODER_INDEX, HIDDEN, INPUT_VALUES, XTrimoGeneTokensMixin

if TYPE_CHECKING:
    from collections.abc import Sequence

    import numpy as np
    from torch import Tensor

__all__ = ["ENCODER_INDEX", "HIDDEN", "INPUT_VALUES", "XTrimoGeneModule"]


class XTrimoGeneModule(XTrimoGeneTokensMixin, XTrimoGeneImputeMixin, GeneTokenModule):
    """Asymmetric encoder-decoder of xTrimoGene :cite:p:`Gong23`.

    One forward pass (Fig. 1):

    1. counts -> ``log1p(x / Σx · 1e4)`` (App. 1; the sum runs over all registered genes);
    2. masking of zero and non-zero positions (section 4.2, App. 6);
    3. the unmasked non-zero genes of each cell are packed to the left (loop-free stable gather) and padded;
    4. value embedding (auto-discretization) + gene embedding, summed (eq. 1);
    5. full-attention transformer encoder on the packed tokens (eq. 2);
    6. encoder outputs scattered back to their genes, masked positions get the ``[MASK]`` embedding and zero-valued
       positions the zero embedding; combined with the gene embeddings and projected (eq. 3);
    7. Performer decoder over all genes, shared linear head (eq. 4);
    8. MSE on the masked positions (eq. 5).

    Parameters
    ----------
    gene_token_ids
        Vocabulary token id of each registered gene (``-1``: not in the vocabulary, ignored).
    n_tokens
        Vocabulary size (rows of the gene embedding table).
    encoder_layers, encoder_heads, encoder_dim, encoder_ff
        Encoder depth, heads, width and feed-forward width (``None``: ``4 * encoder_dim``).
    decoder_layers, decoder_heads, decoder_dim, decoder_ff
        Performer decoder depth, heads, width and feed-forward width (``None``: ``4 * decoder_dim``).
    dropout_rate
        Dropout in encoder and decoder (the paper does not state one).
    encoder_norm_first
        Pre-norm encoder blocks (default). ``False`` gives post-norm blocks as scFoundation's
        ``nn.TransformerEncoderLayer``; the paper only says "traditional multi-head attention transformer".
    encoder_activation
        Encoder feed-forward non-linearity (``"relu"`` in scFoundation).
    value_embedding
        ``"autobin"`` (auto-discretization, section 3.3) or the hard binnings of Fig. 2A: ``"round"``, ``"upbin"``,
        ``"equalbin"``.
    n_bins
        Number of bins of the value embedding (100).
    bin_alpha
        Mixture factor α of the auto-discretization.
    zero_embedding
        ``"learned"``: zero-valued genes enter the decoder as one learned vector (the paper's ``I_zero``);
        ``"value"``: as the value embedding of 0 (scFoundation embeds the whole expression vector).
    decoder_input
        ``"concat"``: ``W_p [token ⊕ gene embedding] + b_p`` (eq. 3 and the text of section 3.2); ``"add"``:
        ``W_p (token + gene embedding) + b_p`` (scFoundation).
    nb_features
        Random features per decoder head (``None``: ``int(d_head · ln d_head)``).
    feature_redraw_interval
        Redraw the Performer projections every this many training steps.
    decoder_key_stabilizer
        Maximum subtracted in the exponent of the Performer's key features: per cell and head (``"head"``) or per
        cell over all heads (``"cell"``, what scFoundation computes for one cell).
    decoder_exact_attention
        ``"auto"`` (default): the Performer decoder uses exact softmax attention when there are at most four genes
        per random feature (e.g. up to 1,064 genes with 266 features per head), where exact attention costs about
        as much or less and is exact (:class:`~cellformers.nn.PerformerAttention`); FAVOR+ above. ``"never"``: FAVOR+ at every
        length (the paper's decoder); ``"always"``: exact attention.
    decoder_feature_precision
        ``"float32"`` (default) or ``"autocast"``: the decoder's FAVOR+ feature maps under bf16 autocast
        (:class:`~cellformers.nn.PerformerAttention`; ``"autocast"`` measured 1.06x faster per bf16 step).
    mask_strategy
        ``"balanced"``: per cell, mask ``mask_ratio`` of the non-zero genes and ``balanced_zero_ratio`` times as many
        zero genes (a near-equal number; App. 6 Table 1: 600 non-zero and 540 zero positions of 20,000);
        ``"rate"``: mask each non-zero gene with probability ``mask_ratio`` and each zero gene with probability
        ``zero_mask_rate`` (scFoundation's 30% / 3%).
    mask_ratio
        Fraction of non-zero genes masked (30% is the optimum of App. Fig. 3).
    balanced_zero_ratio
        Masked zeros per masked non-zero with ``mask_strategy="balanced"`` (540 / 600 = 0.9).
    zero_mask_rate
        Masking probability of zero genes with ``mask_strategy="rate"``.
    mask_replacement
        Probabilities ``([MASK], random value, unchanged)`` for the masked positions (App. Fig. 5). ``(1, 0, 0)``
        hides every masked value from the encoder (Fig. 1). With BERT-style ``(0.8, 0.1, 0.1)`` (scFoundation),
        positions given a random value (drawn from the cell's own non-zero values) or left unchanged are visible to
        the encoder when non-zero but still count in the loss.
    max_encoder_length
        Cap on the number of genes per cell the encoder sees; ``None`` = no cap. Above the cap the most highly
        expressed genes are kept, and the others enter the decoder through their value embedding (so bulk-like
        input cannot run out of memory).
    read_depth_tokens
        Add scFoundation's two read-depth tokens to the encoder: ``S = log10(Σ counts)`` (source) and ``T`` (target
        depth, equal to ``S`` here since no read-depth downsampling is done during training, or ``target_depth`` at
        inference). Both go through the value embedding plus their own learned identity vectors.
    decoder_depth_tokens
        With ``read_depth_tokens``: the encoder outputs of ``S`` and ``T`` (plus their identity vectors) also enter the
        decoder, which then runs over ``n_genes + 2`` tokens (scFoundation's decoder sees the whole 19,266-long
        input); only the gene positions are predicted. ``False`` (default): the decoder sees the genes only.
    head_norm
        A LayerNorm between the decoder (which ends with its own LayerNorm) and the output head: scFoundation's
        ``norm`` before ``to_final``. Needed to reproduce converted scFoundation checkpoints.
    target_sum
        Library size of the normalization (1e4).
    gradient_checkpointing
        Recompute encoder/decoder activations in the backward pass to save memory.
    decoder_chunk_size
        Training only: decode this many cells at a time, each chunk (decoder input, decoder, head) checkpointed, so
        that the decoder activations of one chunk, not of the minibatch, are held at once; backward recomputes the
        chunk's forward pass. The decoder works per cell, so loss and gradients equal the unchunked ones (dropout
        masks are drawn per chunk). ``None`` (default): the whole minibatch at once.

    Examples
    --------
    Models build their module (``model.module``); on its own it maps a minibatch of registered tensors to a loss:

    >>> import numpy as np
    >>> import torch
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=8, n_genes=40, sparse=False)
    >>> tensors = {"X": torch.as_tensor(adata.X), "batch": torch.zeros(8, 1), "cell_seed": torch.arange(8.0)[:, None]}
    >>> module = cf.module.XTrimoGeneModule(
    ...     np.arange(40),
    ...     n_tokens=43,
    ...     encoder_layers=1,
    ...     encoder_dim=16,
    ...     encoder_heads=2,
    ...     decoder_layers=1,
    ...     decoder_dim=8,
    ... )
    >>> inference_outputs, generative_outputs, loss = module(tensors)
    >>> generative_outputs["prediction"].shape  # every gene, through the Performer decoder
    torch.Size([8, 40])
    >>> loss.loss.backward()  # MSE on the masked positions
    >>> module.cell_embedding(tensors).shape
    torch.Size([8, 16])
    """

    def __init__(
        self,
        gene_token_ids: Sequence[int] | np.ndarray,
        n_tokens: int,
        *,
        encoder_layers: int = 4,
        encoder_heads: int = 8,
        encoder_dim: int = 256,
        encoder_ff: int | None = None,
        decoder_layers: int = 2,
        decoder_heads: int = 4,
        decoder_dim: int = 256,
        decoder_ff: int | None = None,
        dropout_rate: float = 0.0,
        encoder_norm_first: bool = True,
        encoder_activation: Literal["gelu", "relu"] = "gelu",
        value_embedding: Literal["autobin", "round", "upbin", "equalbin"] = "autobin",
        n_bins: int = 100,
        bin_alpha: float = 1.0,
        zero_embedding: Literal["learned", "value"] = "learned",
        decoder_input: Literal["concat", "add"] = "concat",
        nb_features: int | None = None,
        feature_redraw_interval: int | None = 1000,
        decoder_key_stabilizer: Literal["head", "cell"] = "head",
        decoder_exact_attention: Literal["auto", "never", "always"] = "auto",
        decoder_feature_precision: Literal["float32", "autocast"] = "float32",
        mask_strategy: Literal["balanced", "rate"] = "balanced",
        mask_ratio: float = 0.3,
        balanced_zero_ratio: float = 0.9,
        zero_mask_rate: float = 0.03,
        mask_replacement: Sequence[float] = (1.0, 0.0, 0.0),
        max_encoder_length: int | None = None,
        read_depth_tokens: bool = False,
        decoder_depth_tokens: bool = False,
        head_norm: bool = False,
        target_sum: float = 1e4,
        gradient_checkpointing: bool = False,
        decoder_chunk_size: int | None = None,
    ):
        super().__init__(gene_token_ids, n_tokens)
        if decoder_chunk_size is not None and (isinstance(decoder_chunk_size, bool) or int(decoder_chunk_size) < 1):
            msg = f"`decoder_chunk_size` must be a positive number of cells or None, got {decoder_chunk_size!r}."
            raise ValueError(msg)
        self.decoder_chunk_size = None if decoder_chunk_size is None else int(decoder_chunk_size)
        # the memory probe (train/_memory.py) runs in evaluation mode and sets this to see the chunked layout
        self.chunk_in_eval = False
        # per-gene mean of the masked targets: the predictor that knows nothing about the cell
        self.trivial = TrivialBaseline(self.n_genes)
        check_choice("mask_strategy", mask_strategy, ("balanced", "rate"))
        check_choice("zero_embedding", zero_embedding, ("learned", "value"))
        check_choice("decoder_input", decoder_input, ("concat", "add"))
        check_choice("encoder_activation", encoder_activation, ("gelu", "relu"))
        if not 0.0 <= mask_ratio <= 1.0:
            msg = f"`mask_ratio` must be in [0, 1], got {mask_ratio}."
            raise ValueError(msg)
        rep = tuple(float(p) for p in mask_replacement)
        if len(rep) != 3 or min(rep) < 0 or not math.isclose(sum(rep), 1.0, abs_tol=1e-6):
            msg = f"`mask_replacement` must be three non-negative probabilities summing to 1, got {mask_replacement}."
            raise ValueError(msg)
        if max_encoder_length is not None and max_encoder_length < 1:
            msg = f"`max_encoder_length` must be a positive integer or None, got {max_encoder_length}."
            raise ValueError(msg)
        if decoder_depth_tokens and not read_depth_tokens:
            msg = "`decoder_depth_tokens=True` needs `read_depth_tokens=True` (there are no depth tokens otherwise)."
            raise ValueError(msg)
        self.encoder_dim = encoder_dim
        self.decoder_dim = decoder_dim
        self.mask_strategy = mask_strategy
        self.mask_ratio = float(mask_ratio)
        self.balanced_zero_ratio = float(balanced_zero_ratio)
        self.zero_mask_rate = float(zero_mask_rate)
        self.mask_replacement = rep
        self.max_encoder_length = max_encoder_length
        self.read_depth_tokens = read_depth_tokens
        self.n_special = 2 if read_depth_tokens else 0
        self.decoder_depth_tokens = bool(decoder_depth_tokens)
        self.target_sum = float(target_sum)
        self.zero_embedding_kind = zero_embedding
        self.decoder_input = decoder_input

        kwargs = {"alpha": bin_alpha} if value_embedding == "autobin" else {}
        self.value_embedding = make_value_embedding(value_embedding, encoder_dim, n_bins, **kwargs)
        self.gene_embedding = nn.Embedding(n_tokens, encoder_dim)
        if read_depth_tokens:
            self.depth_embedding = nn.Embedding(2, encoder_dim)
        self.encoder = TransformerEncoder(
            encoder_dim,
            encoder_layers,
            encoder_heads,
            encoder_ff or 4 * encoder_dim,
            dropout_rate=dropout_rate,
            activation=encoder_activation,
            norm_first=encoder_norm_first,
            final_norm=True,
            gradient_checkpointing=gradient_checkpointing,
        )
        if zero_embedding == "learned":
            self.zero_embedding = nn.Parameter(torch.randn(encoder_dim))
        n_proj_in = 2 * encoder_dim if decoder_input == "concat" else encoder_dim
        self.decoder_proj = nn.Linear(n_proj_in, decoder_dim)
        self.decoder = Performer(
            decoder_dim,
            decoder_layers,
            decoder_heads,
            decoder_ff or 4 * decoder_dim,
            dropout_rate=dropout_rate,
            nb_features=nb_features,
            feature_redraw_interval=feature_redraw_interval,
            final_norm=True,
            gradient_checkpointing=gradient_checkpointing,
            key_stabilizer=decoder_key_stabilizer,
            exact=decoder_exact_attention,
            feature_precision=decoder_feature_precision,
        )
        self.head_norm = nn.LayerNorm(decoder_dim) if head_norm else None
        self.head = nn.Linear(decoder_dim, 1)

    # ------------------------------------------------------------------ scvi-tools interface
    def _get_inference_input(self, tensors: dict[str, Tensor], **kwargs) -> dict[str, Tensor | None]:
        return {
            "x": tensors[REGISTRY_KEYS.X_KEY],
            "cell_seed": tensors.get(REGISTRY_KEYS_CF.CELL_SEED),
        }

    @auto_move_data
    def inference(
        self,
        x: Tensor,
        cell_seed: Tensor | None = None,
        apply_mask: bool = True,
        mask_ratio: float | None = None,
        pooling: Literal["max", "mean", "weighted", "decoder", "all"] = "max",
        target_depth: float | None = None,
        max_encoder_length: int | None = None,
        hidden: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Encode the unmasked non-zero genes.

        Parameters
        ----------
        x
            Raw counts ``(batch, n_vars)``.
        cell_seed
            Per-cell seeds ``(batch, 1)`` for reproducible evaluation masks.
        apply_mask
            Mask positions for prediction (training, masked-recovery evaluation). ``False`` encodes every non-zero
            gene (embeddings, imputation).
        mask_ratio
            Overrides the module's ``mask_ratio``.
        pooling
            Cell embedding from the encoder tokens: ``"max"`` (App. 4), ``"mean"``, ``"weighted"`` (mean weighted
            by the normalized expression of each token's gene) or ``"all"`` (concatenation of max and mean, preceded
            by the S and T tokens with ``read_depth_tokens``; scFoundation's pooling); or ``"decoder"``: the mean of
            the decoder's per-gene outputs over all genes (it sees the zero genes the encoder never sees).
        target_depth
            With ``read_depth_tokens``: ``T = log10(target_depth)`` instead of ``T = S``.
        max_encoder_length
            Overrides the module's ``max_encoder_length`` for this call (e.g. to embed bulk samples with a model
            trained without a cap); ``None`` keeps the module's.
        hidden
            Boolean ``(batch, n_genes)``: positions to show as ``[MASK]`` and score, instead of a mask drawn by
            :meth:`make_mask` (masked imputation); takes precedence over ``apply_mask``.

        Returns
        -------
        Dictionary with the encoder tokens ``(batch, length, encoder_dim)``, their padding mask, the cell embedding,
        the gene position of each token, the loss mask, the hidden positions, the decoder's input values and the
        targets (normalized values, ``(batch, n_genes)``).
        """
        values, library = self.normalize(x)
        if hidden is not None:
            if hidden.shape != values.shape:
                msg = f"`hidden` must have shape {tuple(values.shape)}, got {tuple(hidden.shape)}."
                raise ValueError(msg)
            mask = hidden = hidden.to(device=values.device, dtype=torch.bool)
            input_values = values
        elif apply_mask:
            mask, hidden, input_values = self.make_mask(values, cell_seed, mask_ratio)
        else:
            mask = torch.zeros_like(values, dtype=torch.bool)
            hidden, input_values = mask, values
        keep = (input_values > 0) & ~hidden
        if max_encoder_length is not None and max_encoder_length < 1:
            msg = f"`max_encoder_length` must be a positive integer or None, got {max_encoder_length}."
            raise ValueError(msg)
        index, padding = self.pack(keep, input_values, max_encoder_length)
        g = values.shape[-1]
        safe = index.clamp(max=g - 1)
        enc_values = input_values.gather(-1, safe)
        gene_ids = self.input_gene_ids[safe]
        tokens = self.value_embedding(enc_values, padding_mask=padding) + self.gene_embedding(gene_ids)
        if self.read_depth_tokens:
            s = torch.log10(library.clamp_min(1.0))
            t = s if target_depth is None else torch.full_like(s, math.log10(max(float(target_depth), 1.0)))
            depth = self.value_embedding(torch.stack([s, t], -1)) + self.depth_embedding.weight.to(tokens.dtype)
            tokens = torch.cat([depth.to(tokens.dtype), tokens], dim=1)
            padding = F.pad(padding, (self.n_special, 0), value=False)
        h = self.encoder(tokens, padding)
        if pooling == "decoder":
            z = self.decoder(self.decoder_tokens(h, index, hidden, input_values))
            cell = z[:, :g].float().mean(1)
        else:
            weights = F.pad(enc_values, (self.n_special, 0)) if pooling == "weighted" else None
            cell = self.pool(h, padding, pooling, weights=weights)
        return {
            MODULE_KEYS.TOKEN_EMBEDDING: h,
            MODULE_KEYS.PADDING_MASK: padding,
            MODULE_KEYS.CELL_EMBEDDING: cell,
            ENCODER_INDEX: index,
            MODULE_KEYS.MASK: mask,
            HIDDEN: hidden,
            INPUT_VALUES: input_values,
            MODULE_KEYS.TARGET: values,
        }

    def cell_embedding(
        self,
        tensors: dict[str, Tensor],
        pooling: Literal["max", "mean", "weighted", "decoder", "all"] = "max",
        max_encoder_length: int | None = None,
    ) -> Tensor:
        """Differentiable cell embedding: max-pooled encoder outputs over every non-zero gene (App. 4 and 8.1).

        Parameters
        ----------
        tensors
            Registered minibatch tensors.
        pooling
            As in :meth:`inference`.
        max_encoder_length
            As in :meth:`inference`.

        Returns
        -------
        Float32 tensor ``(batch, d)``.
        """
        out = self.inference(
            **self._get_inference_input(tensors),
            apply_mask=False,
            pooling=pooling,
            max_encoder_length=max_encoder_length,
        )
        return out[MODULE_KEYS.CELL_EMBEDDING]

    def context_embedding(
        self,
        x: Tensor,
        cell_seed: Tensor | None = None,
        *,
        layer: Literal["decoder", "encoder"] = "decoder",
        genes: Tensor | None = None,
        max_encoder_length: int | None = None,
    ) -> Tensor:
        """Per-gene context embeddings of unmasked cells (App. 8.2-8.3: the input of GEARS and DeepDDS).

        ``"decoder"``: the Performer decoder's output at every gene (after its final LayerNorm, before the
        expression head), shape ``(batch, n_selected, decoder_dim)``: every gene has one, zero or not.
        ``"encoder"``: the encoder's output token of each gene it saw (the non-zero genes, up to
        ``max_encoder_length``), scattered back to gene order, ``(batch, n_selected, encoder_dim)``; genes the
        encoder did not see (zero counts, or above the cap) are zero vectors.

        Parameters
        ----------
        x
            Raw counts ``(batch, n_vars)``.
        cell_seed
            Per-cell seeds ``(batch, 1)`` (unused: nothing is masked).
        layer
            ``"decoder"`` or ``"encoder"``.
        genes
            Positions among the module's genes (``0 … n_genes - 1``) to return, ``None`` for all.
        max_encoder_length
            As in :meth:`inference`.

        Returns
        -------
        Float32 tensor ``(batch, n_selected, d)``.
        """
        check_choice("layer", layer, ("decoder", "encoder"))
        inf = self.inference(x, cell_seed, apply_mask=False, max_encoder_length=max_encoder_length)
        g = inf[INPUT_VALUES].shape[-1]
        if layer == "decoder":
            z = self.decoder(self.decoder_tokens(**self._get_generative_input({}, inf)))[:, :g]
        else:
            h = inf[MODULE_KEYS.TOKEN_EMBEDDING][:, self.n_special :]
            z = scatter_to_genes(h.new_zeros(h.shape[0], g, h.shape[-1]), inf[ENCODER_INDEX], h)
        if genes is not None:
            z = z.index_select(1, genes.to(z.device))
        return z.float()

    def pool(
        self,
        h: Tensor,
        padding_mask: Tensor,
        pooling: Literal["max", "mean", "weighted", "all"] = "max",
        weights: Tensor | None = None,
    ) -> Tensor:
        """Cell embedding from encoder tokens, padding excluded; cells without any gene token get zeros.

        Parameters
        ----------
        h
            Encoder output ``(batch, length, encoder_dim)`` (read-depth tokens first when enabled).
        padding_mask
            ``(batch, length)``, ``True`` at padding.
        pooling
            ``"max"``, ``"mean"``, ``"weighted"`` or ``"all"`` (``[S, T,] max, mean`` concatenated).
        weights
            ``(batch, length)`` non-negative token weights for ``"weighted"`` (the normalized expression).

        Returns
        -------
        Float32 tensor ``(batch, d)`` with ``d = encoder_dim`` (``max``/``mean``) or ``(2 + n_special) · encoder_dim``.
        """
        check_choice("pooling", pooling, ("max", "mean", "weighted", "all"))
        h = h.float()
        genes, pad = h[:, self.n_special :], padding_mask[:, self.n_special :]
        valid = ~pad
        any_valid = valid.any(-1, keepdim=True)
        if pooling == "weighted":
            if weights is None:
                msg = "`pooling='weighted'` needs `weights` (the normalized expression of each token)."
                raise ValueError(msg)
            w = (weights[:, self.n_special :].float().clamp_min(0) * valid).unsqueeze(-1)
            return (genes * w).sum(1) / w.sum(1).clamp_min(1e-8)
        out = []
        if pooling in ("max", "all"):
            mx = genes.masked_fill(pad.unsqueeze(-1), float("-inf")).amax(1)
            out.append(torch.where(any_valid, mx, torch.zeros_like(mx)))
        if pooling in ("mean", "all"):
            w = valid.unsqueeze(-1).float()
            out.append((genes * w).sum(1) / w.sum(1).clamp_min(1.0))
        if pooling == "all" and self.n_special:
            out = [h[:, 0], h[:, 1], *out]
        return out[0] if len(out) == 1 else torch.cat(out, dim=-1)

    def _get_generative_input(self, tensors: dict[str, Tensor], inference_outputs: dict[str, Tensor], **kwargs):
        return {
            "token_embedding": inference_outputs[MODULE_KEYS.TOKEN_EMBEDDING],
            "encoder_index": inference_outputs[ENCODER_INDEX],
            "hidden": inference_outputs[HIDDEN],
            "input_values": inference_outputs[INPUT_VALUES],
        }

    def decoder_tokens(self, token_embedding: Tensor, encoder_index: Tensor, hidden: Tensor, input_values: Tensor):
        """Assemble the decoder input ``I_full`` (eq. 3), shape ``(batch, n_genes, decoder_dim)``.

        With ``decoder_depth_tokens`` the ``S`` and ``T`` tokens follow the genes:
        ``(batch, n_genes + 2, decoder_dim)``.
        """
        b, g = input_values.shape
        h = token_embedding[:, self.n_special :]
        dtype = h.dtype
        if self.zero_embedding_kind == "learned":
            zero = self.zero_embedding
        else:
            zero = self.value_embedding(torch.zeros(1, device=h.device))[0]
        base = torch.where(
            hidden.unsqueeze(-1), self.value_embedding.emb_mask.to(dtype), zero.to(dtype)
        )  # (b, g, d): [MASK] or zero embedding
        # non-zero genes not seen by the encoder (above max_encoder_length) enter through their value embedding
        seen = torch.ones_like(encoder_index, dtype=torch.bool)
        in_encoder = scatter_to_genes(torch.zeros(b, g, dtype=torch.bool, device=h.device), encoder_index, seen)
        unseen = (input_values > 0) & ~hidden & ~in_encoder
        if unseen.any():
            base = torch.where(unseen.unsqueeze(-1), self.value_embedding(input_values).to(dtype), base)
        full = scatter_to_genes(base, encoder_index, h)
        genes = self.gene_embedding(self.input_gene_ids)
        if self.decoder_depth_tokens:
            full = torch.cat([full, token_embedding[:, : self.n_special]], dim=1)
            genes = torch.cat([genes, self.depth_embedding.weight.to(genes.dtype)], dim=0)
        w, bias = self.decoder_proj.weight, self.decoder_proj.bias
        if self.decoder_input == "concat":
            d = self.encoder_dim
            # W_p [token ⊕ gene] = W_tok token + W_gene gene: the gene half is computed once for the batch
            return F.linear(full, w[:, :d]) + F.linear(genes, w[:, d:], bias).unsqueeze(0)
        return F.linear(full + genes.unsqueeze(0).to(full.dtype), w, bias)

    @auto_move_data
    def generative(
        self, token_embedding: Tensor, encoder_index: Tensor, hidden: Tensor, input_values: Tensor
    ) -> dict[str, Tensor]:
        """Decode all genes.

        Returns
        -------
        ``{"prediction": (batch, n_genes)}``, float32 predictions of the normalized expression.
        """
        self.decoder._check_redraw()  # once per step, whether or not the minibatch is decoded in chunks
        chunk = self.decoder_chunk_size
        args = (token_embedding, encoder_index, hidden, input_values)
        chunked = (self.training or self.chunk_in_eval) and torch.is_grad_enabled()
        if chunk is None or not chunked or input_values.shape[0] <= chunk:
            return {MODULE_KEYS.PREDICTION: self._decode(*args)}
        parts = [
            torch.utils.checkpoint.checkpoint(
                self._decode, *(a[i : i + chunk] for a in args), checkpoint_blocks=False, use_reentrant=False
            )
            for i in range(0, input_values.shape[0], chunk)
        ]
        return {MODULE_KEYS.PREDICTION: torch.cat(parts)}

    @contextlib.contextmanager
    def chunk_probe(self):
        """Decode one cell per checkpointed chunk, in evaluation mode too: what the memory probe measures."""
        saved = self.decoder_chunk_size, self.chunk_in_eval
        self.decoder_chunk_size, self.chunk_in_eval = 1, True
        try:
            yield
        finally:
            self.decoder_chunk_size, self.chunk_in_eval = saved

    def _decode(
        self,
        token_embedding: Tensor,
        encoder_index: Tensor,
        hidden: Tensor,
        input_values: Tensor,
        checkpoint_blocks: bool | None = None,
    ) -> Tensor:
        """Decoder input, Performer decoder (no feature redraw here) and output head: ``(batch, n_genes)`` float32."""
        z = self.decoder_tokens(token_embedding, encoder_index, hidden, input_values)
        z = self.decoder.run_blocks(z, checkpoint_blocks=checkpoint_blocks)
        if self.head_norm is not None:
            z = self.head_norm(z)
        return self.head(z[:, : input_values.shape[-1]]).squeeze(-1).float()

    def loss(
        self,
        tensors: dict[str, Tensor],
        inference_outputs: dict[str, Tensor],
        generative_outputs: dict[str, Tensor],
        **kwargs,
    ) -> LossOutput:
        """Mean squared error on the masked positions (eq. 5); per-cell means as ``reconstruction_loss``.

        In evaluation, ``extra_metrics["trivial_loss"]`` is the same error for each gene's mean over the masked
        training positions (:class:`~cellformers.nn.TrivialBaseline`), also split into zero and non-zero targets.
        """
        pred = generative_outputs[MODULE_KEYS.PREDICTION].float()
        target = inference_outputs[MODULE_KEYS.TARGET]
        mask = inference_outputs[MODULE_KEYS.MASK]
        se = (pred - target).pow(2) * mask
        n_cell = mask.sum(-1)
        per_cell = se.sum(-1) / n_cell.clamp_min(1)
        loss = se.sum() / mask.sum().clamp_min(1)
        nz = mask & (target > 0)
        z = mask & (target <= 0)
        extra = {
            "masked_mse": loss.detach(),
            "masked_mse_nonzero": (se * nz).sum().detach() / nz.sum().clamp_min(1),
            "masked_mse_zero": (se * z).sum().detach() / z.sum().clamp_min(1),
            "encoder_length": (~inference_outputs[MODULE_KEYS.PADDING_MASK]).sum(-1).float().mean().detach(),
            "pretext_loss": loss.detach(),
        }
        trivial = self.score_trivial(self.trivial, target, mask)
        if trivial is not None:
            extra["trivial_loss"] = trivial
            for name, part in (("nonzero", nz), ("zero", z)):
                extra[f"masked_mse_{name}_trivial"] = self.score_trivial(self.trivial, target, part)
        return LossOutput(loss=loss, reconstruction_loss=per_cell, extra_metrics=extra)
