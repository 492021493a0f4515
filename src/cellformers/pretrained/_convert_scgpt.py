"""Convert a scGPT checkpoint (``best_model.pt`` + ``args.json`` + ``vocab.json``) into :class:`ScFormer`.

scGPT :cite:p:`Cui24` is the public successor of scFormer :cite:p:`Cui22`. Its ``TransformerModel`` is scFormer's
encoder with the options in :data:`SCGPT_OPTIONS`; the converter maps its weights, including those of the
flash-attention layers (``self_attn.Wqkv``, also ``self_attn._impl.Wqkv`` of newer versions) and of
``nn.TransformerEncoderLayer`` (``self_attn.in_proj_weight``), and reorders the gene-token table to cellformers'
vocabulary layout (genes first, then the special tokens).
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from cellformers.checkpoint import CheckpointError

from ._convert import check_unused, count_layers, finish_conversion, load_upstream, strip_prefix, tensor

if TYPE_CHECKING:
    from anndata import AnnData

    from cellformers.model import ScFormer

logger = logging.getLogger(__name__)

__all__ = ["SCGPT_OPTIONS", "convert_scgpt"]

#: Options of :class:`~cellformers.model.ScFormer` that make it compute what scGPT's ``TransformerModel`` computes
#: (set by :func:`convert_scgpt`; sizes, heads and bins come from the checkpoint and its ``args.json``).
SCGPT_OPTIONS: dict[str, Any] = {
    "norm_first": False,  # post-norm blocks, no final LayerNorm (scGPT's default pre_norm=False)
    "activation": "relu",
    "value_scale": 1.0,  # bin indices enter the continuous value encoder unscaled
    "mgm_loss": "mse",  # ExprDecoder predicts one scalar per gene (masked MSE)
    "include_zero_genes": False,  # pre-training and embed_data use the expressed genes only
    "pooling": "cls",
    "use_ecs": False,
    "use_dar": False,
    "use_dsbn": False,
}

_SPECIALS = ("<pad>", "<cls>", "<eoc>")  # appended by scGPT when vocab.json lacks them
_LAYERS = "transformer_encoder.layers."


def _read_json(source: str | os.PathLike | Mapping, what: str) -> dict:
    if isinstance(source, Mapping):
        return dict(source)
    path = Path(source).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        msg = f"Cannot read the scGPT {what} {path} ({type(err).__name__}: {err})."
        raise CheckpointError(msg) from err
    if not isinstance(data, dict):
        msg = f"The scGPT {what} {path} is not a JSON object."
        raise CheckpointError(msg)
    return data


def _arg(args: Mapping, *names: str, default: Any = None) -> Any:
    for name in names:
        if name in args and args[name] is not None:
            return args[name]
    return default


def _unsupported(key: str) -> str | None:
    pieces = {
        "cls_decoder.": "cell-type classifier head (cls_decoder)",
        "grad_reverse_discriminator.": "adversarial batch discriminator (DAB)",
        "decoder.zero_logit.": "explicit zero-probability head of the expression decoder",
        "mvc_decoder.W_zero_logit.": "explicit zero-probability head of the MVC decoder",
        "batch_encoder.": "batch embedding of batch-conditional decoders (use_batch_labels)",
        "pert_encoder.": "perturbation-flag embedding (TransformerGenerator)",
        "sim.": "similarity head",
    }
    for prefix, piece in pieces.items():
        if key.startswith(prefix):
            return piece
    if key.startswith(("decoder.", "mvc_decoder.")):
        return "decoder weights of an unsupported style"
    return None


def convert_scgpt(
    model_dir: str | os.PathLike | None = None,
    adata: AnnData | None = None,
    *,
    weights: str | os.PathLike | Mapping | None = None,
    args: str | os.PathLike | Mapping | None = None,
    vocab: str | os.PathLike | Mapping | None = None,
    out: str | os.PathLike | None = None,
    overwrite: bool = False,
    strict: bool = True,
    cls_value: float = 0.0,
    min_gene_coverage: float = 0.0,
    **model_kwargs,
) -> ScFormer:
    """Convert a scGPT checkpoint into a :class:`~cellformers.model.ScFormer`.

    scGPT's ``TransformerModel`` (continuous value encoder, ``input_emb_style="continuous"``, or its categorical
    variant; ``cell_emb_style="cls"``; post-norm blocks) is scFormer with the options in :data:`SCGPT_OPTIONS`:

    - ``encoder.embedding`` + ``encoder.enc_norm`` → the gene-token embedding and its LayerNorm, rows reordered to
      cellformers' vocabulary (the genes of ``vocab.json`` in id order, then ``<pad>``, ``<cls>``, ``<eoc>`` and
      ``<mask>``, unused);
    - ``value_encoder.linear1/linear2/norm`` → the continuous value encoder fed unscaled bin indices
      (``value_scale=1``), whose ``<mask>`` vector is computed as scGPT's embedding of ``mask_value`` (−1), so
      masked inputs match too;
    - ``transformer_encoder.layers.*`` → post-norm ReLU blocks; the attention input projection is taken from
      ``self_attn.in_proj_weight`` (PyTorch layers), ``self_attn.Wqkv`` (flash-attention 1.x) or
      ``self_attn._impl.Wqkv`` (newer scGPT), which all stack query, key and value in that order;
    - ``decoder.fc`` → the MGM head with one output (``mgm_loss="mse"``), ``mvc_decoder`` ("inner product") →
      the MVC head (its ``W`` transposed).

    The cell embedding is the ``<cls>`` output before scGPT's L2 normalization. The ``<cls>`` token's input value is
    ``cls_value``: ``0`` as in scGPT's ``tokenize_batch`` (training, fine-tuning), or ``args["pad_value"]`` (−2)
    to reproduce ``scgpt.tasks.embed_data``. Sequences hold the expressed genes (``include_zero_genes=False``), at
    most ``max_seq_len - 1`` of them besides ``<cls>``. Values are binned by cellformers' per-cell equal-frequency
    binning (scFormer eq. 2); given the same bins the forward pass is scGPT's, but scGPT's ``_digitize`` places tied
    counts at random, so its bins, and hence its embeddings, differ slightly from run to run and from ours.

    Not converted (a :class:`~cellformers.pretrained.CheckpointError` names them): domain-specific batch norm
    (``dsbn``, it changes the embeddings); pre-norm checkpoints (scGPT's ``pre_norm=True`` layer normalizes the
    residual stream itself, unlike standard pre-norm blocks); the ``"scaling"`` value style; ``"avg-pool"`` and
    ``"w-pool"`` cell embeddings; ``"concat query"``/``"sum query"`` MVC decoders. Heads that do not affect the
    embedding (``cls_decoder``, the DAB discriminator, explicit zero-probability heads, batch-conditional
    decoders) are refused with ``strict=True`` and dropped with ``strict=False``; ``flag_encoder`` (generative
    training only) is ignored.

    Parameters
    ----------
    model_dir
        Folder holding ``best_model.pt``, ``args.json`` and ``vocab.json`` (scGPT's released layout).
    adata
        Data to attach (raw counts; genes matched by symbol), as in
        :meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained`; ``None`` returns the model without data.
    weights
        ``best_model.pt`` (a state dict, read with ``torch.load(weights_only=True)``) or the state dict itself;
        default ``model_dir / "best_model.pt"``.
    args
        ``args.json`` or its contents; default ``model_dir / "args.json"``.
    vocab
        ``vocab.json`` or its ``{token: id}`` contents; default ``model_dir / "vocab.json"``.
    out
        Directory to write the converted checkpoint to; ``None`` converts in a temporary folder.
    overwrite
        Replace a checkpoint at ``out``.
    strict
        Refuse weights without a counterpart (see above); ``False`` drops them with a warning.
    cls_value
        Input value of ``<cls>`` (see above).
    min_gene_coverage
        Smallest fraction of the checkpoint's genes ``adata`` must contain (see
        :meth:`~cellformers.pretrained.PretrainedMixin.from_pretrained`). scGPT's vocabularies hold 48,000-60,000
        genes, of which a dataset measures far fewer, hence ``0`` by default; pass a small value (e.g. ``0.1``) to
        ``from_pretrained`` too.
    **model_kwargs
        Other options of :class:`~cellformers.model.ScFormer` for further training (``mask_ratio``, ``max_length``,
        ``dropout_rate``, ``use_ecs``, …). Architecture options are taken from the checkpoint.

    Returns
    -------
    The model, in eval mode; ``model.pretrained_info_`` records the source.

    Examples
    --------
    A released model is a folder (``best_model.pt``, ``args.json``, ``vocab.json``):

    >>> model = cf.pretrained.convert_scgpt("scGPT_human/", out="scgpt_human")  # doctest: +SKIP
    >>> model = cf.model.ScFormer.from_pretrained("scgpt_human", adata)  # doctest: +SKIP
    >>> adata.obsm["X_scgpt"] = model.get_latent_representation()  # doctest: +SKIP

    The three parts can also be passed as objects; here a tiny random checkpoint with scGPT's names (one PyTorch
    encoder layer, 20 genes, no MVC head):

    >>> import torch
    >>> import cellformers as cf
    >>> d = 8
    >>> vocab = {gene: i for i, gene in enumerate(cf.data.synthetic_gene_symbols()[:20])} | {"<pad>": 20, "<cls>": 21}
    >>> layer = torch.nn.TransformerEncoderLayer(d_model=d, nhead=2, dim_feedforward=16)
    >>> state = {f"transformer_encoder.layers.0.{k}": v for k, v in layer.state_dict().items()}
    >>> norm = torch.nn.LayerNorm(d).state_dict()
    >>> state |= {f"encoder.enc_norm.{k}": v for k, v in norm.items()} | {
    ...     f"value_encoder.norm.{k}": v for k, v in norm.items()
    ... }
    >>> state |= {
    ...     "encoder.embedding.weight": torch.randn(len(vocab) + 1, d),  # + <eoc>
    ...     "value_encoder.linear1.weight": torch.randn(d, 1),
    ...     "value_encoder.linear1.bias": torch.zeros(d),
    ...     "value_encoder.linear2.weight": torch.randn(d, d),
    ...     "value_encoder.linear2.bias": torch.zeros(d),
    ...     "decoder.fc.0.weight": torch.randn(d, d),
    ...     "decoder.fc.0.bias": torch.zeros(d),
    ...     "decoder.fc.2.weight": torch.randn(d, d),
    ...     "decoder.fc.2.bias": torch.zeros(d),
    ...     "decoder.fc.4.weight": torch.randn(1, d),
    ...     "decoder.fc.4.bias": torch.zeros(1),
    ... }
    >>> args = {"embsize": d, "nheads": 2, "d_hid": 16, "nlayers": 1, "n_bins": 51, "MVC": False}
    >>> adata = cf.data.synthetic_counts(n_cells=20, n_genes=30)
    >>> model = cf.pretrained.convert_scgpt(weights=state, args=args, vocab=vocab, adata=adata)
    >>> model.get_latent_representation().shape  # the <cls> output
    (20, 8)
    >>> model.pretrained_info_["converted_from"]
    'scGPT'
    """
    from cellformers.data import GeneVocab
    from cellformers.model import ScFormer

    root = None if model_dir is None else Path(model_dir).expanduser()
    if root is not None and not root.is_dir():
        msg = f"`model_dir` {root} is not a folder (expected best_model.pt, args.json and vocab.json in it)."
        raise CheckpointError(msg)

    def default(value, name):
        if value is not None:
            return value
        if root is None:
            msg = f"Pass `model_dir` or the {name} file explicitly."
            raise ValueError(msg)
        return root / name

    weights, args, vocab = default(weights, "best_model.pt"), default(args, "args.json"), default(vocab, "vocab.json")
    what = "scGPT checkpoint"
    state = strip_prefix(load_upstream(weights, what), "module.")
    if "model_state_dict" in state and isinstance(state["model_state_dict"], Mapping):
        state = strip_prefix(state["model_state_dict"], "module.")
    config = _read_json(args, "args.json")
    token_ids = _read_json(vocab, "vocab.json")
    if not token_ids or not all(isinstance(k, str) and isinstance(v, int) for k, v in token_ids.items()):
        msg = "The scGPT vocab.json must map tokens to integer ids."
        raise CheckpointError(msg)

    t = lambda k: tensor(state, k, what)
    # ---- refusals
    if any(str(k).startswith(("dsbn.", "bn.")) for k in state):
        msg = (
            f"{what} has domain-specific batch norm (dsbn): it normalizes the input embedding per batch of the "
            "fine-tuning data, so its embeddings cannot be reproduced without those batches. Convert the pretrained "
            "(foundation) checkpoint instead."
        )
        raise CheckpointError(msg)
    if bool(_arg(config, "pre_norm", default=False)):
        msg = (
            f"{what} was trained with pre_norm=True: scGPT's pre-norm layer replaces the residual stream by its "
            "normalized copy, which cellformers' pre-norm blocks do not; it cannot be converted exactly."
        )
        raise CheckpointError(msg)
    style = _arg(config, "input_emb_style", default="continuous")
    if style not in ("continuous", "category"):
        msg = f"{what} uses input_emb_style={style!r}; only 'continuous' and 'category' value encoders convert."
        raise CheckpointError(msg)
    cell_style = _arg(config, "cell_emb_style", default="cls")
    if cell_style != "cls":
        msg = f"{what} uses cell_emb_style={cell_style!r}; only the '<cls>' cell embedding converts."
        raise CheckpointError(msg)
    batch_conditional = any(str(k).startswith("batch_encoder.") for k in state)
    if batch_conditional and strict:
        msg = (
            f"{what} has batch-conditional decoders (use_batch_labels: batch_encoder.*), which need the batches of "
            "its fine-tuning data. Pass `strict=False` to convert the encoder alone (cell embeddings; no MGM/MVC "
            "heads)."
        )
        raise CheckpointError(msg)

    # ---- vocabulary: cellformers' layout and the row of each token in scGPT's table
    upstream_ids = dict(token_ids)
    for s in _SPECIALS:
        if s not in upstream_ids:
            upstream_ids[s] = max(upstream_ids.values()) + 1
    emb = t("encoder.embedding.weight")
    if emb.shape[0] != max(upstream_ids.values()) + 1:
        msg = (
            f"{what}: the gene-token table has {emb.shape[0]} rows but vocab.json (with <pad>, <cls>, <eoc>) has "
            f"{max(upstream_ids.values()) + 1} tokens; the vocabulary does not belong to these weights."
        )
        raise CheckpointError(msg)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The token ids are not", category=UserWarning)
        gene_vocab = GeneVocab.from_token_ids(upstream_ids, name="scgpt")

    n_layers = count_layers(state, _LAYERS)
    if n_layers == 0:
        msg = f"{what} has no transformer layers ({_LAYERS}…)."
        raise CheckpointError(msg)
    n_heads = _arg(config, "nheads", "nhead", "n_heads")
    if n_heads is None:
        msg = f"{what}: args.json does not give the number of heads ('nheads')."
        raise CheckpointError(msg)
    d_model = emb.shape[1]
    n_bins = int(_arg(config, "n_bins", default=51))
    use_mgm = not batch_conditional and "decoder.fc.0.weight" in state
    mvc_style = _arg(config, "mvc_decoder_style", default="inner product")
    use_mvc = not batch_conditional and "mvc_decoder.gene2query.weight" in state
    if use_mvc and (mvc_style not in ("inner product", "inner product, detach") or "mvc_decoder.W.weight" not in state):
        msg = f"{what}: the MVC decoder style {mvc_style!r} has no counterpart (cellformers has the inner product)."
        raise CheckpointError(msg)
    mask_ratio = _arg(config, "mask_ratio", default=0.4)
    max_seq_len = _arg(config, "max_seq_len", default=1200)
    options = {
        **SCGPT_OPTIONS,
        "n_layers": n_layers,
        "d_model": d_model,
        "n_heads": int(n_heads),
        "d_ff": t(f"{_LAYERS}0.linear1.weight").shape[0],
        "dropout_rate": float(_arg(config, "dropout", default=0.2)),
        "n_bins": n_bins,
        "mask_ratio": float(mask_ratio) if isinstance(mask_ratio, int | float) else 0.4,
        "max_length": None if max_seq_len is None else int(max_seq_len) - 1,
        "value_encoder": "continuous" if style == "continuous" else "categorical",
        "use_mgm": use_mgm,
        "use_mvc": use_mvc,
        "mvc_detach_query": mvc_style.endswith("detach"),
        "cls_value": float(cls_value),
    }
    architecture = {"n_layers", "d_model", "n_heads", "d_ff", "n_bins", "value_encoder", "use_mgm", "use_mvc"}
    architecture |= {"norm_first", "activation", "value_scale", "mgm_loss", "pooling", "use_dsbn"}
    clash = sorted(k for k in model_kwargs if k in architecture)
    if clash:
        msg = f"{clash} are fixed by the checkpoint's architecture and cannot be passed to `convert_scgpt`."
        raise ValueError(msg)
    options.update(model_kwargs)

    mask_value = float(_arg(config, "mask_value", default=-1))
    mapped, used = _map_weights(state, gene_vocab, upstream_ids, n_layers, options, mask_value, what)
    check_unused(
        state,
        used,
        ignored=lambda k: k.startswith("flag_encoder."),
        unsupported=_unsupported,
        strict=strict,
        what=what,
    )
    info = {"converted_from": "scGPT", "source": os.fspath(root if root is not None else "<files>")}
    return finish_conversion(
        lambda data: _build(ScFormer, data, gene_vocab, options),
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
    return cls(data, vocab=vocab, **options)


def _qkv(state: Mapping[str, Any], src: str, what: str, used: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The stacked [query; key; value] projection of one layer, under any of scGPT's attention key names."""
    for weight, bias in (
        ("self_attn.in_proj_weight", "self_attn.in_proj_bias"),
        ("self_attn.Wqkv.weight", "self_attn.Wqkv.bias"),
        ("self_attn._impl.Wqkv.weight", "self_attn._impl.Wqkv.bias"),
    ):
        if src + weight in state:
            used.update({src + weight, src + bias})
            return tensor(state, src + weight, what), tensor(state, src + bias, what)
    msg = f"{what}: layer {src!r} has no attention projection (in_proj_weight or Wqkv)."
    raise CheckpointError(msg)


def _out_proj(state: Mapping[str, Any], src: str) -> str:
    return src + (
        "self_attn._impl.out_proj." if src + "self_attn._impl.out_proj.weight" in state else "self_attn.out_proj."
    )


def _map_weights(
    state: Mapping[str, Any],
    vocab,
    upstream_ids: Mapping[str, int],
    n_layers: int,
    options: Mapping[str, Any],
    mask_value: float,
    what: str,
) -> tuple[dict[str, torch.Tensor], set[str]]:
    """Map scGPT weight names to ScFormerModule weight names; also return the upstream keys used."""
    used: set[str] = set()

    def take(key: str) -> torch.Tensor:
        used.add(key)
        return tensor(state, key, what)

    out: dict[str, torch.Tensor] = {}
    emb = take("encoder.embedding.weight")
    table = torch.zeros(len(vocab), emb.shape[1])
    for token in vocab.tokens:
        if token in upstream_ids:
            table[vocab[token]] = emb[upstream_ids[token]]
    out["gene_embedding.weight"] = table
    for p in ("weight", "bias"):
        out[f"gene_norm.{p}"] = take(f"encoder.enc_norm.{p}")
    d = emb.shape[1]
    if options["value_encoder"] == "continuous":
        for a, b in (("linear1", "fc.0"), ("linear2", "fc.2"), ("norm", "norm")):
            for p in ("weight", "bias"):
                out[f"value_encoder.{b}.{p}"] = take(f"value_encoder.{a}.{p}")
        # scGPT feeds masked positions the value `mask_value` through the same encoder: that is the <mask> vector
        with torch.no_grad():
            v = torch.tensor([[mask_value]])
            h = torch.relu(v @ out["value_encoder.fc.0.weight"].T + out["value_encoder.fc.0.bias"])
            h = h @ out["value_encoder.fc.2.weight"].T + out["value_encoder.fc.2.bias"]
            h = torch.nn.functional.layer_norm(
                h, (d,), out["value_encoder.norm.weight"], out["value_encoder.norm.bias"]
            )
        out["value_encoder.mask_embedding"] = h[0]
    else:
        n_bins = int(options["n_bins"])
        values = take("value_encoder.embedding.weight")
        if values.shape[0] < n_bins:
            msg = f"{what}: the categorical value table has {values.shape[0]} rows, fewer than n_bins ({n_bins})."
            raise CheckpointError(msg)
        cat = torch.zeros(n_bins + 1, d)
        cat[:n_bins] = values[:n_bins]
        if 0 <= int(mask_value) < values.shape[0]:
            cat[n_bins] = values[int(mask_value)]
        out["value_encoder.embedding.weight"] = cat
        for p in ("weight", "bias"):
            out[f"value_encoder.norm.{p}"] = take(f"value_encoder.enc_norm.{p}")
    for i in range(n_layers):
        src, dst = f"{_LAYERS}{i}.", f"encoder.layers.{i}."
        out[dst + "attn.qkv.weight"], out[dst + "attn.qkv.bias"] = _qkv(state, src, what, used)
        proj = _out_proj(state, src)
        for p in ("weight", "bias"):
            out[f"{dst}attn.out.{p}"] = take(f"{proj}{p}")
            for a, b in (("linear1", "ff.0"), ("linear2", "ff.3"), ("norm1", "norm1"), ("norm2", "norm2")):
                out[f"{dst}{b}.{p}"] = take(f"{src}{a}.{p}")
    if options["use_mgm"]:
        for a, b in (("0", "0"), ("2", "3"), ("4", "6")):
            for p in ("weight", "bias"):
                out[f"mgm_head.mlp.{b}.{p}"] = take(f"decoder.fc.{a}.{p}")
    if options["use_mvc"]:
        for p in ("weight", "bias"):
            out[f"mvc_head.gene_to_query.0.{p}"] = take(f"mvc_decoder.gene2query.{p}")
        # scGPT: pred = (W q) · cell; cellformers: pred = q · (W' cell), so W' = Wᵀ
        out["mvc_head.W.weight"] = take("mvc_decoder.W.weight").T.contiguous()
    return out, used
