# %% [markdown]
# # scPaLM: two-stage training, pathway codes, imputation
#
# scPaLM {cite:p}`scPaLM` embeds the whole expression vector of a cell into `N` tokens with a permutation-invariant
# embedding, learns a codebook of discrete "pathway" tokens (stage 1), and then aggregates them into a cell token
# `h_C` (stage 2); see the {doc}`user guide <../../user_guide/scpalm>`. This tutorial trains a CPU-sized scPaLM on
# PBMCs and looks at:
#
# 1. the two training stages and their losses;
# 2. how many codes are used, and by which cell types;
# 3. the genes associated with each pathway token (App. A.4);
# 4. cell embeddings from `h_C` and from the pathway tokens;
# 5. imputation of held-out expression, beside simple baselines.
#
# To compare imputation fairly, 10% of the expressed entries of every cell are hidden *before* training, and the
# model only ever sees the masked data.

# %%
import logging
import os
import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scvi

import cellformers as cf

warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
scvi.settings.verbosity = logging.WARNING  # scvi-tools' notes on AnnData set-up
cf.settings.progress_bar = False  # no progress bars in the stored outputs
cf.settings.seed = 0  # the one seed: cellformers, scvi-tools, torch, NumPy, random
sc.settings.set_figure_params(dpi=80, frameon=False)
pd.set_option("display.max_colwidth", 150)
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", "../../shared"))

# %% [markdown]
# ## Data and the held-out entries
#
# pbmc3k (2,638 cells), restricted to the 1,838 highly variable genes of the scanpy tutorial to keep a CPU epoch
# short (scPaLM itself reads any number of genes: the transformers only see `N` tokens).
# {func}`~cellformers.tl.mask_expression` hides 10% of the detected genes of each cell (drawn with probability
# proportional to `exp(-expression)`, as in the paper's App. B.4) and returns the masked copy and the mask.

# %%
full = sc.read_h5ad(SHARED / "data" / "pbmc3k_processed.h5ad")
full = full[:, full.var["highly_variable"]].copy()
MASK = {"mask_fraction": 0.1, "candidates": "nonzero", "random_state": 0}
adata, hidden = cf.tl.mask_expression(full, **MASK)
print(
    f"{adata.n_obs} cells x {adata.n_vars} genes; {hidden.nnz:,} expressed entries hidden "
    f"({hidden.nnz / full.X.nnz:.1%} of the non-zeros)"
)

# %% [markdown]
# ## Two-stage training
#
# `preset="small"` is a CPU-sized configuration (2-layer transformers of width 64); here with `N` = 32 pathway tokens
# and the paper's `K` = 128 codes. {meth}`~cellformers.model.ScPaLM.train` runs stage 1 (pathway encoder, quantizer
# and decoder; AdamW at `1e-3`) and then stage 2 (cell token, mask token, second encoder and decoder, with stage 1
# frozen; `5e-4`). `train(stage=1)` and `train(stage=2)` run them one at a time.

# %%
cf.model.ScPaLM.setup_anndata(adata)
model = cf.model.ScPaLM(adata, preset="small", n_pathway_tokens=32)
print(model)
model.train(max_epochs=10, max_epochs_stage2=4, batch_size=64, precision="bf16-mixed", enable_progress_bar=False)

# %%
h = model.history
fig, axes = plt.subplots(1, 4, figsize=(15, 2.8), layout="constrained")
for ax, (key, title) in zip(
    axes,
    [
        ("mse_train", "stage 1: reconstruction MSE"),
        ("perplexity_train", "stage 1: code perplexity"),
        ("masked_mse_train", "stage 2: masked-region MSE"),
        ("contrastive_loss_train", "stage 2: contrastive loss"),
    ],
    strict=True,
):
    values = h[key].dropna().to_numpy().ravel() if key in h else np.array([])
    ax.plot(values, "o-")
    ax.set(title=title, xlabel="epoch")
plt.show()

# %% [markdown]
# Perplexity is `exp` of the entropy of the code histogram of a minibatch: it grows as more codes are used evenly
# (dead codes are re-initialised during training, App. A.2), here to about 100 of the 128 codes. The stage-1
# reconstruction error stops improving after the first epoch: the decoder has learned each gene's mean (its output
# biases start there) but not yet the variation between cells, which takes far longer training than a tutorial
# allows. In stage 2 the contrastive loss is computed against pseudo-labels that K-Means refits as training goes,
# so it need not decrease steadily.
#
# ## Codebook usage
#
# Every cell becomes `N` = 32 codes out of `K` = 128. {meth}`~cellformers.model.ScPaLM.get_codebook_usage`
# summarises how many codes the data uses; {meth}`~cellformers.model.ScPaLM.get_pathway_codes` returns the codes of
# each cell.

# %%
usage = model.get_codebook_usage()
print({k: round(v, 2) if isinstance(v, float) else v for k, v in usage.items()})
codes = model.get_pathway_codes()
counts = np.bincount(codes.ravel(), minlength=usage["n_codes"])
by_type = pd.DataFrame(
    [
        np.bincount(codes[(adata.obs["cell_type"] == ct).to_numpy()].ravel(), minlength=usage["n_codes"])
        for ct in adata.obs["cell_type"].cat.categories
    ],
    index=adata.obs["cell_type"].cat.categories,
)
by_type = by_type.div(by_type.sum(1), axis=0)
top_codes = np.argsort(-counts)[:40]
fig, axes = plt.subplots(1, 2, figsize=(15, 3.6), layout="constrained", width_ratios=[1, 2])
axes[0].bar(np.arange(len(counts)), np.sort(counts)[::-1] / counts.sum())
axes[0].set(xlabel="code (by frequency)", ylabel="share of all tokens", title="code frequencies")
im = axes[1].imshow(by_type[top_codes].to_numpy(), aspect="auto", cmap="viridis")
axes[1].set_yticks(range(len(by_type)), by_type.index)
axes[1].set_xticks(range(len(top_codes)), top_codes, rotation=90, fontsize=7)
axes[1].set(xlabel="code (40 most used)", title="share of a cell type's tokens per code")
axes[1].grid(False)  # set_figure_params turns grids on; they would cross the cells
fig.colorbar(im, ax=axes[1])
plt.show()

# %% [markdown]
# Most codes are shared by all cell types, but some are not: in this run a few codes are used mostly by the myeloid
# cells (monocytes and dendritic cells) and rarely by lymphocytes. Codes used mostly by one cell type are candidates
# for cell-type programmes.
#
# ## Pathway gene lists
#
# App. A.4 associates genes with a code: each cell adds its counts, weighted by how often the code occurs among its
# tokens, to the code's row; each gene is then normalised over codes, and the top genes of a code form its list
# (10 genes in the paper, which then runs an enrichment analysis). `min_cells` skips genes seen in very few cells,
# whose score is trivially concentrated.

# %%
pathways = model.get_pathway_genes(n_genes=10, min_cells=30)
pathways = pathways.sort_values("frequency", ascending=False)
gene_cols = [f"gene_{i}" for i in range(1, 11)]
table = pathways[["frequency"]].assign(genes=pathways[gene_cols].apply(", ".join, axis=1))
table.head(10)

# %% [markdown]
# In this run, the codes favoured by myeloid cells in the heatmap above (22, 63, 118, 121) list myeloid genes:
# `CLEC10A` and `FCER1A` (dendritic cells), `C1QA`, `FCGR1B` and `PLA2G7` (monocytes and macrophages); other lists
# mix genes without an obvious common function, as expected after a few minutes of training. (Code numbers change
# from one training run to the next.)
#
# Scores for every code and gene come from {meth}`~cellformers.model.ScPaLM.get_pathway_gene_scores`. For instance,
# which codes take the largest share of some well-known markers:

# %%
scores = model.get_pathway_gene_scores()
markers = [g for g in ["CD3E", "MS4A1", "CD79A", "LYZ", "CD14", "NKG7", "GNLY", "FCGR3A", "PPBP"] if g in scores]
pd.DataFrame(
    {"top code": [int(scores[g].idxmax()) for g in markers], "share": [scores[g].max() for g in markers]}, index=markers
).round(3)

# %% [markdown]
# ## Cell embeddings
#
# `representation="cell"` gives `h_C`, the stage-2 cell token over all pathway tokens (the paper's embedding);
# `"mean"` the mean of the quantized pathway tokens (Table 6). {func}`cellformers.tl.embed` passes the option
# through.

# %%
cf.tl.embed(adata, model, representation="cell", key_added="X_scpalm")
cf.tl.embed(adata, model, representation="mean", key_added="X_scpalm_mean")
cf.tl.baselines(adata, methods=("pca",))
embeddings = ["X_pca_hvg", "X_scpalm", "X_scpalm_mean"]
results = cf.tl.benchmark(adata, embeddings=embeddings, label_key="cell_type")
results[["ARI", "NMI", "ARI_cell", "NMI_cell", "ASW_cell", "AvgBIO"]].round(3)

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), layout="constrained")
fig.get_layout_engine().set(wspace=0.08)  # a visible gap between the frameless panels
for ax, key in zip(axes, embeddings, strict=True):
    cf.tl.umap(adata, key)
    cf.pl.embedding(
        adata,
        basis=key,
        color="cell_type",
        ax=ax,
        show=False,
        title=key,
        legend_loc="right margin" if key == embeddings[-1] else "none",
    )
plt.show()

# %% [markdown]
# A few minutes of training on 2,638 cells do not give scPaLM embeddings that compete with PCA: the cell types are
# barely separated (the paper pre-trains on 0.5 million cells). The {doc}`benchmarks <../../benchmarks>` report a
# longer run, with the same conclusion so far.
#
# ## Imputation
#
# {func}`~cellformers.tl.evaluate_imputation` hides the same entries as above (same arguments and seed) from every
# method, lets each method predict every entry from the masked data, and scores the predictions on the hidden entries
# (log1p of counts per 10k). The scPaLM model was trained on exactly this masked copy, so it never saw the hidden
# values. Baselines: kNN smoothing (MAGIC-style), each gene's mean, and no imputation (hidden entries stay 0).

# %%
imputation = cf.tl.evaluate_imputation(
    full,
    {
        "scPaLM (pathway decoder)": model,
        "scPaLM (cell decoder)": model,
        "kNN smoothing": "knn_smoothing",
        "gene mean": "gene_mean",
        "no imputation": "no_imputation",
    },
    method_kwargs={"scPaLM (pathway decoder)": {"decoder": "pathway"}, "scPaLM (cell decoder)": {"decoder": "cell"}},
    **MASK,
)
imputation.round(3)

# %%
cols = [c for c in ("RMSE", "MAE") if c in imputation.columns]
imputation[cols].plot.barh(figsize=(7, 3), title="error on the hidden entries (lower is better)")
plt.show()

# %% [markdown]
# As the training curves suggested, both scPaLM decoders predict about each gene's mean: their errors are those of
# the "gene mean" baseline, kNN smoothing is slightly better, and all of them beat leaving the hidden entries at
# zero. The errors are large for every method because only expressed entries were hidden (`candidates="nonzero"`),
# whose true values are far from zero; `candidates="all"` is the paper's setting, where most hidden entries are
# zeros.
#
# `cf.tl.impute(adata, model)` writes the imputed matrix of any AnnData to `adata.layers["scpalm_imputed"]`;
# `decoder="cell"` uses the stage-2 decoder, which predicts each gene from the tokens that remain when its own
# pathway token is left out.
