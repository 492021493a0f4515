from __future__ import annotations

import numpy as np
import pytest

from cellformers import NotCountsError
from cellformers.data import GeneVocab, synthetic_counts
from cellformers.model import SCPALM_PRESETS, ScPaLM

TINY = {
    "preset": "small",
    "n_hidden": 16,
    "n_layers": 1,
    "n_heads": 2,
    "n_intermediate": 32,
    "n_pathway_tokens": 8,
    "n_codes": 16,
    "n_value_hidden": 8,
    "n_gene_embedding": 8,
    "queue_size": 128,
    "n_pseudo_labels": 3,
    "refit_interval": 2,
}
TRAIN = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False, "batch_size": 64}


@pytest.fixture(scope="module")
def trained():
    adata = synthetic_counts(n_cells=200, n_genes=60, random_state=0)
    ScPaLM.setup_anndata(adata, batch_key="batch")
    model = ScPaLM(adata, **TINY)
    model.train(max_epochs=1, **TRAIN)
    return adata, model


def test_presets():
    assert SCPALM_PRESETS["paper"] == {
        "n_hidden": 256,
        "n_layers": 6,
        "n_heads": 8,
        "n_intermediate": 1024,
        "n_pathway_tokens": 256,
        "n_codes": 128,
        "dropout_rate": 0.0,
        "n_value_hidden": 64,
        "n_gene_embedding": 64,
    }
    adata = synthetic_counts(n_cells=20, n_genes=30)
    ScPaLM.setup_anndata(adata)
    model = ScPaLM(adata)
    assert model.module.n_pathway_tokens == 256
    assert model.module.quantizer.n_codes == 128
    assert len(model.module.encoder.layers) == 6
    assert model.module.n_hidden == 256
    assert "N=256" in model._model_summary_string


def test_train_both_stages_and_history(trained):
    _, model = trained
    assert model.is_trained_
    assert model.module.trained_stages.tolist() == [True, True]
    for key in ("mse_train", "vq_loss_train", "perplexity_train", "masked_mse_train"):
        assert key in model.history_, key
    assert "contrastive_loss_train" not in model.history_  # the default stage 2 has no contrastive loss


def test_getters(trained):
    adata, model = trained
    d = model.module.n_hidden
    assert model.get_latent_representation().shape == (200, d)
    assert model.get_latent_representation(representation="mean").shape == (200, d)
    assert model.get_latent_representation(representation="concat", indices=[0, 1]).shape == (2, 8 * d)
    imputed = model.get_imputed_expression()
    assert imputed.shape == adata.shape
    assert np.isfinite(imputed).all()
    assert (imputed >= 0).all()
    assert model.get_imputed_expression(decoder="cell", indices=np.arange(5)).shape == (5, adata.n_vars)
    codes = model.get_pathway_codes()
    assert codes.shape == (200, 8)
    assert codes.max() < 16
    # default quantizer: one codebook of 16 codes per position, 8 * 16 codes in all
    global_codes = codes + 16 * np.arange(8)
    usage = model.get_codebook_usage()
    assert usage["n_codes"] == 8 * 16
    assert 1 <= usage["n_used"] <= 8 * 16
    assert usage["perplexity"] >= 1
    assert usage["n_used"] == len(np.unique(global_codes))
    scores = model.get_pathway_gene_scores()
    assert scores.shape == (8 * 16, 60)
    detected = np.asarray((adata.X > 0).sum(0)).ravel() > 0
    np.testing.assert_allclose(scores.to_numpy().sum(0)[detected], 1.0, rtol=1e-6)  # column-normalised (A.4)
    genes = model.get_pathway_genes(n_genes=4)
    assert list(genes.columns[:4]) == ["gene_1", "gene_2", "gene_3", "gene_4"]
    assert set(genes.index) == set(np.unique(global_codes))
    assert genes["frequency"].sum() == pytest.approx(1.0)
    assert set(genes["gene_1"]) <= set(adata.var_names)
    emb = model.get_gene_embeddings()
    assert emb.shape == (60, 8)
    assert list(emb.index) == list(adata.var_names)
    with pytest.raises(ValueError, match="representation"):
        model.get_latent_representation(representation="max")


def test_embeddings_do_not_depend_on_batch_size(trained):
    _, model = trained
    idx = np.arange(40)
    a = model.get_latent_representation(indices=idx, batch_size=7)
    b = model.get_latent_representation(indices=idx, batch_size=40)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
    a = model.get_imputed_expression(indices=idx, decoder="cell", batch_size=7)
    b = model.get_imputed_expression(indices=idx, decoder="cell", batch_size=40)
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(trained, tmp_path):
    adata, model = trained
    model.save(tmp_path / "scpalm", overwrite=True)
    loaded = ScPaLM.load(tmp_path / "scpalm", adata=adata)
    np.testing.assert_allclose(loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-6)
    np.testing.assert_allclose(loaded.get_imputed_expression(), model.get_imputed_expression(), atol=1e-6)
    assert loaded.module.trained_stages.tolist() == [True, True]
    assert loaded.vocab == model.vocab


def test_stage_by_stage_and_order():
    adata = synthetic_counts(n_cells=100, n_genes=30)
    ScPaLM.setup_anndata(adata)
    model = ScPaLM(adata, **TINY)
    with pytest.raises(ValueError, match="stage 1"):
        model.train(max_epochs=1, stage=2, **TRAIN)
    model.train(max_epochs=1, stage=1, **TRAIN)
    assert model.get_latent_representation(representation="mean").shape == (100, 16)
    with pytest.raises(ValueError, match="stage 2"):
        model.get_latent_representation()
    stage1 = model.get_latent_representation(representation="mean")
    model.train(max_epochs=1, stage=2, **TRAIN)
    # stage 2 leaves the pathway tokens untouched
    np.testing.assert_allclose(model.get_latent_representation(representation="mean"), stage1, atol=1e-6)
    with pytest.raises(ValueError, match="stage"):
        model.train(max_epochs=1, stage=3, **TRAIN)


def test_vocab_subset_gives_nan_columns():
    adata = synthetic_counts(n_cells=60, n_genes=30)
    ScPaLM.setup_anndata(adata)
    vocab = GeneVocab(list(adata.var_names[:20]) + ["NOT_IN_DATA"])
    model = ScPaLM(adata, vocab=vocab, **TINY)
    model.train(max_epochs=1, stage=1, **TRAIN)
    imputed = model.get_imputed_expression()
    assert np.isnan(imputed[:, 20:]).all()
    assert np.isfinite(imputed[:, :20]).all()


def test_rejects_log_normalized_data():
    import scanpy as sc

    adata = synthetic_counts(n_cells=40, n_genes=30)
    sc.pp.normalize_total(adata)
    sc.pp.log1p(adata)
    with pytest.raises(NotCountsError):
        ScPaLM.setup_anndata(adata)


def test_codebook_statistics_and_history(trained):
    _, model = trained
    codes = model.get_pathway_codes()
    stats = model.get_codebook_statistics()
    assert stats["codes_per_position"] == pytest.approx(np.mean([len(np.unique(codes[:, j])) for j in range(8)]))
    assert stats["codes_per_position_min"] == min(len(np.unique(codes[:, j])) for j in range(8))
    assert 0 <= stats["code_entropy"] <= stats["code_entropy_max"] == pytest.approx(4.0)
    assert stats["distinct_cells"] == len(np.unique(codes, axis=0))
    assert stats["codebook"] == "per_position"
    for key in (
        "codes_per_position_train",
        "code_entropy_train",
        "codes_per_position_validation",
        "stage1_pretext_loss_validation",
        "stage1_trivial_loss_validation",
        "stage2_pretext_loss_validation",
    ):
        assert key in model.history_
    assert bool(model.module.quantizer.initialized)  # k-means after the warm-up
    n1 = len(model.history_["codes_per_position_validation"])
    assert len(model.history_["stage1_pretext_loss_validation"]) == n1  # stage-1 epochs only
    assert len(model.history_["stage2_pretext_loss_validation"]) == len(model.history_["pretext_loss_validation"]) - n1


def test_quantizer_option_and_paper_behaviour():
    adata = synthetic_counts(n_cells=80, n_genes=30, random_state=0)
    ScPaLM.setup_anndata(adata)
    paper = ScPaLM(adata, quantizer="paper", **TINY)
    assert paper.module.quantizer.codebook_mode == "shared"
    assert paper.module.pos_encoder is not None
    assert bool(paper.module.quantizer.initialized)
    default = ScPaLM(adata, **TINY)
    assert default.module.quantizer.codebook_mode == "per_position"
    assert default.module.pos_encoder is None
    assert default.module.vq_warmup == pytest.approx(0.3)
    # explicit module options win over the quantizer setting
    mixed = ScPaLM(adata, quantizer="paper", pre_vq_position=False, **TINY)
    assert mixed.module.pos_encoder is None
    with pytest.raises(ValueError, match="quantizer"):
        ScPaLM(adata, quantizer="nope", **TINY)


def test_stage2_option():
    from cellformers.model import SCPALM_STAGE2

    adata = synthetic_counts(n_cells=80, n_genes=30, random_state=0)
    ScPaLM.setup_anndata(adata)
    default = ScPaLM(adata, **TINY)
    assert default.module.cell_decoder_input == "cell_token"
    assert not default.module.contrastive
    paper = ScPaLM(adata, stage2="paper", **TINY)
    assert paper.module.cell_decoder_input == "tokens"
    assert paper.module.contrastive
    paper.train(max_epochs=1, **TRAIN)
    assert "contrastive_loss_train" in paper.history_
    assert set(SCPALM_STAGE2) == {"paper", "bottleneck"}
    # explicit module options win over the stage-2 setting
    assert ScPaLM(adata, stage2="bottleneck", contrastive=True, **TINY).module.contrastive
    with pytest.raises(ValueError, match="stage2"):
        ScPaLM(adata, stage2="nope", **TINY)


@pytest.mark.parametrize("fmt", ["scvi", "pretrained"])
def test_models_saved_before_stage2_existed_keep_the_paper_stage2(tmp_path, fmt):
    adata = synthetic_counts(n_cells=80, n_genes=30, random_state=0)
    ScPaLM.setup_anndata(adata)
    model = ScPaLM(adata, stage2="paper", **TINY)
    model.train(max_epochs=1, **TRAIN)
    current = ScPaLM(adata, **TINY)
    current.train(max_epochs=1, **TRAIN)
    del model.init_params_["non_kwargs"]["stage2"]  # as written before the argument existed
    path, path_current = tmp_path / "old", tmp_path / "current"
    if fmt == "scvi":
        model.save(path)
        current.save(path_current)
        loaded, loaded_current = ScPaLM.load(path, adata=adata), ScPaLM.load(path_current, adata=adata)
    else:
        model.save_pretrained(path)
        current.save_pretrained(path_current)
        loaded, loaded_current = ScPaLM.from_pretrained(path, adata), ScPaLM.from_pretrained(path_current, adata)
    assert loaded.module.cell_decoder_input == "tokens"
    assert loaded.module.contrastive
    assert loaded.init_params_["non_kwargs"]["stage2"] == "paper"
    assert loaded_current.module.cell_decoder_input == "cell_token"
    assert not loaded_current.module.contrastive


def test_hvg_input_by_default():
    adata = synthetic_counts(n_cells=80, n_genes=30, random_state=0)
    adata.var["highly_variable"] = np.arange(30) < 12
    ScPaLM.setup_anndata(adata)
    model = ScPaLM(adata, **TINY)
    assert model.module.n_genes == 12
    assert len(model.vocab) >= 12
    assert ScPaLM(adata, genes="all", **TINY).module.n_genes == 30
    model.train(max_epochs=1, **TRAIN)
    imputed = model.get_imputed_expression()
    assert np.isnan(imputed[:, 12:]).all()
    assert np.isfinite(imputed[:, :12]).all()
    with pytest.raises(ValueError, match="genes"):
        ScPaLM(adata, genes="some", **TINY)


def test_embedding_with_training_keep_ratio(trained):
    _, model = trained
    full = model.get_latent_representation()
    sub = model.get_latent_representation(n_subsets=3)
    assert sub.shape == full.shape
    assert not np.allclose(sub, full)
    np.testing.assert_allclose(sub, model.get_latent_representation(n_subsets=3, batch_size=7), rtol=1e-4, atol=1e-5)


def test_codebook_plot(trained):
    import matplotlib

    matplotlib.use("Agg")
    import cellformers as cf

    _, model = trained
    axes = cf.pl.codebook(model, show=False)
    assert [ax.get_ylabel() for ax in axes] == ["stage-1 MSE", "codes per position", "distinct codes over the cells"]
    assert axes[0].get_title().startswith("validation / trivial")
    heights = [p.get_height() for p in axes[2].patches]
    codes = model.get_pathway_codes()
    assert heights == [len(np.unique(codes[:, j])) for j in range(8)]
    with pytest.raises(TypeError, match="ScPaLM"):
        cf.pl.codebook(object(), show=False)
