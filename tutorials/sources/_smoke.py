# %% [markdown]
# # Smoke test of the tutorials' API
#
# Not published: `tests/test_tutorials.py` runs this notebook in the default test suite. It calls, in miniature,
# every function, option and output key the tutorials use, on scanpy's bundled `pbmc68k_reduced` (real PBMCs, no
# download), so that a change that breaks a tutorial fails CI instead of the next `make tutorials`.

# %%
import contextlib
import dataclasses
import io
import json
import logging
import pickle
import tempfile
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import torch

import cellformers as cf
from cellformers.__main__ import main as cellformers_main

warnings.filterwarnings("ignore")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
logging.getLogger("cellformers").setLevel(logging.WARNING)
cf.settings.seed = 0  # the one seed: cellformers, scvi-tools, torch, NumPy, random
QUIET = {"enable_progress_bar": False, "enable_model_summary": False, "precision": "bf16-mixed"}

bundled = sc.datasets.pbmc68k_reduced()
adata = bundled.raw.to_adata()
adata.obs["cell_type"] = bundled.obs["bulk_labels"].astype(str).astype("category")
cf.pp.counts_from_normalized(adata, key_added="counts")
adata = adata[:240].copy()
adata.X = adata.layers["counts"].copy()
adata.obs["batch"] = pd.Categorical(np.where(np.arange(adata.n_obs) % 2 == 0, "a", "b"))
cf.pp.check_counts(adata, layer="counts")
vocab = cf.data.GeneVocab(list(adata.var_names[:300]), name="smoke")
TINY_XTG = {
    "encoder_dim": 16,
    "encoder_heads": 2,
    "encoder_ff": 32,
    "encoder_layers": 1,
    "decoder_layers": 1,
    "decoder_dim": 16,
    "decoder_heads": 2,
    "decoder_ff": 32,
}

# %% [markdown]
# ## Quick start and xTrimoGene

# %%
cf.model.XTrimoGene.setup_anndata(adata, layer="counts", labels_key="cell_type")
xtg = cf.model.XTrimoGene(adata, vocab=vocab, preset="3M", **TINY_XTG)
xtg.train(max_epochs=1, batch_size=64, plan_kwargs={"lr": 1e-3, "warmup_steps": 2}, **QUIET)
for key in (
    "masked_mse_train",
    "masked_mse_validation",
    "masked_mse_nonzero_validation",
    "masked_mse_zero_validation",
    "encoder_length_validation",
):
    assert key in xtg.history, key
cf.tl.embed(adata, xtg, precision="bf16")
cf.tl.embed(adata, xtg, pooling="mean", key_added="X_xtrimogene_mean", precision="bf16")
recovery = xtg.evaluate_masked_recovery(indices=xtg.validation_indices, n_groups=2)
assert {"all", "sparsity", "cell_type"} <= set(recovery["group_type"])
assert {"pearson", "pearson_nonzero", "sparsity", "group"} <= set(recovery.columns)
cf.tl.impute(adata, xtg, precision="bf16")
assert adata.layers["xtrimogene_imputed"].shape == adata.shape
with torch.no_grad():
    weights = xtg.module.value_embedding.bin_weights(torch.linspace(0, 6, 7)).numpy()
assert weights.shape == (7, 100)
assert np.allclose(weights.sum(1), 1, atol=1e-3)
with tempfile.TemporaryDirectory() as folder:
    xtg.save(folder, overwrite=True)
    loaded = cf.model.XTrimoGene.load(folder, adata=adata)
assert np.allclose(loaded.get_latent_representation(indices=range(3)), xtg.get_latent_representation(indices=range(3)))
cf.model.XTrimoGene(
    adata,
    vocab=vocab,
    preset="3M",
    mask_strategy="rate",
    zero_mask_rate=0.03,
    mask_replacement=(0.8, 0.1, 0.1),
    decoder_input="add",
    zero_embedding="value",
    encoder_norm_first=False,
    encoder_activation="relu",
    read_depth_tokens=True,
    **TINY_XTG,
)

# %%
# scVI (used by the quick start) is left out: it is scvi-tools' own API and takes long to start
cf.tl.baselines(adata, methods=("pca", "harmony"), layer="counts", batch_key="batch")
embeddings = ["X_pca_hvg", "X_harmony", "X_xtrimogene"]
for key in embeddings:
    cf.tl.leiden_search(adata, use_rep=key, n_clusters=4, key_added=f"leiden_{key}")
cf.tl.umap(adata, "X_xtrimogene")
fig, axes = plt.subplots(1, 2)
cf.pl.embedding(adata, basis="X_xtrimogene", color="cell_type", ax=axes[0], show=False, title="t", legend_loc="none")
cf.pl.embedding(adata, basis="X_xtrimogene", color="leiden_X_xtrimogene", ax=axes[1], show=False, legend_loc="on data")
plt.close(fig)
assert "X_umap_pca_hvg" not in adata.obsm
cf.tl.umap(adata, "X_pca_hvg")
assert "X_umap_pca_hvg" in adata.obsm
cf.pl.embedding(adata, "X_pca_hvg", color="cell_type", show=False)
sc.pl.embedding(adata, basis="X_umap_pca_hvg", color=["cell_type"], show=False)
results = cf.tl.benchmark(adata, embeddings=embeddings, label_key="cell_type", batch_key="batch")
assert {
    "ARI",
    "NMI",
    "ARI_cell",
    "NMI_cell",
    "ASW_cell",
    "AvgBIO",
    "ASW_batch",
    "GraphConn",
    "AvgBATCH",
    "Overall",
} <= set(results.columns)
cf.pl.benchmark(adata, metrics=["ARI", "NMI", "AvgBIO"], show=False)
cf.pl.benchmark(adata, metrics=["AvgBIO", "AvgBATCH", "Overall"], kind="bar", show=False)
plt.close("all")

# %% [markdown]
# ## Annotation and label transfer

# %%
cf.tl.annotate(adata, xtg, labels_key="cell_type", precision="bf16-mixed", max_epochs=1)
metrics = pd.DataFrame(adata.uns["xtrimogene_label"]["metrics"]).T
assert {"macro_f1", "macro_precision", "accuracy"} <= set(metrics.columns)
assert "test" in metrics.index
assert set(adata.obs["xtrimogene_label_split"].cat.categories) >= {"train", "test"}
baselines = cf.tl.annotation_baselines(adata, labels_key="cell_type", split=xtg.annotator_, methods=("logreg_pca",))
assert {"macro_f1", "macro_precision", "accuracy"} <= set(baselines.columns)
query = cf.pp.align_to_reference(adata[:40].copy(), list(adata.var_names))
cf.tl.annotate(query, xtg, precision="bf16")
assert "xtrimogene_label_confidence" in query.obs
cf.tl.embed(query, xtg, precision="bf16")
cf.tl.transfer_labels(query, adata, labels_key="cell_type", use_rep="X_xtrimogene")
assert "cell_type_transferred_confidence" in query.obs

# %% [markdown]
# ## scFormer

# %%
sub = adata[:, :200].copy()
cf.model.ScFormer.setup_anndata(sub, layer="counts", batch_key="batch", labels_key="cell_type")
SHORT = {
    "include_zero_genes": False,
    "max_length": 16,
    "norm_first": True,
    "d_model": 16,
    "n_layers": 1,
    "n_heads": 2,
    "d_ff": 16,
}
scf = cf.model.ScFormer(sub, **SHORT)
scf.train(max_epochs=1, batch_size=32, **QUIET)
for name in ("mgm_loss", "mvc_loss", "ecs_loss", "dar_loss"):
    assert f"{name}_train" in scf.history, name
    assert f"{name}_validation" in scf.history, name
cf.tl.embed(sub, scf, key_added="X_scformer", precision="bf16")
cf.model.ScFormer(sub, **SHORT, use_ecs=False, use_dar=False, use_dsbn=False)  # the ablation switches
cf.tl.gene_embeddings(sub, scf)
assert sub.varm["scformer_gene_embeddings"].shape == (sub.n_vars, 16)

# %%
pert_data = adata[:, :150].copy()
perturbed = list(pert_data.var_names[:2])
pert_data.obs["condition"] = np.where(np.arange(pert_data.n_obs) % 3 == 0, "ctrl", "+".join(perturbed))
pert_data.obs["cell_type"] = pd.Categorical(np.where(np.arange(pert_data.n_obs) % 2 == 0, "A", "B"))
cf.model.ScFormerPerturbation.setup_anndata(pert_data, perturbation_key="condition", cell_type_key="cell_type")
pert = cf.model.ScFormerPerturbation(
    pert_data, max_length=32, norm_first=True, d_model=16, n_layers=1, n_heads=2, d_ff=16
)
stimulated = pert_data.obs["condition"].to_numpy() != "ctrl"
train_cells = np.flatnonzero(stimulated & (pert_data.obs["cell_type"].to_numpy() != "B"))
pert.train(max_epochs=1, batch_size=32, train_indices=train_cells, **QUIET)
scores = pert.evaluate(["+".join(perturbed)], cell_type="B", n_control_cells=20)
assert {"pearson", "pearson_delta", "pearson_de", "pearson_delta_de"} <= set(scores.columns)
pred = pert.predict(["+".join(perturbed)], cell_type="B", n_control_cells=20)
assert pred.shape == (1, pert_data.n_vars)

# %% [markdown]
# ## scPaLM

# %%
full = adata[:, :200].copy()
del full.layers["xtrimogene_imputed"]
MASK = {"mask_fraction": 0.1, "candidates": "nonzero", "random_state": 0}
masked, hidden = cf.tl.mask_expression(full, **MASK)
cf.model.ScPaLM.setup_anndata(masked)
palm = cf.model.ScPaLM(masked, preset="small", n_pathway_tokens=8, n_codes=16, n_layers=1)
palm.train(max_epochs=1, max_epochs_stage2=1, batch_size=64, **QUIET)
for key in ("mse_train", "perplexity_train", "masked_mse_train", "stage2_pretext_loss_validation"):
    assert key in palm.history, key
cf.pl.history(palm, show=False)
cf.pl.codebook(palm, show=False)
plt.close("all")
usage = palm.get_codebook_usage()
assert {"perplexity", "n_used", "n_dead", "n_codes", "fraction_used"} <= set(usage)
codes = palm.get_pathway_codes()
assert codes.shape == (masked.n_obs, 8)
pathways = palm.get_pathway_genes(n_genes=3, min_cells=2)
assert {"frequency", "gene_1", "gene_3"} <= set(pathways.columns)
scores = palm.get_pathway_gene_scores()
assert scores.shape == (palm.module.quantizer.n_total_codes, palm.module.n_genes)  # N x K codes with per-position codebooks
cf.tl.embed(masked, palm, representation="cell", key_added="X_scpalm")
cf.tl.embed(masked, palm, representation="mean", key_added="X_scpalm_mean")
imputation = cf.tl.evaluate_imputation(
    full,
    {
        "pathway": palm,
        "cell": palm,
        "kNN smoothing": "knn_smoothing",
        "gene mean": "gene_mean",
        "no imputation": "no_imputation",
    },
    method_kwargs={"pathway": {"decoder": "pathway"}, "cell": {"decoder": "cell"}},
    **MASK,
)
assert {"RMSE", "MAE", "n_evaluated"} <= set(imputation.columns)
assert len(imputation) == 5

# %% [markdown]
# ## GEARS with context embeddings (tutorial 02)

# %%
screen = ad.AnnData(adata[:, vocab.genes[:60]].layers["counts"].copy(), var=pd.DataFrame(index=vocab.genes[:60]))
screen.obs_names = adata.obs_names
screen.obs["condition"] = np.where(np.arange(screen.n_obs) % 2 == 0, "ctrl", "IFNAR1+ctrl")
go = {"IFNAR1": {"GO:0004905"}}
gears_dir = Path(tempfile.mkdtemp())
with open(gears_dir / "split.pkl", "wb") as f:
    pickle.dump({"train": ["IFNAR1+ctrl"], "val": ["IFNAR1+ctrl"], "test": ["IFNAR1+ctrl"]}, f)
with contextlib.redirect_stderr(io.StringIO()):
    pert_data = cf.downstream.gears_pert_data(
        screen, gears_dir, gene2go=go, dataset_name="kang", split="custom", split_dict_path=str(gears_dir / "split.pkl")
    )
    gears_results = cf.downstream.gears_benchmark(
        pert_data,
        xtg,
        control=adata[screen.obs["condition"].to_numpy() == "ctrl"].copy(),  # all genes, as tutorial 02
        epochs=1,
        model_kwargs={"hidden_size": 16, **cf.downstream.gears_go_graph(go, pert_data.pert_names)},
    )
assert list(gears_results["arm"]) == ["no change", "gears", "gears+context"]
assert {"arm", "mse", "pearson", "mse_de", "pearson_de", "train_s"} <= set(gears_results.columns)

# %% [markdown]
# ## Pre-training, registry and checkpoints

# %%
cf.settings.cache_dir = Path("cellformers_cache").resolve()  # extracted checkpoints stay in the scratch folder
cf.settings.progress_bar = False
corpus_file = Path("smoke_corpus.h5ad")
ad.AnnData(adata.layers["counts"].copy(), obs=adata.obs[[]], var=adata.var[[]]).write_h5ad(corpus_file)
vocab.to_json("smoke_vocab.json")
pretrain_args = [
    "pretrain", "--model", "xtrimogene", "--preset", "3M", "--vocab", "smoke_vocab.json", "--data", str(corpus_file),
    "--max-cells", "200", "--min-genes", "5", "--val-fraction", "0.1", "--model-kwargs", json.dumps(TINY_XTG),
    "--plan-kwargs", json.dumps({"lr": 1e-3, "warmup_steps": 2}), "--batch-size", "64", "--accelerator", "cpu",
    "--seed", "0", "--out", "smoke_run", "--name", "smoke-xtg", "--license", "CC0-1.0",
]  # fmt: skip
assert cellformers_main([*pretrain_args, "--epochs", "1"]) == 0
assert cellformers_main([*pretrain_args, "--epochs", "2", "--resume"]) == 0
run = Path("smoke_run")
history = json.loads((run / "history.json").read_text())
assert len(history["masked_mse_train"]["values"]) == 2
assert len(history["masked_mse_validation"]["index"]) == 2
assert (run / "lightning" / "train" / "last.ckpt").is_file()
assert (run / "smoke-xtg.tar.gz.sha256").is_file()
summary = json.loads((run / "checkpoint" / "config.json").read_text())["training_summary"]
assert summary["n_epochs"] == 2
assert "masked_mse_validation" in summary["final"]
archive = cf.pretrained.pack_checkpoint(run / "checkpoint", "smoke-xtg.tar.gz", overwrite=True)
assert archive.read_bytes() == (run / "smoke-xtg.tar.gz").read_bytes()
card = cf.pretrained.PretrainedCard.from_archive(archive, name="smoke-xtg", license="CC0-1.0", description="smoke")
cf.pretrained.register_pretrained(card)
assert {"model_class", "vocabulary", "size_mb", "license", "cached", "sha256"} <= set(cf.pretrained.list_pretrained())
pretrained = cf.model.XTrimoGene.from_pretrained("smoke-xtg", adata)
assert pretrained.adata.n_vars == vocab.n_genes
assert {"name", "sha256", "directory"} <= set(pretrained.pretrained_info_)
assert pretrained.get_latent_representation().shape == (adata.n_obs, 16)
Path("tampered.tar.gz").write_bytes(archive.read_bytes()[:-1] + b"x")
cf.pretrained.register_pretrained(
    dataclasses.replace(card, name="smoke-tampered", url=Path("tampered.tar.gz").resolve().as_uri())
)
try:
    cf.model.XTrimoGene.from_pretrained("smoke-tampered", adata)
    raise AssertionError("a tampered archive loaded")
except cf.ChecksumError:
    pass
query = adata[:30, 10:].copy()
cf.pp.map_genes(
    query, cf.data.GeneVocab.from_json(Path(pretrained.pretrained_info_["directory"]) / "vocab.json"), min_coverage=0.0
)
assert {"n_mapped", "n_genes", "vocab_coverage", "coverage"} <= set(query.uns["cellformers_gene_mapping"])
aligned = cf.pp.align_to_reference(query, vocab.genes)
assert {"n_reference", "n_present", "missing_examples"} <= set(aligned.uns["cellformers_alignment"])
assert cf.model.XTrimoGene.from_pretrained("smoke-xtg", query).get_latent_representation().shape == (30, 16)
print("smoke notebook: all tutorial calls ran")
