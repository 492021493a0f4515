"""Convert scFoundation's ``models.ckpt`` (the ``cell``, ``gene`` and ``rde`` weight sets) into :class:`XTrimoGene`.

scFoundation :cite:p:`Hao24` is the public successor of xTrimoGene :cite:p:`Gong23` (model type ``mae_autobin``).
Its checkpoint file holds one entry per weight set, each a PyTorch Lightning-style dictionary: ``config`` (with
``model``, ``model_config[<model>]`` and ``dataset_config["rnaseq"]``) and ``state_dict`` (keys prefixed
``model.``); entries already flattened to ``config`` + ``model_state_dict`` (what ``load.py::convertconfig``
returns) are accepted too.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import torch

from cellformers.checkpoint import CheckpointError

from ._convert import (
    check_unused,
    count_layers,
    finish_conversion,
    load_upstream,
    resolve_vocab,
    strip_prefix,
    tensor,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from cellformers.data import GeneVocab
    from cellformers.model import XTrimoGene

logger = logging.getLogger(__name__)

__all__ = ["SCFOUNDATION_KEYS", "SCFOUNDATION_OPTIONS", "convert_scfoundation"]

#: Weight sets of scFoundation's ``models.ckpt``: cell embeddings (``--version ce``), read-depth enhancement
#: (``--version rde``) and gene embeddings / expression (``--output_type gene``).
SCFOUNDATION_KEYS = ("cell", "gene", "rde")

#: Options of :class:`~cellformers.module.XTrimoGeneModule` that make it compute what scFoundation computes
#: (set by :func:`convert_scfoundation`; the layer sizes, heads, bins and random features come from the checkpoint).
SCFOUNDATION_OPTIONS: dict[str, Any] = {
    "encoder_norm_first": False,  # nn.TransformerEncoderLayer: post-norm
    "encoder_activation": "relu",
    "value_embedding": "autobin",
    "zero_embedding": "value",  # zeros enter the decoder as the value embedding of 0
    "decoder_input": "add",  # decoder_embed(token + pos_emb)
    "read_depth_tokens": True,  # S = log10(total counts) and T, the last two of the 19,266 inputs
    "decoder_depth_tokens": True,  # the decoder runs over all 19,266 positions
    "head_norm": True,  # MaeAutobin.norm between the Performer's own LayerNorm and to_final
    "decoder_key_stabilizer": "cell",  # performer_pytorch's key stabilizer, for one cell at a time
    "decoder_exact_attention": "never",  # performer_pytorch's FAVOR+ at every length, as trained
    "mask_strategy": "rate",  # 30% of non-zeros, 3% of zeros, BERT-style replacement
    "mask_replacement": (0.8, 0.1, 0.1),
}

_ENC = "encoder.transformer_encoder."
_DEC = "decoder.performer.net.layers."


def _entry(data: Mapping, key: str | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(flat config, state dict without the "model." prefix)`` of one weight set."""
    if key is not None and key in data and isinstance(data[key], Mapping):
        data = data[key]
    elif key is not None and not ({"state_dict", "model_state_dict"} & set(data)):
        found = sorted(str(k) for k in data)[:10]
        msg = (
            f"The scFoundation checkpoint has no weight set {key!r} (found keys {found}); `key` must be one of "
            f"{list(SCFOUNDATION_KEYS)} for models.ckpt, or None for a single-model file."
        )
        raise CheckpointError(msg)
    config = data.get("config", {})
    if not isinstance(config, Mapping):
        msg = "The scFoundation checkpoint's `config` is not a dictionary."
        raise CheckpointError(msg)
    config = dict(config)
    if "model_config" in config:  # Lightning layout (load.py::convertconfig flattens it the same way)
        model_type = config.get("model")
        flat = dict(config["model_config"].get(model_type, {}))
        flat.update(config.get("dataset_config", {}).get("rnaseq", {}))
        flat.setdefault("model", model_type)
        config = flat
    if "model_state_dict" in data:
        state = dict(data["model_state_dict"])
    elif "state_dict" in data:
        state = strip_prefix(data["state_dict"], "model.")
    else:
        msg = "The scFoundation checkpoint has neither `state_dict` nor `model_state_dict`."
        raise CheckpointError(msg)
    return config, strip_prefix(state, "module.")


def _sub(config: Mapping, name: str) -> Mapping:
    sub = config.get(name, {})
    return sub if isinstance(sub, Mapping) else {}


def _unsupported(key: str) -> str | None:
    if ".local_attn" in key:
        return "local attention heads of the Performer decoder"
    if key.startswith("pert") or "pert_" in key:
        return "perturbation adapter"
    if key.startswith(("encoder.", "decoder.")):
        return "encoder/decoder layers of another layout (ReZero, ScaleNorm or GLU blocks)"
    return None


def convert_scfoundation(
    checkpoint: str | os.PathLike | Mapping,
    adata: AnnData | None = None,
    *,
    key: Literal["cell", "gene", "rde"] | None = "cell",
    vocab: GeneVocab | str | os.PathLike = "scfoundation-19264",
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = True,
    min_gene_coverage: float = 0.5,
    **module_kwargs,
) -> XTrimoGene:
    """Convert a scFoundation checkpoint (``models.ckpt``) into an :class:`~cellformers.model.XTrimoGene`.

    scFoundation's ``MaeAutobin`` is xTrimoGene's architecture with the options in :data:`SCFOUNDATION_OPTIONS`:
    a post-norm ReLU encoder with a final LayerNorm; auto-discretization value embedding (``token_emb``) whose
    ``[MASK]``/``[PAD]`` vectors become the module's; per-gene identity vectors (``pos_emb``, rows ``0 … 19,263``)
    as the gene embedding; the ``T`` (row 19,264) and ``S`` (row 19,265) read-depth tokens in the encoder *and*
    decoder; zeros entering the decoder through the value embedding of 0; ``decoder_embed(token + pos_emb)``; a
    pre-norm Performer decoder (``to_q``/``to_k``/``to_v`` stacked into one projection, the random features
    ``projection_matrix`` kept); and ``norm`` + ``to_final`` as output head. Layer counts, widths, feed-forward
    widths, bins and random features are read from the weights; heads and ``bin_alpha`` from the config.

    With these options the converted model computes scFoundation's forward pass. The cell embedding of
    ``model.get_latent_representation(pooling="all")`` is scFoundation's ``get_embedding.py --pool_type all``
    (``[S, T, max, mean]``, 4 × 768), padding excluded so cells can be batched; ``T = S`` (the default) is
    ``--tgthighres f1`` and ``target_depth=10**v`` is ``--tgthighres t<v>``. ``get_imputed_expression(mode="visible")`` is the
    decoder output of ``--output_type gene_expression``. Values are normalized as by ``--pre_normalized F``
    (``log1p(x / Σx · 1e4)``, the sum over the model's 19,264 genes once the data are aligned to them). The one
    difference is in the Performer: the stabilizer of the key features is taken per cell and head rather than over
    the whole minibatch (so results do not depend on the other cells), which changes the features only through their
    ``1e-4`` offset.

    Parameters
    ----------
    checkpoint
        Path of ``models.ckpt`` (read with ``torch.load(weights_only=True)``; nothing else is unpickled), or its
        already loaded contents.
    adata
        Data to attach (raw counts), aligned to the model's genes like in
        :meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained`; ``None`` returns the model without data.
    key
        Weight set: ``"cell"`` (cell embeddings), ``"gene"`` (gene embeddings, expression) or ``"rde"`` (read-depth
        enhancement); ``None`` for a file holding a single model (scFoundation's ``--version noversion``).
    vocab
        The 19,264 genes in the order of scFoundation's gene index: the reference name ``"scfoundation-19264"``
        (downloaded once and checked against its pinned sha256), a :class:`~cellformers.data.GeneVocab`, or a
        vocabulary JSON file. Its gene count must match the checkpoint's ``pos_emb`` (``n_genes + 3`` rows).
    out
        Directory to write the converted checkpoint to (:meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`
        format, ready for :func:`~cellformers.pretrained.pack_checkpoint`); ``None`` converts in a temporary folder.
    overwrite
        Replace a checkpoint at ``out``.
    strict
        Refuse checkpoints holding weights without a counterpart (e.g. perturbation adapters); ``False`` drops them
        with a warning.
    min_gene_coverage
        Smallest fraction of the 19,264 genes ``adata`` must contain (as in
        :meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained`).
    **module_kwargs
        Options of :class:`~cellformers.module.XTrimoGeneModule` for further training (``mask_ratio``,
        ``dropout_rate``, ``gradient_checkpointing``, ``max_encoder_length``, …). Architecture options are taken
        from the checkpoint.

    Returns
    -------
    The model, in eval mode; ``model.pretrained_info_`` records the source and weight set.

    Raises
    ------
    CheckpointError
        The file is not a scFoundation ``mae_autobin`` checkpoint, its genes do not match ``vocab``, or it holds
        pieces cellformers cannot represent (named in the message).
    UntrustedCheckpointError
        The file holds pickled objects other than tensors and plain containers.

    Examples
    --------
    The released ``models.ckpt`` holds three weight sets (``"cell"``, ``"gene"``, ``"rde"``):

    >>> model = cf.pretrained.convert_scfoundation("models.ckpt", key="cell", out="scfoundation_cell")  # doctest: +SKIP
    >>> model = cf.model.XTrimoGene.from_pretrained("scfoundation_cell", adata)  # doctest: +SKIP
    >>> adata.obsm["X_scfoundation"] = model.get_latent_representation(pooling="all")  # doctest: +SKIP

    A file that is not such a checkpoint is refused before anything is built:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import torch
    >>> import cellformers as cf
    >>> path = Path(tempfile.mkdtemp()) / "models.ckpt"
    >>> torch.save({"gene": {"state_dict": {"model.x": torch.ones(1)}}}, path)
    >>> try:
    ...     cf.pretrained.convert_scfoundation(path, key="cell")
    ... except cf.CheckpointError as err:
    ...     print(err)
    The scFoundation checkpoint has no weight set 'cell' (found keys ['gene']); `key` must be one of ['cell', 'gene', 'rde'] for models.ckpt, or None for a single-model file.
    """
    from cellformers.model import XTrimoGene

    if key is not None and key not in SCFOUNDATION_KEYS:
        msg = f"`key` must be one of {list(SCFOUNDATION_KEYS)} or None, got {key!r}."
        raise ValueError(msg)
    what = f"scFoundation checkpoint ({key or 'single model'})"
    config, state = _entry(load_upstream(checkpoint, what), key)
    model_type = config.get("model", "mae_autobin")
    if model_type != "mae_autobin":
        msg = f"{what} is a {model_type!r} model; only scFoundation's 'mae_autobin' architecture can be converted."
        raise CheckpointError(msg)
    enc_cfg, dec_cfg = _sub(config, "encoder"), _sub(config, "decoder")
    for name, sub, kind in (("encoder", enc_cfg, "transformer"), ("decoder", dec_cfg, "performer")):
        module_type = sub.get("module_type", kind)
        if module_type != kind:
            msg = (
                f"{what}: the {name} is a {module_type!r} module; XTrimoGene has a full-attention transformer "
                "encoder and a Performer decoder, so only that combination converts."
            )
            raise CheckpointError(msg)

    t = lambda k: tensor(state, k, what)
    pos = t("pos_emb.weight")
    seq_len = pos.shape[0] - 1
    n_genes = seq_len - 2
    if "seq_len" in config and int(config["seq_len"]) != seq_len:
        msg = f"{what}: config seq_len {config['seq_len']} does not match pos_emb ({pos.shape[0]} rows)."
        raise CheckpointError(msg)
    gene_vocab = resolve_vocab(vocab)
    if gene_vocab.n_genes != n_genes:
        msg = (
            f"{what} has {n_genes} gene positions (+ T, S and padding in pos_emb), but `vocab` has "
            f"{gene_vocab.n_genes} genes. Pass the gene list the checkpoint was trained with (scFoundation: "
            "'scfoundation-19264')."
        )
        raise CheckpointError(msg)
    enc_layers = count_layers(state, _ENC)
    dec_layers = count_layers(state, _DEC)
    if enc_layers == 0 or dec_layers == 0:
        msg = f"{what} has no encoder ({_ENC}…) or no Performer decoder ({_DEC}…) layers."
        raise CheckpointError(msg)
    for name, sub in (("encoder", enc_cfg), ("decoder", dec_cfg)):
        if "heads" not in sub:
            msg = f"{what}: the config does not give the number of {name} heads (`config['{name}']['heads']`)."
            raise CheckpointError(msg)
    enc_heads, dec_heads = int(enc_cfg["heads"]), int(dec_cfg["heads"])
    enc_dim = pos.shape[1]
    dec_dim = t("decoder_embed.weight").shape[0]
    q0 = t(f"{_DEC}0.0.fn.to_q.weight")
    if q0.shape[0] != dec_dim:
        msg = (
            f"{what}: the Performer's attention width ({q0.shape[0]} = heads x dim_head) differs from the decoder "
            f"width ({dec_dim}); XTrimoGene's Performer needs dim_head = width / heads."
        )
        raise CheckpointError(msg)
    w1 = t(f"{_DEC}0.1.fn.fn.w1.weight")
    w2 = t(f"{_DEC}0.1.fn.fn.w2.weight")
    if w1.shape[0] != w2.shape[1]:
        msg = f"{what}: the Performer feed-forward is gated (GLU), which XTrimoGene's Performer does not have."
        raise CheckpointError(msg)
    n_bins = t("token_emb.emb.weight").shape[0]

    options = {
        **SCFOUNDATION_OPTIONS,
        "encoder_layers": enc_layers,
        "encoder_heads": enc_heads,
        "encoder_dim": enc_dim,
        "encoder_ff": t(f"{_ENC}0.linear1.weight").shape[0],
        "decoder_layers": dec_layers,
        "decoder_heads": dec_heads,
        "decoder_dim": dec_dim,
        "decoder_ff": w1.shape[0],
        "nb_features": t(f"{_DEC}0.0.fn.fast_attention.projection_matrix").shape[0],
        "n_bins": n_bins,
        "bin_alpha": float(config.get("bin_alpha", 1.0)),
        "mask_ratio": float(config.get("value_mask_prob", 0.3)),
        "zero_mask_rate": float(config.get("zero_mask_prob", 0.03)),
    }
    fixed = {k for k in options if k not in ("mask_ratio", "zero_mask_rate", "mask_strategy", "mask_replacement")}
    clash = sorted(k for k in module_kwargs if k in fixed)
    if clash:
        msg = f"{clash} are fixed by the checkpoint's architecture and cannot be passed to `convert_scfoundation`."
        raise ValueError(msg)
    options.update(module_kwargs)

    mapped, used = _map_weights(state, gene_vocab, n_genes, enc_layers, dec_layers, what)
    check_unused(
        state,
        used,
        ignored=lambda k: k.endswith("calls_since_last_redraw"),
        unsupported=_unsupported,
        strict=strict,
        what=what,
    )
    source = checkpoint if not isinstance(checkpoint, Mapping) else "<in memory>"
    info = {"converted_from": "scFoundation", "source": os.fspath(source), "weight_set": key}
    return finish_conversion(
        lambda data: _build(XTrimoGene, data, gene_vocab, options),
        mapped,
        gene_vocab,
        adata=adata,
        out=out,
        overwrite=overwrite,
        what=what,
        info=info,
        min_gene_coverage=min_gene_coverage,
    )


def _build(cls, data, vocab, options):
    cls.setup_anndata(data)
    return cls(data, vocab=vocab, preset="100M", **options)


def _map_weights(
    state: Mapping[str, Any], vocab, n_genes: int, enc_layers: int, dec_layers: int, what: str
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map scFoundation weight names to XTrimoGeneModule weight names; also return the upstream keys used."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return tensor(state, key, what)

    out: dict[str, torch.Tensor] = {}
    # value embedding (AutoDiscretizationEmbedding2)
    out["value_embedding.w1.weight"] = take("token_emb.mlp.weight")
    out["value_embedding.w1.bias"] = take("token_emb.mlp.bias")
    out["value_embedding.w2.weight"] = take("token_emb.mlp2.weight")
    out["value_embedding.w2.bias"] = take("token_emb.mlp2.bias")
    out["value_embedding.table.weight"] = take("token_emb.emb.weight")
    out["value_embedding.emb_mask"] = take("token_emb.emb_mask.weight").reshape(-1)
    out["value_embedding.emb_pad"] = take("token_emb.emb_pad.weight").reshape(-1)
    # gene identity: pos_emb rows 0 … n-1 are the genes, n = T, n + 1 = S, n + 2 = the padding slot
    pos = take("pos_emb.weight")
    table = torch.zeros(len(vocab), pos.shape[1])
    table[:n_genes] = pos[:n_genes]
    table[vocab.pad_id] = pos[n_genes + 2]
    out["gene_embedding.weight"] = table
    out["depth_embedding.weight"] = torch.stack([pos[n_genes + 1], pos[n_genes]])  # [S, T]
    # encoder: nn.TransformerEncoderLayer (post-norm) + final LayerNorm
    for i in range(enc_layers):
        src, dst = f"{_ENC}{i}.", f"encoder.layers.{i}."
        out[dst + "attn.qkv.weight"] = take(src + "self_attn.in_proj_weight")
        out[dst + "attn.qkv.bias"] = take(src + "self_attn.in_proj_bias")
        out[dst + "attn.out.weight"] = take(src + "self_attn.out_proj.weight")
        out[dst + "attn.out.bias"] = take(src + "self_attn.out_proj.bias")
        for a, b in (("linear1", "ff.0"), ("linear2", "ff.3"), ("norm1", "norm1"), ("norm2", "norm2")):
            out[f"{dst}{b}.weight"] = take(f"{src}{a}.weight")
            out[f"{dst}{b}.bias"] = take(f"{src}{a}.bias")
    for p in ("weight", "bias"):
        out[f"encoder.norm.{p}"] = take(f"encoder.norm.{p}")
        out[f"decoder_proj.{p}"] = take(f"decoder_embed.{p}")
        out[f"decoder.norm.{p}"] = take(f"decoder.norm.{p}")
        out[f"head_norm.{p}"] = take(f"norm.{p}")
        out[f"head.{p}"] = take(f"to_final.{p}")
    # decoder: performer_pytorch layout, [PreLayerNorm(SelfAttention), PreLayerNorm(Chunk(FeedForward))] per layer
    for i in range(dec_layers):
        src, dst = f"{_DEC}{i}.", f"decoder.layers.{i}."
        attn = src + "0.fn."
        weights = [take(f"{attn}to_{x}.weight") for x in "qkv"]
        out[dst + "attn.qkv.weight"] = torch.cat(weights, 0)
        biases = []
        for x, w in zip("qkv", weights, strict=True):
            key = f"{attn}to_{x}.bias"
            biases.append(take(key) if key in state else torch.zeros(w.shape[0]))  # qkv_bias=False: no bias
        out[dst + "attn.qkv.bias"] = torch.cat(biases, 0)
        out[dst + "attn.out.weight"] = take(attn + "to_out.weight")
        out[dst + "attn.out.bias"] = take(attn + "to_out.bias")
        out[dst + "attn.projection"] = take(attn + "fast_attention.projection_matrix")
        for p in ("weight", "bias"):
            out[f"{dst}norm1.{p}"] = take(f"{src}0.norm.{p}")
            out[f"{dst}norm2.{p}"] = take(f"{src}1.norm.{p}")
            out[f"{dst}ff.0.{p}"] = take(f"{src}1.fn.fn.w1.{p}")
            out[f"{dst}ff.3.{p}"] = take(f"{src}1.fn.fn.w2.{p}")
    return out, used
