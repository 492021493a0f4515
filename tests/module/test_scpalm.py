from __future__ import annotations

import numpy as np
import pytest
import torch
from scvi import REGISTRY_KEYS

from cellformers._constants import REGISTRY_KEYS_CF
from cellformers.module import ScPaLMModule

N_VARS = 40


def _module(**kwargs):
    ids = np.arange(N_VARS)
    ids[3] = -1  # one gene outside the vocabulary
    cfg = {
        "n_hidden": 16,
        "n_layers": 1,
        "n_heads": 2,
        "n_intermediate": 32,
        "n_pathway_tokens": 8,
        "n_codes": 16,
        "n_value_hidden": 8,
        "n_gene_embedding": 8,
        "queue_size": 64,
        "n_pseudo_labels": 2,
        "refit_interval": 1,
    }
    cfg.update(kwargs)
    return ScPaLMModule(ids, n_tokens=N_VARS + 3, n_output_genes=N_VARS, **cfg)


def _tensors(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.poisson(torch.rand(n, N_VARS, generator=g) * 3)
    return {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS_CF.CELL_SEED: torch.arange(n, dtype=torch.float32)[:, None]}


def test_stage1_forward_and_loss():
    torch.manual_seed(0)
    m = _module()
    t = _tensors()
    inf, gen, loss = m(t)
    assert inf["z_q"].shape == (12, 8, 16)
    assert inf["codes"].shape == (12, 8)
    assert gen["prediction"].shape == (12, N_VARS - 1)
    assert loss.reconstruction_loss["reconstruction_loss"].shape == (12,)
    assert {"mse", "vq_loss", "perplexity", "codes_used"} <= set(loss.extra_metrics)
    loss.loss.backward()
    assert m.embedding.value_projection.weight.grad is not None
    assert m.cell_encoder.layers[0].attn.qkv.weight.grad is None  # stage-2 parts frozen in stage 1


def test_output_reshaping_follows_algorithm_1():
    m = _module(n_pathway_tokens=8)
    # s = ceil(40 / 8) = 5 genes per token; gene with token id t is owned by token t // 5
    assert m.genes_per_token == 5
    keep = torch.tensor([[0, 2, 4, 6]])
    left = m.left_out_genes(keep)[0]
    expected = torch.tensor([(t // 5) in (1, 3, 5, 7) for t in m.input_gene_ids.tolist()])
    assert torch.equal(left, expected)
    out = torch.arange(8 * 5, dtype=torch.float32).reshape(1, 8, 5)
    torch.testing.assert_close(m._to_genes(out)[0], m.input_gene_ids.float())


def test_stage2_freezes_stage1_and_trains_cell_parts():
    torch.manual_seed(0)
    m = _module()
    m.trained_stages[0] = True
    m.set_stage(2)
    m.train()
    assert not m.quantizer.training
    assert not m.encoder.training
    assert m.cell_encoder.training
    frozen = {k: v.clone() for k, v in m.state_dict().items() if k.startswith(("embedding", "encoder", "quantizer"))}
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-2)
    for i in range(3):
        inf, gen, loss = m(_tensors(seed=i))
        assert "masked_mse" in loss.extra_metrics
        assert "contrastive_loss" in loss.extra_metrics
        assert inf["keep"].shape == (12, m.n_keep)
        assert torch.all(inf["keep"].diff(dim=1) > 0)  # random subset with increasing indices
        loss.loss.backward()
        opt.step()
        opt.zero_grad()
    for k, v in frozen.items():
        assert torch.equal(v, m.state_dict()[k]), k
    assert m.cell_token.requires_grad
    assert not m.pos_encoder.requires_grad
    assert int(m.contrastive_loss.n_calls) == 3


def test_stage2_loss_only_on_left_out_region():
    torch.manual_seed(0)
    m = _module(contrastive=False)
    m.set_stage(2)
    t = _tensors()
    inf, gen, loss = m(t)
    mask = m.left_out_genes(inf["keep"])
    sq = (gen["prediction"] - inf["x_norm"]) ** 2
    torch.testing.assert_close(loss.reconstruction_loss["reconstruction_loss"], (sq * mask).sum(1) / mask.sum(1))


def test_inference_helpers():
    torch.manual_seed(0)
    m = _module().eval()
    x = _tensors()[REGISTRY_KEYS.X_KEY]
    assert m.get_cell_embedding(x).shape == (12, 16)
    z, codes = m.get_pathway_tokens(x)
    assert z.shape == (12, 8, 16)
    assert codes.dtype == torch.long
    seeds = torch.arange(12.0)
    for decoder in ("pathway", "cell"):
        out = m.impute({REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS_CF.CELL_SEED: seeds}, decoder=decoder)
        assert out.shape == (12, N_VARS - 1)
        assert (out >= 0).all()

    # seeded "cell" imputation does not depend on the batch composition
    def batch(rows):
        return {REGISTRY_KEYS.X_KEY: x[rows], REGISTRY_KEYS_CF.CELL_SEED: seeds[rows]}

    torch.testing.assert_close(m.impute(batch(slice(None)), "cell")[3:5], m.impute(batch(slice(3, 5)), "cell"))


def test_bad_arguments():
    with pytest.raises(ValueError, match="keep_ratio"):
        _module(keep_ratio=1.0)
    with pytest.raises(ValueError, match="stage"):
        _module().set_stage(3)


def test_without_quantizer_ablation():
    torch.manual_seed(0)
    m = _module(quantize=False)
    inf, _, loss = m(_tensors())
    torch.testing.assert_close(inf["z_q"], inf["z_e"])
    assert float(loss.extra_metrics["vq_loss"]) == 0.0
    assert inf["codes"].shape == (12, 8)


def test_code_statistics_in_stage1_metrics():
    from cellformers.module._scpalm import code_statistics

    # 4 cells, 2 positions: position 0 has one code for all cells, position 1 a code per cell
    codes = torch.tensor([[5, 0], [5, 1], [5, 2], [5, 3]])
    stats = code_statistics(codes)
    assert float(stats["codes_per_position"]) == pytest.approx(2.5)
    assert float(stats["code_entropy"]) == pytest.approx(1.0)  # (0 + 2 bits) / 2
    torch.manual_seed(0)
    _, _, loss = _module()(_tensors())
    assert {"codes_per_position", "code_entropy"} <= set(loss.extra_metrics)
    assert 1 <= float(loss.extra_metrics["codes_per_position"]) <= 12


def test_per_position_quantizer_without_pre_vq_position():
    torch.manual_seed(0)
    m = _module(vq_codebook="per_position", vq_warmup=0.5, pre_vq_position=False)
    assert m.pos_encoder is None
    assert "pos_encoder" not in m.state_dict()
    assert m.quantizer.get_codebook().shape == (8, 16, 16)
    assert not bool(m.quantizer.initialized)
    t = _tensors()
    inf, _, loss = m(t)  # warm-up step: continuous tokens, no VQ loss
    torch.testing.assert_close(inf["z_q"], inf["z_e"])
    assert bool(m.quantizer.initialized)  # k-means after the module's single warm-up call
    inf, _, loss = m(t)
    assert float(loss.extra_metrics["vq_loss"]) > 0
    loss.loss.backward()
    assert m.embedding.value_projection.weight.grad is not None
    with pytest.raises(ValueError, match="vq_warmup"):
        _module(vq_warmup=1.0)


def test_cell_embedding_with_training_keep_ratio():
    torch.manual_seed(0)
    m = _module().eval()
    x = _tensors()[REGISTRY_KEYS.X_KEY]
    seeds = torch.arange(12.0)
    full = m.get_cell_embedding(x)
    sub = m.get_cell_embedding(x, n_subsets=3, cell_seeds=seeds)
    assert sub.shape == full.shape
    assert not torch.allclose(sub, full)
    torch.testing.assert_close(sub, m.get_cell_embedding(x, n_subsets=3, cell_seeds=seeds))  # seeded per cell
    one = m.get_cell_embedding(x, n_subsets=1, cell_seeds=seeds)
    keep = m.random_keep(12, device=x.device, cell_seeds=seeds, salt=101)
    z, _ = m.get_pathway_tokens(x)
    torch.testing.assert_close(one, m.encode_cell(z, keep)[:, 0])


def test_stage2_evaluation_subsets_are_seeded_per_cell():
    """In evaluation the kept tokens came from torch's generator: validation losses changed from call to call."""
    torch.manual_seed(0)
    m = _module()
    m.trained_stages[0] = True
    m.set_stage(2)
    m.eval()
    t = _tensors()
    first, _, loss1 = m(t)
    second, _, loss2 = m(t)
    torch.testing.assert_close(first["keep"], second["keep"])
    torch.testing.assert_close(loss1.loss, loss2.loss)
    # a cell's subset does not depend on the other cells of the minibatch
    sub = {k: v[3:7] for k, v in t.items()}
    torch.testing.assert_close(m.inference(**m._get_inference_input(sub))["keep"], first["keep"][3:7])
    # training keeps drawing fresh subsets
    m.train()
    keeps = {tuple(m(t)[0]["keep"][0].tolist()) for _ in range(8)}
    assert len(keeps) > 1


def test_cell_token_decoder_reads_only_the_cell_token():
    torch.manual_seed(0)
    m = _module(contrastive=False, cell_decoder_input="cell_token")
    m.eval()
    h = torch.randn(5, 1 + m.n_keep, 16)
    keep = m.random_keep(5, device="cpu")
    out = m.decode_cell(h, keep)
    other = h.clone()
    other[:, 1:] = torch.randn_like(other[:, 1:])  # other kept tokens, same h_C
    torch.testing.assert_close(m.decode_cell(other, m.random_keep(5, device="cpu")), out)
    changed = h.clone()
    changed[:, 0] = torch.randn_like(changed[:, 0])
    assert not torch.allclose(m.decode_cell(changed, keep), out)
    # the paper's decoder reads the kept tokens, not h_C
    paper = _module(contrastive=False)
    paper.eval()
    assert not torch.allclose(paper.decode_cell(other, keep), paper.decode_cell(h, keep))
    torch.testing.assert_close(paper.decode_cell(changed, keep), paper.decode_cell(h, keep))
    with pytest.raises(ValueError, match="cell_decoder_input"):
        _module(cell_decoder_input="nope")
