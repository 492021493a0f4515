from __future__ import annotations

import numpy as np
import pytest
import torch
from anndata import AnnData
from scvi import REGISTRY_KEYS

from cellformers import pp
from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
from cellformers._utils import registered_cell_seeds
from cellformers.data import bin_expression, synthetic_counts
from cellformers.module import ScFormerModule
from cellformers.module._scformer import SCFORMER_KEYS

N_GENES = 40
PAD, CLS = N_GENES, N_GENES + 1
TINY = {"d_model": 16, "n_layers": 1, "n_heads": 2, "d_ff": 16, "dropout_rate": 0.0}


@pytest.fixture(scope="module")
def tensors():
    adata = synthetic_counts(n_cells=24, n_genes=N_GENES, n_batches=2, sparse=False, random_state=1)
    x = torch.as_tensor(np.asarray(adata.X), dtype=torch.float32)
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.tensor(adata.obs["batch"].cat.codes.to_numpy(), dtype=torch.float32)[:, None],
        REGISTRY_KEYS_CF.CELL_SEED: torch.arange(1000, 1024, dtype=torch.float32)[:, None],
    }


def make(**kw):
    torch.manual_seed(0)
    args = {**TINY, **kw}
    return ScFormerModule(np.arange(N_GENES), N_GENES + 3, pad_id=PAD, cls_id=CLS, n_batch=2, **args)


def test_forward_shapes_and_loss(tensors):
    m = make(use_dar=True, use_dsbn=True)
    inf, gen, loss = m(tensors)
    b = tensors[REGISTRY_KEYS.X_KEY].shape[0]
    assert inf[MODULE_KEYS.CELL_EMBEDDING].shape == (b, 16)
    assert inf[MODULE_KEYS.TOKEN_EMBEDDING].shape == (b, N_GENES, 16)  # all genes (paper default)
    assert gen[MODULE_KEYS.PREDICTION].shape == (b, N_GENES, 51)
    assert gen[SCFORMER_KEYS.MVC_PREDICTION].shape == (b, N_GENES, 51)
    assert set(loss.extra_metrics) >= {"mgm_loss", "mvc_loss", "ecs_loss", "dar_loss", "dar_accuracy"}
    assert torch.isfinite(loss.loss)
    loss.loss.backward()
    assert m.gene_embedding.weight.grad is not None


def test_bins_match_bin_expression(tensors):
    m = make()
    x = tensors[REGISTRY_KEYS.X_KEY]
    # one definition: bin_expression of cells whose registered seeds are these gives the same bins
    names = [f"cell{i}" for i in range(x.shape[0])]
    seeds = torch.as_tensor(registered_cell_seeds(names))
    got = m.encode_values(x, seeds).long().numpy()
    np.testing.assert_array_equal(got, bin_expression(x.numpy(), n_bins=51, cell_names=names))
    # per cell: the same bins whatever the other cells of the minibatch
    sub = m.encode_values(x[5:9], seeds[5:9]).long().numpy()
    np.testing.assert_array_equal(sub, got[5:9])


def test_bins_equal_pp_bin_values_on_tied_counts():
    """The module binned in NumPy with the cell seed as the cell's name, so its tie order differed from pp.bin_values."""
    rng = np.random.default_rng(0)
    counts = rng.poisson(0.9, size=(40, 60)).astype(np.float32)  # mostly 0, 1 and 2: many ties in every cell
    counts[:, :6] += rng.poisson(20, size=(40, 6))  # a few highly expressed genes
    adata = AnnData(counts)
    adata.obs_names = [f"AAAC-{i}" for i in range(40)]
    ids = np.arange(60)
    ids[[3, 17, 42]] = -1  # genes outside the vocabulary: the module bins the other 57
    m = ScFormerModule(ids, 63, pad_id=60, cls_id=61, **TINY)
    seeds = torch.as_tensor(registered_cell_seeds(adata.obs_names))
    got = m.encode_values(torch.as_tensor(counts), seeds).long().numpy()

    mapped = adata[:, ids >= 0].copy()
    pp.bin_values(mapped, n_bins=51)
    want = np.asarray(mapped.layers["X_binned"])
    np.testing.assert_array_equal(got, want)
    # the data has ties that land in different bins, so the tie rule is what is compared
    x = counts[:, ids >= 0]
    assert any(len(np.unique(got[i][x[i] == 1])) > 1 for i in range(40))
    # on the device of the minibatch: no NumPy round trip (the bins keep the input's device and are integers)
    assert m._bin(torch.as_tensor(x), seeds).dtype == torch.int64


def test_mask_ratio_and_masked_values_hidden(tensors):
    m = make(mask_ratio=0.4).eval()
    inf = m.inference(**m._get_inference_input(tensors))
    mask = inf[MODULE_KEYS.MASK]
    assert (mask.sum(1) == round(0.4 * N_GENES)).all()
    # eval masks are seeded per cell: same mask for a cell in another minibatch
    sub = {k: v[3:7] for k, v in tensors.items()}
    torch.testing.assert_close(m.inference(**m._get_inference_input(sub))[MODULE_KEYS.MASK], mask[3:7])
    # the encoder never sees masked values: changing them leaves every output unchanged
    x2 = tensors[REGISTRY_KEYS.X_KEY].clone()
    values = m.encode_values(x2, tensors[REGISTRY_KEYS_CF.CELL_SEED].reshape(-1))
    v2 = torch.where(mask, torch.full_like(values, 50.0), values)
    out2 = m.inference(**m._get_inference_input(tensors), values=v2)
    torch.testing.assert_close(out2[MODULE_KEYS.CELL_EMBEDDING], inf[MODULE_KEYS.CELL_EMBEDDING])


def test_nonzero_only_and_max_length(tensors):
    m = make(include_zero_genes=False).eval()
    inf = m.inference(**m._get_inference_input(tensors), mask_ratio=0.0)
    idx, pad = inf[SCFORMER_KEYS.GENE_INDEX], inf[MODULE_KEYS.PADDING_MASK]
    target = inf[MODULE_KEYS.TARGET]
    assert (target[~pad] > 0).all()
    n_nz = (m.encode_values(tensors[REGISTRY_KEYS.X_KEY], tensors[REGISTRY_KEYS_CF.CELL_SEED].reshape(-1)) > 0).sum(1)
    torch.testing.assert_close((~pad).sum(1), n_nz)
    assert (idx[pad] == -1).all()

    m2 = make(include_zero_genes=True, max_length=10).eval()
    inf2 = m2.inference(**m2._get_inference_input(tensors), mask_ratio=0.0)
    assert inf2[MODULE_KEYS.TOKEN_EMBEDDING].shape[1] == 10
    sub = {k: v[:5] for k, v in tensors.items()}
    # seeded subsampling: a cell's genes do not depend on the minibatch
    torch.testing.assert_close(
        m2.inference(**m2._get_inference_input(sub))[SCFORMER_KEYS.GENE_INDEX], inf2[SCFORMER_KEYS.GENE_INDEX][:5]
    )
    m2.train()
    a = m2.inference(**m2._get_inference_input(tensors))[SCFORMER_KEYS.GENE_INDEX]
    b = m2.inference(**m2._get_inference_input(tensors))[SCFORMER_KEYS.GENE_INDEX]
    assert not torch.equal(a, b)  # random subsets in training


@pytest.mark.parametrize(
    ("switches", "absent"),
    [
        ({"use_mgm": False}, "mgm_loss"),
        ({"use_mvc": False}, "mvc_loss"),
        ({"use_ecs": False}, "ecs_loss"),
        ({"use_dar": False}, "dar_loss"),
    ],
)
def test_ablation_switches(tensors, switches, absent):
    m = make(**{"use_dar": True, **switches})
    _, _, loss = m(tensors)
    assert absent not in loss.extra_metrics
    assert torch.isfinite(loss.loss)


def test_mse_categorical_and_options(tensors):
    for kw in (
        {"mgm_loss": "mse"},
        {"value_encoder": "categorical"},
        {"pooling": "mean", "mvc_query": "concat"},
        {"pooling": "weighted", "mvc_query": "sum", "ecs_style": "scgpt"},
        {"batch_conditional_decoders": True, "use_dsbn": True, "dsbn_affine": False, "dsbn_include_padding": True},
        {"norm_first": True, "activation": "gelu"},
    ):
        m = make(**kw)
        _, gen, loss = m(tensors)
        assert torch.isfinite(loss.loss), kw


def test_external_tokens_enter_embedding(tensors):
    ext = np.zeros(N_GENES, dtype=int)
    ext[:5] = 1
    m = make(n_external=2, external_token_ids=ext).eval()
    inp = m._get_inference_input(tensors)
    a = m.inference(**inp, mask_ratio=0.0)[MODULE_KEYS.CELL_EMBEDDING]
    per_cell = torch.zeros(tensors[REGISTRY_KEYS.X_KEY].shape[0], N_GENES, dtype=torch.long)
    b = m.inference(**inp, mask_ratio=0.0, external=per_cell)[MODULE_KEYS.CELL_EMBEDDING]
    assert not torch.allclose(a, b)
    with pytest.raises(ValueError, match="external_token_ids"):
        make(n_external=2, external_token_ids=np.full(N_GENES, 3))


def test_impute_and_embed(tensors):
    m = make().eval()
    for source in ("mgm", "mvc"):
        imp = m.impute(tensors, source=source)
        assert imp.shape == (tensors[REGISTRY_KEYS.X_KEY].shape[0], N_GENES)
        assert torch.isfinite(imp).all()
        assert (imp >= 0).all()
    bins = m.impute(tensors, scale="bins")
    assert (bins >= 0).all()
    assert (bins <= 50).all()
    assert m.embed(tensors, pooling="mean").shape == (24, 16)
    with pytest.raises(ValueError, match="cls"):
        make(pooling="mean").eval().embed(tensors, pooling="cls")


def test_bin_representatives_interpolate():
    bins = torch.tensor([[0, 1, 3, 3]])
    vals = torch.tensor([[0.0, 1.0, 3.0, 5.0]])
    rep = ScFormerModule.bin_representatives(bins, vals, 5)
    torch.testing.assert_close(rep, torch.tensor([[0.0, 1.0, 2.5, 4.0, 4.0]]))


def test_bad_options():
    with pytest.raises(ValueError, match="log1p"):
        make(value_mode="log1p")
    with pytest.raises(ValueError, match="batch"):
        ScFormerModule(np.arange(N_GENES), N_GENES + 3, pad_id=PAD, cls_id=CLS, n_batch=0, use_dar=True)
    with pytest.raises(ValueError, match="mask_ratio"):
        make(mask_ratio=1.5)
    with pytest.raises(ValueError, match="pooling"):
        make(pooling="max")


def test_chunked_all_gene_passes_cover_every_gene(tensors):
    m = make(max_length=12).eval()
    seeds = tensors[REGISTRY_KEYS_CF.CELL_SEED].reshape(-1)
    forced = torch.zeros(24, N_GENES, dtype=torch.bool)
    forced[:, 3] = True
    chunks = m.gene_chunks(seeds, forced)
    forced = None
    assert all(c.shape[1] <= 12 for c in chunks)
    for row in range(24):
        seen = torch.cat([c[row][c[row] >= 0] for c in chunks])
        assert set(seen.tolist()) == set(range(N_GENES))
        assert all(3 in c[row].tolist() for c in chunks)
    values = m.encode_values(tensors[REGISTRY_KEYS.X_KEY], seeds)
    group = torch.arange(N_GENES).expand(24, -1) % 3
    est = m._all_gene_estimates(tensors, values, [group == p for p in range(3)])
    torch.testing.assert_close(est.sum(-1), torch.ones(24, N_GENES))
    assert m.impute(tensors).shape == (24, N_GENES)


def test_fill_zero_genes_keeps_expressed_genes_first(tensors):
    m = make(include_zero_genes="fill", max_length=30).eval()
    inf = m.inference(**m._get_inference_input(tensors), mask_ratio=0.0)
    target, idx = inf[MODULE_KEYS.TARGET], inf[SCFORMER_KEYS.GENE_INDEX]
    assert idx.shape[1] == 30
    assert (idx >= 0).all()
    values = m.encode_values(tensors[REGISTRY_KEYS.X_KEY], tensors[REGISTRY_KEYS_CF.CELL_SEED].reshape(-1))
    n_expr = (values > 0).sum(1)
    # every cell keeps min(30, n_expressed) expressed genes and fills the rest with zeros
    torch.testing.assert_close((target > 0).sum(1), n_expr.clamp(max=30))
    with pytest.raises(ValueError, match="max_length"):
        make(include_zero_genes="fill")


def test_ecs_can_be_left_out_of_the_objective(tensors):
    m = make(use_ecs=True, mask_ratio=0.4).eval()
    _, _, on = m(tensors)
    m.ecs_active = False
    _, _, off = m(tensors)
    ecs = on.extra_metrics["ecs_loss"]
    torch.testing.assert_close(on.loss - off.loss, m.ecs_weight * ecs)
    assert "ecs_loss" in off.extra_metrics


def test_fill_mode_embedding_does_not_depend_on_the_cell_seed():
    """Identical cells got different embeddings: the zero genes that fill the sequence were a per-cell draw."""
    module = make(include_zero_genes="fill", max_length=12, use_dar=False, use_dsbn=False)
    module.eval()
    x = torch.zeros(2, N_GENES)
    # distinct values: tied values are binned by a per-cell draw (pp.bin_values' rule), which is not the point here
    x[:, :5] = torch.tensor([3.0, 1.0, 2.0, 5.0, 4.0])
    tensors = {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS_CF.CELL_SEED: torch.tensor([[11.0], [987.0]]),
        REGISTRY_KEYS.BATCH_KEY: torch.zeros(2, 1),
    }
    emb = module.embed(tensors, pooling="mean")
    torch.testing.assert_close(emb[0], emb[1])
    cell = module.cell_embedding(tensors)
    torch.testing.assert_close(cell[0], cell[1])


@pytest.mark.parametrize("rule", ["average", "redraw"])
def test_tie_breaking_options(tensors, rule):
    x, seeds = tensors[REGISTRY_KEYS.X_KEY], tensors[REGISTRY_KEYS_CF.CELL_SEED]
    names = [f"cell{i}" for i in range(x.shape[0])]
    seeds = torch.as_tensor(registered_cell_seeds(names))
    m = make(tie_breaking=rule)
    draw = bin_expression(x.numpy(), n_bins=51, cell_names=names)
    if rule == "average":
        m.train()
        want = bin_expression(x.numpy(), n_bins=51, cell_names=names, ties="average")
        np.testing.assert_array_equal(m.encode_values(x, seeds).long().numpy(), want)
        assert not np.array_equal(want, draw)
        return
    m.eval()  # evaluation: the per-cell draw, so validation losses and embeddings are reproducible
    np.testing.assert_array_equal(m.encode_values(x, seeds).long().numpy(), draw)
    m.train()  # training: a fresh order of the ties at every step
    torch.manual_seed(1)
    a, b = m.encode_values(x, seeds), m.encode_values(x, seeds)
    assert not torch.equal(a, b)
    np.testing.assert_array_equal(np.sort(a.numpy(), 1), np.sort(draw, 1))


def test_tie_breaking_is_checked():
    with pytest.raises(ValueError, match="tie_breaking"):
        make(tie_breaking="mid")
