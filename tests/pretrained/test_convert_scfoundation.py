"""scFoundation ``models.ckpt`` -> XTrimoGene: tiny upstream-layout weights, checked against a reference forward pass.

The reference below follows scFoundation's computation (``model/pretrainmodels/mae_autobin.py``, ``transformer.py``,
``performer.py`` and ``get_embedding.py``, read as text): sentinel values 102/103 in the expression vector, the
``gatherData`` left-packing, ``nn.TransformerEncoderLayer`` blocks, the FAVOR+ softmax kernel with its global key
stabilizer, and the decoder over all ``n_genes + 2`` positions.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from torch import nn

from cellformers import UntrustedCheckpointError
from cellformers.data import GeneVocab
from cellformers.model import XTrimoGene
from cellformers.pretrained import CheckpointError, convert_scfoundation

N_GENES, D_ENC, D_DEC, N_BINS = 12, 16, 8, 10
ENC_HEADS, DEC_HEADS, DIM_HEAD, N_FEAT = 2, 2, 4, 6
ENC_LAYERS, DEC_LAYERS = 2, 2
SEQ_LEN = N_GENES + 2
PAD, MASK = 103, 102
GENES = [f"GENE{i}" for i in range(N_GENES)]


def _config():
    return {
        "model": "mae_autobin",
        "seq_len": SEQ_LEN,
        "bin_num": N_BINS,
        "bin_alpha": 1.0,
        "pad_token_id": PAD,
        "mask_token_id": MASK,
        "n_class": 104,
        "encoder": {"module_type": "transformer", "hidden_dim": D_ENC, "depth": ENC_LAYERS, "heads": ENC_HEADS},
        "decoder": {
            "module_type": "performer",
            "hidden_dim": D_DEC,
            "depth": DEC_LAYERS,
            "heads": DEC_HEADS,
            "dim_head": DIM_HEAD,
        },
    }


def _state(seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights with scFoundation's names and shapes (``MaeAutobin`` + its encoder and Performer decoder)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape, scale=0.3):
        return torch.randn(*shape, generator=g) * scale

    s = {
        "token_emb.mlp.weight": r(N_BINS, 1, scale=1.0),
        "token_emb.mlp.bias": r(N_BINS),
        "token_emb.mlp2.weight": r(N_BINS, N_BINS),
        "token_emb.mlp2.bias": r(N_BINS),
        "token_emb.emb.weight": r(N_BINS, D_ENC, scale=1.0),
        "token_emb.emb_mask.weight": r(1, D_ENC, scale=1.0),
        "token_emb.emb_pad.weight": r(1, D_ENC, scale=1.0),
        "pos_emb.weight": r(SEQ_LEN + 1, D_ENC, scale=1.0),
        "decoder_embed.weight": r(D_DEC, D_ENC),
        "decoder_embed.bias": r(D_DEC),
        "norm.weight": 1 + r(D_DEC),
        "norm.bias": r(D_DEC),
        "to_final.weight": r(1, D_DEC),
        "to_final.bias": r(1),
        "encoder.norm.weight": 1 + r(D_ENC),
        "encoder.norm.bias": r(D_ENC),
        "decoder.norm.weight": 1 + r(D_DEC),
        "decoder.norm.bias": r(D_DEC),
        "decoder.performer.calls_since_last_redraw": torch.tensor(0),
    }
    for i in range(ENC_LAYERS):
        p = f"encoder.transformer_encoder.{i}."
        s.update(
            {
                p + "self_attn.in_proj_weight": r(3 * D_ENC, D_ENC),
                p + "self_attn.in_proj_bias": r(3 * D_ENC),
                p + "self_attn.out_proj.weight": r(D_ENC, D_ENC),
                p + "self_attn.out_proj.bias": r(D_ENC),
                p + "linear1.weight": r(4 * D_ENC, D_ENC),
                p + "linear1.bias": r(4 * D_ENC),
                p + "linear2.weight": r(D_ENC, 4 * D_ENC),
                p + "linear2.bias": r(D_ENC),
                p + "norm1.weight": 1 + r(D_ENC),
                p + "norm1.bias": r(D_ENC),
                p + "norm2.weight": 1 + r(D_ENC),
                p + "norm2.bias": r(D_ENC),
            }
        )
    inner = DEC_HEADS * DIM_HEAD
    for i in range(DEC_LAYERS):
        p = f"decoder.performer.net.layers.{i}."
        s.update(
            {
                p + "0.norm.weight": 1 + r(D_DEC),
                p + "0.norm.bias": r(D_DEC),
                p + "0.fn.fast_attention.projection_matrix": torch.randn(N_FEAT, DIM_HEAD, generator=g),
                p + "0.fn.to_q.weight": r(inner, D_DEC),
                p + "0.fn.to_q.bias": r(inner),
                p + "0.fn.to_k.weight": r(inner, D_DEC),
                p + "0.fn.to_k.bias": r(inner),
                p + "0.fn.to_v.weight": r(inner, D_DEC),
                p + "0.fn.to_v.bias": r(inner),
                p + "0.fn.to_out.weight": r(D_DEC, inner),
                p + "0.fn.to_out.bias": r(D_DEC),
                p + "1.norm.weight": 1 + r(D_DEC),
                p + "1.norm.bias": r(D_DEC),
                p + "1.fn.fn.w1.weight": r(4 * D_DEC, D_DEC),
                p + "1.fn.fn.w1.bias": r(4 * D_DEC),
                p + "1.fn.fn.w2.weight": r(D_DEC, 4 * D_DEC),
                p + "1.fn.fn.w2.bias": r(D_DEC),
            }
        )
    return s


def _lightning_file(tmp_path, state=None):
    """A ``models.ckpt`` like scFoundation's: three weight sets, Lightning layout (``model.`` prefix)."""
    entries = {}
    for i, key in enumerate(("cell", "gene", "rde")):
        st = _state(i) if state is None else state
        cfg = _config()
        entries[key] = {
            "config": {
                "model": "mae_autobin",
                "model_config": {"mae_autobin": {k: v for k, v in cfg.items() if k != "seq_len"}},
                "dataset_config": {"rnaseq": {"seq_len": SEQ_LEN}},
            },
            "state_dict": {f"model.{k}": v for k, v in st.items()},
        }
    path = tmp_path / "models.ckpt"
    torch.save(entries, path)
    return path


# ------------------------------------------------------------------------------------------ reference forward pass
def _autobin(s, x):
    """``AutoDiscretizationEmbedding2``: soft bins, then the sentinel values get the learned [MASK]/[PAD] vectors."""
    v = x.unsqueeze(-1)
    h = torch.nn.functional.leaky_relu(v @ s["token_emb.mlp.weight"].T + s["token_emb.mlp.bias"], 0.1)
    h = 1.0 * h + (h @ s["token_emb.mlp2.weight"].T + s["token_emb.mlp2.bias"])
    e = torch.softmax(h, -1) @ s["token_emb.emb.weight"]
    e[x == MASK] = s["token_emb.emb_mask.weight"][0]
    e[x == PAD] = s["token_emb.emb_pad.weight"][0]
    return e


def _gather(data, labels):
    """``load.py::gatherData``: non-zero positions packed left in order, then padding."""
    max_num = int(labels.sum(1).max())
    data = torch.hstack([data, torch.full((data.shape[0], max_num), PAD, dtype=data.dtype)])
    lab = labels.float()
    lab[~labels] = -float("inf")
    lab += torch.tensor([(i + 1) * 20000 for i in range(labels.shape[1], 0, -1)], dtype=torch.float)
    lab = torch.hstack([lab, torch.ones(labels.shape[0], max_num)])
    idx = lab.topk(max_num).indices
    new = torch.gather(data, 1, idx)
    return new, new == PAD


def _encoder(s, x, padding):
    for i in range(ENC_LAYERS):
        layer = nn.TransformerEncoderLayer(D_ENC, ENC_HEADS, 4 * D_ENC, batch_first=True)
        prefix = f"encoder.transformer_encoder.{i}."
        layer.load_state_dict({k[len(prefix) :]: v for k, v in s.items() if k.startswith(prefix)})
        layer.eval()
        x = layer(x, src_key_padding_mask=padding)
    return nn.functional.layer_norm(x, (D_ENC,), s["encoder.norm.weight"], s["encoder.norm.bias"])


def _softmax_kernel(data, proj, is_query, eps=1e-4):
    normalizer = data.shape[-1] ** -0.25
    ratio = proj.shape[0] ** -0.5
    dash = torch.einsum("...id,jd->...ij", normalizer * data, proj)
    diag = ((data**2).sum(-1) / 2.0 * normalizer**2).unsqueeze(-1)
    stab = dash.max(dim=-1, keepdim=True).values if is_query else dash.max()
    return ratio * (torch.exp(dash - diag - stab) + eps)


def _decoder(s, x):
    ln = nn.functional.layer_norm
    for i in range(DEC_LAYERS):
        p = f"decoder.performer.net.layers.{i}."
        h = ln(x, (D_DEC,), s[p + "0.norm.weight"], s[p + "0.norm.bias"])
        q, k, v = (h @ s[f"{p}0.fn.to_{c}.weight"].T + s[f"{p}0.fn.to_{c}.bias"] for c in "qkv")
        q, k, v = (t.view(*t.shape[:2], DEC_HEADS, DIM_HEAD).transpose(1, 2) for t in (q, k, v))
        proj = s[p + "0.fn.fast_attention.projection_matrix"]
        q, k = _softmax_kernel(q, proj, True), _softmax_kernel(k, proj, False)
        d_inv = 1.0 / torch.einsum("...nd,...d->...n", q, k.sum(-2))
        out = torch.einsum("...de,...nd,...n->...ne", torch.einsum("...nd,...ne->...de", k, v), q, d_inv)
        out = out.transpose(1, 2).reshape(*x.shape[:2], -1)
        x = x + out @ s[p + "0.fn.to_out.weight"].T + s[p + "0.fn.to_out.bias"]
        h = ln(x, (D_DEC,), s[p + "1.norm.weight"], s[p + "1.norm.bias"])
        h = nn.functional.gelu(h @ s[p + "1.fn.fn.w1.weight"].T + s[p + "1.fn.fn.w1.bias"])
        x = x + h @ s[p + "1.fn.fn.w2.weight"].T + s[p + "1.fn.fn.w2.bias"]
    return ln(x, (D_DEC,), s["decoder.norm.weight"], s["decoder.norm.bias"])


@torch.no_grad()
def _reference(s, counts: np.ndarray, tgt: float | None = None):
    """scFoundation one cell at a time (as ``get_embedding.py``): cell embedding ``all`` and decoder predictions."""
    cells, preds = [], []
    for row in counts:
        row = torch.tensor(row, dtype=torch.float64)
        total = row.sum()
        values = torch.log1p(row / total * 1e4)
        t_token = math.log10(total) if tgt is None else tgt  # tgthighres f1 (T = S) or t<tgt>
        x = torch.cat([values, torch.tensor([t_token, math.log10(total)], dtype=torch.float64)]).float()[None]
        labels = x > 0
        ids = torch.arange(SEQ_LEN)[None]
        enc_x, enc_pad = _gather(x, labels)
        enc_ids, _ = _gather(ids, labels)
        enc_ids[enc_pad] = SEQ_LEN
        h = _autobin(s, enc_x) + s["pos_emb.weight"][enc_ids]
        h = _encoder(s, h, enc_pad)
        cells.append(torch.cat([h[:, -1], h[:, -2], h[:, :-2].max(1).values, h[:, :-2].mean(1)], -1)[0])
        dec = _autobin(s, x)
        b, g = labels.nonzero(as_tuple=True)
        dec[b, g] = h[~enc_pad]
        dec = dec + s["pos_emb.weight"][ids]
        dec = dec @ s["decoder_embed.weight"].T + s["decoder_embed.bias"]
        z = _decoder(s, dec)
        z = nn.functional.layer_norm(z, (D_DEC,), s["norm.weight"], s["norm.bias"])
        preds.append((z @ s["to_final.weight"].T + s["to_final.bias"])[0, :N_GENES, 0])
    return torch.stack(cells).numpy(), torch.stack(preds).numpy()


@pytest.fixture
def adata():
    """Six cells of raw counts over the checkpoint's genes, with different numbers of expressed genes."""
    rng = np.random.default_rng(1)
    counts = rng.poisson(rng.gamma(0.6, 3.0, size=(6, N_GENES))).astype(np.float32)
    counts[:, 0] += 1  # every cell has an expressed gene
    counts[0, 5] = 150.0
    obs = pd.DataFrame(index=[f"cell{i}" for i in range(6)])
    return AnnData(counts, obs=obs, var=pd.DataFrame(index=GENES))


VOCAB = GeneVocab(GENES, name="tiny-scfoundation")


class _Payload:
    """An arbitrary object: unpickling it could run code, so the safe loader refuses it."""


# ------------------------------------------------------------------------------------------------------- tests
def test_matches_reference_forward(adata, tmp_path):
    s = _state()
    path = _lightning_file(tmp_path, s)
    model = convert_scfoundation(path, adata, key="cell", vocab=VOCAB)
    assert isinstance(model, XTrimoGene)
    assert model.module.encoder_dim == D_ENC
    assert len(model.module.decoder.layers) == DEC_LAYERS
    ref_cell, ref_pred = _reference(s, adata.X)
    emb = model.get_latent_representation(pooling="all", batch_size=4)  # batched, with padding
    np.testing.assert_allclose(emb, ref_cell, rtol=1e-4, atol=1e-5)
    pred = model.get_imputed_expression(batch_size=4, mode="visible")
    np.testing.assert_allclose(pred, ref_pred, rtol=1e-4, atol=1e-5)
    # T = log10(target_depth) is tgthighres t<v>
    ref_cell_t4, _ = _reference(s, adata.X, tgt=4.0)
    emb_t4 = model.get_latent_representation(pooling="all", target_depth=1e4)
    np.testing.assert_allclose(emb_t4, ref_cell_t4, rtol=1e-4, atol=1e-5)
    assert model.pretrained_info_["weight_set"] == "cell"


def test_weight_sets_flat_layout_and_checkpoint(adata, tmp_path):
    path = _lightning_file(tmp_path)  # three different weight sets
    gene = convert_scfoundation(path, key="gene", vocab=VOCAB, out=tmp_path / "gene")
    assert gene.adata is None  # no data: the "loaded without AnnData" state
    _, ref_pred = _reference(_state(1), adata.X)
    aligned = adata[:, ::-1].copy()  # another gene order: reordered to the checkpoint's
    reloaded = XTrimoGene.from_pretrained(tmp_path / "gene", aligned, accelerator="cpu")
    np.testing.assert_allclose(reloaded.get_imputed_expression(mode="visible"), ref_pred, rtol=1e-4, atol=1e-5)
    # the flat layout of load.py::convertconfig (config + model_state_dict), passed in memory
    flat = {"config": _config(), "model_state_dict": _state(2)}
    rde = convert_scfoundation(flat, adata, key=None, vocab=VOCAB)
    np.testing.assert_allclose(
        rde.get_latent_representation(pooling="all"), _reference(_state(2), adata.X)[0], rtol=1e-4, atol=1e-5
    )


def test_refusals(adata, tmp_path):
    s = _state()
    with pytest.raises(CheckpointError, match="weight set 'gene'"):
        convert_scfoundation({"cell": {"config": _config(), "model_state_dict": s}}, key="gene", vocab=VOCAB)
    with pytest.raises(CheckpointError, match="12 gene positions"):
        convert_scfoundation({"config": _config(), "model_state_dict": s}, key=None, vocab=GeneVocab(GENES[:-1]))
    extra = {**s, "decoder.performer.net.layers.0.0.fn.local_attn.rel_pos.weights": torch.zeros(3, 4)}
    with pytest.raises(CheckpointError, match="local attention heads"):
        convert_scfoundation({"config": _config(), "model_state_dict": extra}, key=None, vocab=VOCAB)
    with pytest.warns(UserWarning, match="dropped weights"):
        model = convert_scfoundation(
            {"config": _config(), "model_state_dict": extra}, key=None, vocab=VOCAB, strict=False
        )
    np.testing.assert_allclose(
        model.get_latent_representation(adata, pooling="all"), _reference(s, adata.X)[0], rtol=1e-4, atol=1e-5
    )
    glu = {**s, "decoder.performer.net.layers.0.1.fn.fn.w1.weight": torch.zeros(8 * D_DEC, D_DEC)}
    with pytest.raises(CheckpointError, match="GLU"):
        convert_scfoundation({"config": _config(), "model_state_dict": glu}, key=None, vocab=VOCAB)
    with pytest.raises(ValueError, match="fixed by the checkpoint"):
        convert_scfoundation({"config": _config(), "model_state_dict": s}, key=None, vocab=VOCAB, encoder_dim=8)

    bad = tmp_path / "evil.ckpt"
    torch.save({"cell": {"config": _config(), "model_state_dict": s, "obj": _Payload()}}, bad)
    with pytest.raises(UntrustedCheckpointError):
        convert_scfoundation(bad, vocab=VOCAB)
