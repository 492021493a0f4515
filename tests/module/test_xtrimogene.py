from __future__ import annotations

import pytest
import torch
from scvi import REGISTRY_KEYS

from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
from cellformers.model import XTRIMOGENE_PRESETS
from cellformers.module import XTrimoGeneModule


def _batch(x, seed):
    """A minibatch of registered data, as every module's ``impute`` takes it."""
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS_CF.CELL_SEED: seed}


TINY = {
    "encoder_layers": 1,
    "encoder_heads": 2,
    "encoder_dim": 16,
    "decoder_layers": 1,
    "decoder_heads": 2,
    "decoder_dim": 8,
}


def _tensors(n_cells=6, n_genes=40, seed=0, sparsity=0.8):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n_cells, n_genes, generator=g) * 6, generator=g)
    x = x * (torch.rand(n_cells, n_genes, generator=g) > sparsity)
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS_CF.CELL_SEED: torch.arange(n_cells, dtype=torch.float32)[:, None] * 17 + 3,
    }


def _module(n_genes=40, **kwargs):
    torch.manual_seed(0)
    return XTrimoGeneModule(list(range(n_genes)), n_genes + 3, **{**TINY, **kwargs})


@pytest.mark.parametrize(("preset", "target"), [("3M", 3e6), ("10M", 10e6), ("100M", 100e6)])
def test_preset_parameter_counts(preset, target):
    # App. Table 2 with xTrimoGene's 19,264 genes (gene embedding table included): within 15% of the name
    with torch.device("meta"):
        m = XTrimoGeneModule(list(range(19264)), 19264 + 3, **XTRIMOGENE_PRESETS[preset])
    n = sum(p.numel() for p in m.parameters())
    assert abs(n - target) / target < 0.15


def test_forward_shapes_and_loss():
    m = _module()
    t = _tensors()
    inf, gen, loss = m(t)
    b, g = t[REGISTRY_KEYS.X_KEY].shape
    assert gen[MODULE_KEYS.PREDICTION].shape == (b, g)
    assert inf[MODULE_KEYS.CELL_EMBEDDING].shape == (b, 16)
    h, pad = inf[MODULE_KEYS.TOKEN_EMBEDDING], inf[MODULE_KEYS.PADDING_MASK]
    assert h.shape[:2] == pad.shape
    # encoder length = most unmasked non-zero genes of a cell
    keep = (inf[MODULE_KEYS.TARGET] > 0) & ~inf[MODULE_KEYS.MASK]
    assert pad.shape[1] == keep.sum(-1).max()
    assert (~pad).sum(-1).tolist() == keep.sum(-1).tolist()
    assert loss.reconstruction_loss["reconstruction_loss"].shape == (b,)
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    assert m.value_embedding.w1.weight.grad is not None
    assert m.decoder.layers[0].attn.qkv.weight.grad is not None


def test_loss_is_mse_on_masked_positions():
    m = _module()
    t = _tensors()
    inf, gen, loss = m(t)
    mask = inf[MODULE_KEYS.MASK]
    err = (gen[MODULE_KEYS.PREDICTION] - inf[MODULE_KEYS.TARGET])[mask]
    torch.testing.assert_close(loss.loss, err.pow(2).mean())


def test_normalization_log1p_cp10k():
    m = _module(n_genes=4)
    x = torch.tensor([[1.0, 0.0, 3.0, 6.0]])
    values, library = m.normalize(x)
    torch.testing.assert_close(values, torch.log1p(x / 10 * 1e4))
    assert library.item() == 10


def test_balanced_masking_counts():
    m = _module(n_genes=200, mask_ratio=0.3, balanced_zero_ratio=0.9)
    values = torch.zeros(4, 200)
    values[:, :50] = 1.0  # 50 non-zero genes per cell
    mask, hidden, inp = m.make_mask(values)
    assert torch.equal(hidden, mask)
    assert torch.equal(inp, values)
    assert (mask[:, :50].sum(-1) == 15).all()  # 30% of the non-zeros
    assert (mask[:, 50:].sum(-1) == 14).all()  # round(0.9 * 15) zeros


def test_rate_masking_and_replacement():
    m = _module(
        n_genes=2000, mask_strategy="rate", mask_ratio=0.3, zero_mask_rate=0.03, mask_replacement=(0.8, 0.1, 0.1)
    )
    values = torch.zeros(8, 2000)
    values[:, :1000] = torch.rand(8, 1000) + 0.5
    mask, hidden, inp = m.make_mask(values)
    assert abs(mask[:, :1000].float().mean() - 0.3) < 0.03
    assert abs(mask[:, 1000:].float().mean() - 0.03) < 0.01
    assert (hidden <= mask).all()
    assert abs(hidden.sum() / mask.sum() - 0.8) < 0.05
    changed = inp != values
    assert (changed <= (mask & ~hidden)).all()  # only "random" positions change value


def test_evaluation_masks_are_per_cell_reproducible():
    m = _module().eval()
    t = _tensors(n_cells=6)
    full, _, _ = m(t)
    sub = {k: v[2:5] for k, v in t.items()}
    part, _, _ = m(sub)
    assert torch.equal(full[MODULE_KEYS.MASK][2:5], part[MODULE_KEYS.MASK])
    again, _, _ = m(t)
    assert torch.equal(full[MODULE_KEYS.MASK], again[MODULE_KEYS.MASK])


def test_pack_is_stable_left_packing():
    m = _module(n_genes=6)
    keep = torch.tensor([[False, True, False, True, True, False], [True, False, False, False, False, False]])
    index, pad = m.pack(keep, torch.ones(2, 6))
    assert index.tolist() == [[1, 3, 4], [0, 6, 6]]
    assert pad.tolist() == [[False, False, False], [False, True, True]]


def test_max_encoder_length_keeps_top_expressed():
    m = _module(n_genes=6, max_encoder_length=2)
    keep = torch.tensor([[True, True, False, True, True, False]])
    values = torch.tensor([[1.0, 5.0, 9.0, 3.0, 4.0, 0.0]])
    index, pad = m.pack(keep, values)
    assert sorted(index[0].tolist()) == [1, 4]
    assert not pad.any()
    # the capped module still runs end to end and the decoder sees the dropped genes' values
    m2 = _module(max_encoder_length=3)
    _, gen, loss = m2(_tensors(sparsity=0.2))
    assert torch.isfinite(loss.loss)


def test_empty_cells_do_not_produce_nans():
    m = _module().eval()
    t = _tensors()
    t[REGISTRY_KEYS.X_KEY][0] = 0
    t[REGISTRY_KEYS.X_KEY][1] = 0
    t[REGISTRY_KEYS.X_KEY][1, 3] = 5  # one gene: masked or alone
    for pooling in ("max", "mean", "all"):
        inf = m.inference(t[REGISTRY_KEYS.X_KEY], t[REGISTRY_KEYS_CF.CELL_SEED], pooling=pooling)
        assert torch.isfinite(inf[MODULE_KEYS.CELL_EMBEDDING]).all()
    inf, gen, loss = m(t)
    assert torch.isfinite(gen[MODULE_KEYS.PREDICTION]).all()
    assert torch.isfinite(loss.loss)
    # a batch where no cell has any encoder token
    t2 = {k: v[:1] for k, v in t.items()}
    inf, gen, loss = m(t2)
    assert torch.isfinite(gen[MODULE_KEYS.PREDICTION]).all()


def test_pooling_ignores_padding():
    m = _module().eval()
    t = _tensors(n_cells=3)
    inf = m.inference(t[REGISTRY_KEYS.X_KEY], apply_mask=False, pooling="mean")
    h, pad = inf[MODULE_KEYS.TOKEN_EMBEDDING], inf[MODULE_KEYS.PADDING_MASK]
    i = int(pad.sum(-1).argmax())
    torch.testing.assert_close(inf[MODULE_KEYS.CELL_EMBEDDING][i], h[i][~pad[i]].mean(0))
    # a cell's embedding does not depend on the other cells of the batch
    alone = m.inference(t[REGISTRY_KEYS.X_KEY][i : i + 1], apply_mask=False, pooling="max")
    batch = m.inference(t[REGISTRY_KEYS.X_KEY], apply_mask=False, pooling="max")
    torch.testing.assert_close(
        alone[MODULE_KEYS.CELL_EMBEDDING][0], batch[MODULE_KEYS.CELL_EMBEDDING][i], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {"read_depth_tokens": True},
        {"value_embedding": "round"},
        {"value_embedding": "upbin"},
        {"value_embedding": "equalbin"},
        {"zero_embedding": "value", "decoder_input": "add"},
        {"encoder_norm_first": False, "encoder_activation": "relu"},
        {"gradient_checkpointing": True, "dropout_rate": 0.1},
    ],
)
def test_options_run(kwargs):
    m = _module(**kwargs)
    inf, gen, loss = m(_tensors())
    loss.loss.backward()
    assert torch.isfinite(loss.loss)
    if kwargs.get("read_depth_tokens"):
        m.eval()
        out = m.inference(_tensors()[REGISTRY_KEYS.X_KEY], apply_mask=False, pooling="all")
        assert out[MODULE_KEYS.CELL_EMBEDDING].shape == (6, 4 * 16)
        target = m.inference(_tensors()[REGISTRY_KEYS.X_KEY], apply_mask=False, target_depth=1e5)
        assert not torch.allclose(target[MODULE_KEYS.CELL_EMBEDDING], out[MODULE_KEYS.CELL_EMBEDDING][:, 32:48])


def test_concat_projection_equals_explicit_concatenation():
    m = _module().eval()
    t = _tensors()
    inf = m.inference(t[REGISTRY_KEYS.X_KEY], t[REGISTRY_KEYS_CF.CELL_SEED])
    z = m.decoder_tokens(inf[MODULE_KEYS.TOKEN_EMBEDDING], inf["encoder_index"], inf["hidden"], inf["input_values"])
    # rebuild I_full by hand for cell 0
    g = t[REGISTRY_KEYS.X_KEY].shape[1]
    tok = torch.empty(g, 16)
    for j in range(g):
        if inf["hidden"][0, j]:
            tok[j] = m.value_embedding.emb_mask
        else:
            tok[j] = m.zero_embedding
    idx, pad = inf["encoder_index"][0], inf[MODULE_KEYS.PADDING_MASK][0]
    tok[idx[~pad]] = inf[MODULE_KEYS.TOKEN_EMBEDDING][0][~pad]
    genes = m.gene_embedding(m.input_gene_ids)
    expected = m.decoder_proj(torch.cat([tok, genes], -1))
    torch.testing.assert_close(z[0], expected, atol=1e-5, rtol=1e-5)


def test_genes_outside_vocab_are_dropped_but_count_in_library():
    torch.manual_seed(0)
    m = XTrimoGeneModule([0, -1, 1, 2], 6, **TINY)
    x = torch.tensor([[2.0, 6.0, 0.0, 2.0]])
    values, _ = m.normalize(x)
    torch.testing.assert_close(values, torch.log1p(torch.tensor([[2.0, 0.0, 2.0]]) / 10 * 1e4))


def test_bad_options():
    with pytest.raises(ValueError, match="mask_strategy"):
        _module(mask_strategy="random")
    with pytest.raises(ValueError, match="mask_replacement"):
        _module(mask_replacement=(0.5, 0.1, 0.1))
    with pytest.raises(ValueError, match="decoder_input"):
        _module(decoder_input="sum")


def test_bf16_autocast():
    m = _module()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inf, gen, loss = m(_tensors())
    assert gen[MODULE_KEYS.PREDICTION].dtype == torch.float32
    assert torch.isfinite(loss.loss)
    loss.loss.backward()


def test_masked_imputation_reads_every_gene_where_it_was_masked():
    # the training loss only covers [MASK] positions, so imputation must read each gene from a pass where it was
    # hidden: non-zero genes exactly once, zero-count genes in every pass (averaged)
    m = _module(mask_ratio=0.3).eval()
    t = _tensors(n_cells=5)
    x, seed = t[REGISTRY_KEYS.X_KEY], t[REGISTRY_KEYS_CF.CELL_SEED]
    seen, preds = [], []
    generative = m.generative

    def spy(**kwargs):
        out = generative(**kwargs)
        seen.append(kwargs["hidden"].clone())
        preds.append(out[MODULE_KEYS.PREDICTION].clone())
        return out

    m.generative = spy
    out = m.impute(_batch(x, seed))
    values, _ = m.normalize(x)
    nonzero = values > 0
    hidden = torch.stack(seen)  # (passes, cells, genes)
    assert hidden.shape[0] == 4  # ceil(1 / 0.3)
    assert hidden[:, ~nonzero].all()
    assert (hidden[:, nonzero].sum(0) == 1).all()
    p = torch.stack(preds)
    expected = torch.where(nonzero, (p * hidden).sum(0), p.mean(0))
    torch.testing.assert_close(out, expected)
    # reproducible per cell: the same cells in another batch composition give the same result
    m.generative = generative
    torch.testing.assert_close(m.impute(_batch(x[2:], seed[2:])), out[2:])
    visible = m.impute(_batch(x, seed), mode="visible")
    assert visible.shape == out.shape
    with pytest.raises(ValueError, match="n_passes"):
        m.impute(_batch(x, seed), n_passes=0)


def test_trivial_loss_is_the_per_gene_mean_of_the_masked_training_targets():
    """Train-mode loss fits the baseline; eval-mode loss on the same cells (same per-cell masks) scores it."""
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(40)), n_tokens=43, **TINY)
    tensors = _tensors()
    module.train()
    fit, _, out = module(tensors)
    assert "trivial_loss" not in out.extra_metrics
    seen = fit[MODULE_KEYS.MASK].float()
    mean = (fit[MODULE_KEYS.TARGET] * seen).sum(0) / seen.sum(0).clamp_min(1)
    module.eval()
    inf, _, out = module(tensors)
    target, mask = inf[MODULE_KEYS.TARGET], inf[MODULE_KEYS.MASK]
    expected = (((target - mean) ** 2) * mask).sum() / mask.sum()
    torch.testing.assert_close(out.extra_metrics["trivial_loss"], expected)
    torch.testing.assert_close(out.extra_metrics["pretext_loss"], out.extra_metrics["masked_mse"])


@pytest.mark.parametrize("pooling", ["weighted", "decoder"])
def test_weighted_and_decoder_readouts(pooling):
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(40)), n_tokens=43, **TINY)
    module.eval()
    tensors = _tensors()
    out = module.inference(**module._get_inference_input(tensors), apply_mask=False, pooling=pooling)
    cell = out[MODULE_KEYS.CELL_EMBEDDING]
    width = TINY["decoder_dim"] if pooling == "decoder" else TINY["encoder_dim"]
    assert cell.shape == (6, width)
    assert torch.isfinite(cell).all()


def test_weighted_readout_weighs_tokens_by_expression():
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(4)), n_tokens=7, **TINY)
    h = torch.randn(1, 3, 16)
    pad = torch.tensor([[False, False, True]])
    w = torch.tensor([[3.0, 1.0, 5.0]])  # the padded token's weight is ignored
    expected = (3 * h[0, 0] + h[0, 1]) / 4
    torch.testing.assert_close(module.pool(h, pad, "weighted", weights=w)[0], expected)
    with pytest.raises(ValueError, match="needs `weights`"):
        module.pool(h, pad, "weighted")


def test_zero_groups_none_is_the_previous_imputation_and_groups_hide_zeros_a_group_at_a_time():
    torch.manual_seed(0)
    module = XTrimoGeneModule(list(range(40)), n_tokens=43, **TINY)
    module.eval()
    tensors = _tensors()
    x, seed = tensors[REGISTRY_KEYS.X_KEY], tensors[REGISTRY_KEYS_CF.CELL_SEED]
    with torch.no_grad():
        base = module.impute(_batch(x, seed))
        # the previous definition: every zero hidden in each of the passes, non-zeros read where hidden
        values, _ = module.normalize(x)
        assert torch.isfinite(base).all()
        grouped = module.impute(_batch(x, seed), zero_groups=5)
        again = module.impute(_batch(x, seed), zero_groups=5)
        auto = module.impute(_batch(x, seed), zero_groups="training")
    torch.testing.assert_close(grouped, again)  # per-cell draws: deterministic
    nonzero = values > 0
    assert not torch.allclose(grouped[~nonzero], base[~nonzero])  # zeros now see the other zeros as zeros
    assert torch.isfinite(auto).all()
    assert (module._zero_groups(nonzero, "training") >= 1).all()
    with pytest.raises(ValueError, match="`zero_groups` must be"):
        module.impute(_batch(x, seed), zero_groups=0)
