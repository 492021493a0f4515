"""scGPT ``best_model.pt`` + ``args.json`` + ``vocab.json`` -> ScFormer, checked against a reference forward pass.

The reference follows scGPT's ``TransformerModel`` (``scgpt/model/model.py``, read as text): ``GeneEncoder``
(embedding + LayerNorm), ``ContinuousValueEncoder`` (values clamped at 512, Linear-ReLU-Linear-LayerNorm), the sum of
both, ``nn.TransformerEncoderLayer`` blocks (post-norm, ReLU) under a key-padding mask, the ``<cls>`` output,
``ExprDecoder`` and the inner-product ``MVCDecoder``. The flash-attention layers of scGPT hold the same stacked
projection under ``self_attn.Wqkv`` (scGPT's own loader renames it to ``in_proj_weight``).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from torch import nn

from cellformers._constants import CELL_SEED_OBS_COLUMN, MODULE_KEYS
from cellformers.data import bin_expression
from cellformers.model import ScFormer
from cellformers.module._scformer import SCFORMER_KEYS
from cellformers.pretrained import CheckpointError, convert_scgpt

D, HEADS, D_HID, LAYERS, N_BINS = 16, 2, 24, 2, 51
GENES = [f"GENE{i}" for i in range(14)]
# scGPT's ids: genes and specials interleaved, <eoc> missing (appended by scGPT and by the converter)
VOCAB_JSON = (
    {g: i for i, g in enumerate(GENES[:5])} | {"<pad>": 5, "<cls>": 6} | {g: 7 + i for i, g in enumerate(GENES[5:])}
)
N_TOKENS = len(VOCAB_JSON) + 1
ARGS = {
    "embsize": D,
    "nheads": HEADS,
    "d_hid": D_HID,
    "nlayers": LAYERS,
    "n_layers_cls": 3,
    "dropout": 0.2,
    "n_bins": N_BINS,
    "pad_token": "<pad>",
    "pad_value": -2,
    "mask_value": -1,
    "input_emb_style": "continuous",
    "max_seq_len": 64,
    "fast_transformer": True,
    "MVC": True,
}
ATTN_LAYOUTS = {
    "torch": ("self_attn.in_proj_weight", "self_attn.in_proj_bias", "self_attn.out_proj"),
    "flash": ("self_attn.Wqkv.weight", "self_attn.Wqkv.bias", "self_attn.out_proj"),
    "flash_compat": ("self_attn._impl.Wqkv.weight", "self_attn._impl.Wqkv.bias", "self_attn._impl.out_proj"),
}


def _state(layout: str = "flash", seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    w, b, out = ATTN_LAYOUTS[layout]
    s = {
        "encoder.embedding.weight": r(N_TOKENS, D, scale=1.0),
        "encoder.enc_norm.weight": 1 + r(D),
        "encoder.enc_norm.bias": r(D),
        "flag_encoder.weight": r(2, D),
        "value_encoder.linear1.weight": r(D, 1),
        "value_encoder.linear1.bias": r(D),
        "value_encoder.linear2.weight": r(D, D),
        "value_encoder.linear2.bias": r(D),
        "value_encoder.norm.weight": 1 + r(D),
        "value_encoder.norm.bias": r(D),
        "decoder.fc.0.weight": r(D, D),
        "decoder.fc.0.bias": r(D),
        "decoder.fc.2.weight": r(D, D),
        "decoder.fc.2.bias": r(D),
        "decoder.fc.4.weight": r(1, D),
        "decoder.fc.4.bias": r(1),
        "mvc_decoder.gene2query.weight": r(D, D),
        "mvc_decoder.gene2query.bias": r(D),
        "mvc_decoder.W.weight": r(D, D),
    }
    for i in range(LAYERS):
        p = f"transformer_encoder.layers.{i}."
        s.update(
            {
                p + w: r(3 * D, D),
                p + b: r(3 * D),
                f"{p}{out}.weight": r(D, D),
                f"{p}{out}.bias": r(D),
                p + "linear1.weight": r(D_HID, D),
                p + "linear1.bias": r(D_HID),
                p + "linear2.weight": r(D, D_HID),
                p + "linear2.bias": r(D),
                p + "norm1.weight": 1 + r(D),
                p + "norm1.bias": r(D),
                p + "norm2.weight": 1 + r(D),
                p + "norm2.bias": r(D),
            }
        )
    return s


def _model_dir(tmp_path, state, args=ARGS, vocab=VOCAB_JSON):
    folder = tmp_path / "scGPT_tiny"
    folder.mkdir(exist_ok=True)
    torch.save(state, folder / "best_model.pt")
    (folder / "args.json").write_text(json.dumps(args))
    (folder / "vocab.json").write_text(json.dumps(vocab))
    return folder


@pytest.fixture
def adata():
    """Raw counts over the checkpoint's genes in another order, plus one gene scGPT does not know."""
    rng = np.random.default_rng(3)
    genes = [*GENES[::-1], "NOT_IN_VOCAB"]
    counts = rng.poisson(rng.gamma(0.5, 4.0, size=(7, len(genes)))).astype(np.float32)
    counts[:, 3] += 1
    return AnnData(counts, obs=pd.DataFrame(index=[f"c{i}" for i in range(7)]), var=pd.DataFrame(index=genes))


# ------------------------------------------------------------------------------------------ reference forward pass
def _attn_state(s, i):
    """The layer's weights under nn.TransformerEncoderLayer's names, whatever the layout (as scGPT's loader does)."""
    p = f"transformer_encoder.layers.{i}."
    out = {}
    for k, v in s.items():
        if not k.startswith(p):
            continue
        k = (
            k[len(p) :]
            .replace("_impl.", "")
            .replace("Wqkv.weight", "in_proj_weight")
            .replace("Wqkv.bias", "in_proj_bias")
        )
        out[k] = v
    return out


@torch.no_grad()
def _reference(s, counts, cells, genes, *, cls_value=0.0, masked=None):
    """scGPT on the expressed genes of each cell (``<cls>`` first), batched with padding like ``pad_batch``."""
    bins = bin_expression(counts, n_bins=N_BINS, cell_names=cells)  # ties drawn from each cell's registered seed
    ids, vals, keys = [], [], []
    for c in range(counts.shape[0]):
        nz = [j for j in np.flatnonzero(counts[c]) if genes[j] in VOCAB_JSON]
        v = bins[c, nz].astype(np.float32)
        if masked is not None:
            v = np.where(masked[c, nz], -1.0, v)  # mask_value
        ids.append([VOCAB_JSON["<cls>"]] + [VOCAB_JSON[genes[j]] for j in nz])
        vals.append([cls_value, *v])
        keys.append([genes[j] for j in nz])
    length = max(map(len, ids))
    pad = VOCAB_JSON["<pad>"]
    src = torch.tensor([x + [pad] * (length - len(x)) for x in ids])
    values = torch.tensor([x + [-2.0] * (length - len(x)) for x in vals])
    padding = src == pad
    ln = nn.functional.layer_norm
    gene_embs = ln(s["encoder.embedding.weight"][src], (D,), s["encoder.enc_norm.weight"], s["encoder.enc_norm.bias"])
    h = torch.relu(
        values.clamp(max=512).unsqueeze(-1) @ s["value_encoder.linear1.weight"].T + s["value_encoder.linear1.bias"]
    )
    h = h @ s["value_encoder.linear2.weight"].T + s["value_encoder.linear2.bias"]
    x = gene_embs + ln(h, (D,), s["value_encoder.norm.weight"], s["value_encoder.norm.bias"])
    for i in range(LAYERS):
        layer = nn.TransformerEncoderLayer(D, HEADS, D_HID, 0.2, batch_first=True)
        layer.load_state_dict(_attn_state(s, i))
        layer.eval()
        x = layer(x, src_key_padding_mask=padding)
    cell = x[:, 0]
    mlm = x
    for j, act in ((0, True), (2, True), (4, False)):
        mlm = mlm @ s[f"decoder.fc.{j}.weight"].T + s[f"decoder.fc.{j}.bias"]
        mlm = nn.functional.leaky_relu(mlm) if act else mlm
    q = torch.sigmoid(gene_embs @ s["mvc_decoder.gene2query.weight"].T + s["mvc_decoder.gene2query.bias"])
    mvc = torch.bmm(q @ s["mvc_decoder.W.weight"].T, cell.unsqueeze(2)).squeeze(2)
    # per cell: {gene: prediction}, leaving out <cls> and padding
    mgm_by_gene = [dict(zip(keys[c], mlm[c, 1 : 1 + len(keys[c]), 0].tolist(), strict=True)) for c in range(len(keys))]
    mvc_by_gene = [dict(zip(keys[c], mvc[c, 1 : 1 + len(keys[c])].tolist(), strict=True)) for c in range(len(keys))]
    return cell.numpy(), mgm_by_gene, mvc_by_gene


def _ours(model, masked=None):
    """Cell embedding and the MGM/MVC predictions of the converted module, as ``{gene: value}`` per cell."""
    module = model.module
    data = model.adata
    x = torch.tensor(np.asarray(data.X), dtype=torch.float32)
    seeds = torch.tensor(data.obs[CELL_SEED_OBS_COLUMN].to_numpy())[:, None]
    mask = None if masked is None else torch.tensor(masked[:, module.input_columns.numpy()])
    with torch.no_grad():
        inf = module.inference(x, seeds, mask=mask, mask_ratio=0.0)
        gen = module.generative(**module._get_generative_input({}, inf))
    names = np.asarray(data.var_names)[module.input_columns.numpy()]
    index = inf[SCFORMER_KEYS.GENE_INDEX].numpy()
    mgm, mvc = [], []
    for c in range(x.shape[0]):
        ok = index[c] >= 0
        genes = names[index[c][ok]]
        mgm.append(dict(zip(genes, gen[MODULE_KEYS.PREDICTION][c, ok, 0].tolist(), strict=True)))
        mvc.append(dict(zip(genes, gen[SCFORMER_KEYS.MVC_PREDICTION][c, ok, 0].tolist(), strict=True)))
    return inf[MODULE_KEYS.CELL_EMBEDDING].numpy(), mgm, mvc


def _close(a: list[dict], b: list[dict]) -> None:
    assert [sorted(x) for x in a] == [sorted(x) for x in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose([x[k] for k in sorted(x)], [y[k] for k in sorted(x)], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------------------- tests
def test_matches_reference_forward(adata, tmp_path):
    s = _state("flash")
    model = convert_scgpt(_model_dir(tmp_path, s), adata)
    assert isinstance(model, ScFormer)
    data = model.adata  # aligned to the checkpoint's genes (the unknown gene dropped, order of the vocabulary)
    assert list(data.var_names) == GENES
    counts, cells = np.asarray(data.X), list(data.obs_names)
    ref_cell, ref_mgm, ref_mvc = _reference(s, counts, cells, list(data.var_names))
    np.testing.assert_allclose(model.get_latent_representation(batch_size=3), ref_cell, rtol=1e-4, atol=1e-5)
    cell, mgm, mvc = _ours(model)
    np.testing.assert_allclose(cell, ref_cell, rtol=1e-4, atol=1e-5)
    _close(mgm, ref_mgm)
    _close(mvc, ref_mvc)
    # masked values: scGPT feeds mask_value (-1) through the value encoder, cellformers its converted <mask> vector
    masked = np.random.default_rng(0).random(counts.shape) < 0.4
    ref_cell, ref_mgm, ref_mvc = _reference(s, counts, cells, list(data.var_names), masked=masked)
    cell, mgm, mvc = _ours(model, masked=masked)
    np.testing.assert_allclose(cell, ref_cell, rtol=1e-4, atol=1e-5)
    _close(mgm, ref_mgm)
    _close(mvc, ref_mvc)


@pytest.mark.parametrize("layout", ["torch", "flash_compat"])
def test_attention_key_layouts_and_embed_data_cls(adata, tmp_path, layout):
    s = _state(layout, seed=1)
    folder = _model_dir(tmp_path, {f"module.{k}": v for k, v in s.items()})  # a DDP-saved state dict
    model = convert_scgpt(weights=folder / "best_model.pt", args=ARGS, vocab=VOCAB_JSON, adata=adata, cls_value=-2)
    data = model.adata
    ref_cell, _, _ = _reference(s, np.asarray(data.X), list(data.obs_names), GENES, cls_value=-2)
    np.testing.assert_allclose(model.get_latent_representation(), ref_cell, rtol=1e-4, atol=1e-5)


def test_vocabulary_checkpoint_and_refusals(adata, tmp_path):
    s = _state()
    model = convert_scgpt(_model_dir(tmp_path, s), out=tmp_path / "converted")
    vocab = model.vocab
    assert vocab.genes == [g for g, _ in sorted(VOCAB_JSON.items(), key=lambda kv: kv[1]) if not g.startswith("<")]
    assert vocab.specials[:3] == ("<pad>", "<cls>", "<eoc>")
    table = model.module.gene_embedding.weight.detach()
    for token in ("GENE7", "<pad>", "<cls>"):  # rows moved to cellformers' layout
        np.testing.assert_array_equal(table[vocab[token]], s["encoder.embedding.weight"][VOCAB_JSON[token]])
    np.testing.assert_array_equal(table[vocab["<eoc>"]], s["encoder.embedding.weight"][N_TOKENS - 1])
    reloaded = ScFormer.from_pretrained(tmp_path / "converted", adata, accelerator="cpu")
    data = reloaded.adata
    ref_cell, _, _ = _reference(s, np.asarray(data.X), list(data.obs_names), GENES)
    np.testing.assert_allclose(reloaded.get_latent_representation(), ref_cell, rtol=1e-4, atol=1e-5)

    def convert(state=s, args=ARGS, vocab=VOCAB_JSON, **kw):
        return convert_scgpt(weights=state, args=args, vocab=vocab, **kw)

    with pytest.raises(CheckpointError, match="domain-specific batch norm"):
        convert(state={**s, "dsbn.bns.0.running_mean": torch.zeros(D)})
    with pytest.raises(CheckpointError, match="pre_norm"):
        convert(args={**ARGS, "pre_norm": True})
    with pytest.raises(CheckpointError, match="avg-pool"):
        convert(args={**ARGS, "cell_emb_style": "avg-pool"})
    with pytest.raises(CheckpointError, match="rows"):
        convert(vocab={**VOCAB_JSON, "EXTRA": 99})
    with pytest.raises(CheckpointError, match="cell-type classifier"):
        convert(state={**s, "cls_decoder.out_layer.weight": torch.zeros(3, D)})
    with pytest.warns(UserWarning, match="cell-type classifier"):
        convert(state={**s, "cls_decoder.out_layer.weight": torch.zeros(3, D)}, strict=False)
    batch = {**s, "batch_encoder.embedding.weight": torch.zeros(2, D), "decoder.fc.0.weight": torch.zeros(D, 2 * D)}
    with pytest.raises(CheckpointError, match="batch-conditional"):
        convert(state=batch)
    with pytest.warns(UserWarning, match="batch embedding"):
        encoder_only = convert(state=batch, strict=False)
    assert encoder_only.module.mgm_head is None
    assert encoder_only.module.mvc_head is None
    with pytest.raises(ValueError, match="fixed by the checkpoint"):
        convert(d_model=8)
    with pytest.raises(ValueError, match="model_dir"):
        convert_scgpt(weights=s, args=ARGS)
