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
# and the paper's `K` = 128 codes. The quantizer is cellformers' default, `quantizer="per_position"`: each of the 32
# positions has its own codebook of `K` codes (4,096 codes in all), initialised by k-means after the first 30% of the
# stage-1 steps, which run without quantization. The paper shares one codebook between the positions
# (`quantizer="paper"`; see the {doc}`user guide <../../user_guide/scpalm>` for why it is not the default).
# {meth}`~cellformers.model.ScPaLM.train` runs stage 1 (pathway encoder, quantizer and decoder; AdamW at `1e-3`) and
# then stage 2 (cell token, mask token, second encoder and decoder, with stage 1 frozen; `5e-4`). `train(stage=1)`
# and `train(stage=2)` run them one at a time.

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
# Perplexity is `exp` of the entropy of the code histogram of a minibatch (64 cells × 32 tokens, over all 4,096
# codes): it grows as more codes are used evenly (dead codes are re-initialised during training, App. A.2). In the
# first three epochs, the warm-up without quantization, it stays near 100; when the codebooks are initialised by
# k-means it jumps to about 1,300 and then settles near 1,000. The stage-1 reconstruction error on the training
# cells keeps falling slowly (from 0.98 to 0.88). In stage 2 the contrastive loss is computed against pseudo-labels
# that K-Means refits as training goes, so it need not decrease steadily (here it alternates between about 1 and 0).
#
# Training ends with a `UserWarning` about stage 2, the last one run: on the validation cells its masked-region MSE
# (0.9417) is no lower than that of predicting each gene's mean normalized expression over the training cells
# (0.9413; ratio 1.000). The stage-2 encoder and decoder have not learned to predict a left-out region of a cell
# beyond the gene means, so, as the warning says, the cell token `h_C` reflects little beyond gene identity and the
# untrained network. (Stage 1 raised no such warning.) This is a few minutes on a CPU from scratch, not a
# pre-trained scPaLM.
#
# ## Codebook usage
#
# Every cell becomes `N` = 32 codes, one from each position's codebook of `K` = 128.
# {meth}`~cellformers.model.ScPaLM.get_codebook_usage` summarises how many codes the data uses, counting the codes of
# different positions apart (code `k` of position `j` has the global id `j · K + k`, so `n_codes` is 32 × 128 =
# 4,096); {meth}`~cellformers.model.ScPaLM.get_pathway_codes` returns each cell's local codes `k` (0 to 127), one
# per position.

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
# The cells use 2,652 of the 4,096 codes (65%; 1,444 are never used), about 83 per position on average. The
# perplexity, 1,450, is the number of equally used codes with the same entropy; as every position contributes the
# same number of tokens, it is 32 times the (geometric) mean perplexity of a position, so each position spreads the
# cells over the equivalent of about 45 of its 128 codes. A shared codebook uses only a few codes per position (see
# the user guide); {meth}`~cellformers.model.ScPaLM.get_codebook_statistics` gives the per-position numbers
# directly.
#
# The two plots count the local index `k` of each token, pooled over the 32 positions: at most 128 of the 4,096 bars
# on the left are non-zero, and each heatmap column adds up 32 different codes, one per position. Most indices are
# shared by all cell types, but some are not: in this run 102, 108, 87, 44 and 117 are used mostly by the myeloid
# cells (monocytes and dendritic cells) and rarely by lymphocytes, and 19 is used most by B cells. Codes used mostly
# by one cell type are candidates for cell-type programmes.
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
# The codes here are global ids `j · K + k`. A code's `frequency` is its share of all tokens; the codes of one
# position hold 1/32 ≈ 0.031 of them together. In this run three of the ten most frequent codes list myeloid genes,
# and their local indices are among those favoured by myeloid cells in the heatmap above: 300 (position 2, index 44)
# and 1909 (position 14, index 117) list `S100A8`, `S100A12`, `CD93`, `FCGR1B`, `FOLR3` and `PLA2G7` (monocytes),
# 1382 (position 10, index 102) `CLEC10A` and `FCER1A` (dendritic cells), `C1QA` and `PLA2G7`. The other lists mix
# genes without an obvious common function, as expected after a few minutes of training. (Code numbers change from
# one training run to the next.)
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
# A share is at most 1/32 ≈ 0.031 here, since each position's codebook holds 1/32 of every gene. The B-cell markers
# MS4A1 and CD79A go to one code, 2963 (position 23, index 19, the index used most by B cells above), FCGR3A to the
# myeloid code 1382, and NKG7 and GNLY to 2408, the most frequent code, whose own top genes are not NK genes: the
# code that takes the largest share of a gene is not necessarily specific to it. (CD3E, LYZ and CD14 are not among
# the 1,838 input genes.)
#
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
# A few minutes of training on 2,638 cells do not give scPaLM embeddings that compete with PCA: AvgBIO 0.45 for
# `h_C` and 0.48 for the mean pathway token, against 0.75 for HVG-PCA (the paper pre-trains on 0.5 million cells).
# Both separate the myeloid cells from the lymphocytes and keep most B cells together, but mix the T and NK cells.
# The mean of the pathway tokens, which comes from stage 1 alone, scores a little higher than `h_C`. The
# {doc}`benchmarks <../../benchmarks>` report a longer run, with the same conclusion so far.
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
# The two scPaLM decoders and the two imputing baselines have nearly the same error: the pathway (stage-1) decoder
# is slightly below the "gene mean" baseline (RMSE 3.067 against 3.090) and level with kNN smoothing (3.076), the
# cell (stage-2) decoder is at the gene-mean level (3.099; stage 2 did not beat the gene means, see the warning
# above), and all of them beat leaving the hidden entries at zero (3.783). The errors are large for every method
# because only expressed entries were hidden (`candidates="nonzero"`), whose true values are far from zero;
# `candidates="all"` is the paper's setting, where most hidden entries are zeros.
#
# `cf.tl.impute(adata, model)` writes the imputed matrix of any AnnData to `adata.layers["scpalm_imputed"]`;
# `decoder="cell"` uses the stage-2 decoder, which predicts each gene from the tokens that remain when its own
# pathway token is left out.
