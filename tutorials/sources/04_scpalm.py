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
# {meth}`~cellformers.model.ScPaLM.train` runs stage 1 (pathway encoder, quantizer and decoder) and then stage 2 (cell
# token, mask token, second encoder and decoder, with stage 1 frozen); `train(stage=1)` and `train(stage=2)` run them
# one at a time. Stage 2 is cellformers' default too, `stage2="bottleneck"`: its decoder reconstructs the genes of the
# left-out pathway tokens from the cell token `h_C` alone, so `h_C` has to summarise the cell, and the paper's
# contrastive loss is off; from scratch, the paper's stage 2 (`stage2="paper"`) leaves `h_C` near the untrained network
# (see the user guide). The recipe is the one measured in the {doc}`benchmarks <../../benchmarks>`: 20 + 30 epochs,
# batch 32, learning rate `2e-3` for both stages (the paper's are `1e-3` and `5e-4` at batch 128, for 0.5 million
# cells); `precision` is left at `"auto"` (bfloat16 on this CPU, which has bfloat16 units).

# %%
cf.model.ScPaLM.setup_anndata(adata)
model = cf.model.ScPaLM(adata, preset="small", n_pathway_tokens=32)
print(model)
model.train(max_epochs=20, max_epochs_stage2=30, batch_size=32, lr=2e-3, enable_progress_bar=False)

# %%
cf.pl.history(model)  # both stages in turn: losses, validation MSE beside the per-gene-mean predictor
cf.pl.codebook(model)  # stage 1: MSE vs trivial, codes per position and their entropy by epoch

# %% [markdown]
# {func}`~cellformers.pl.history` draws the two stages one after the other (epochs 0-19, then 20-49). The dashed
# line is the trivial predictor of the same target, each gene's mean normalized expression over the training cells:
# stage 1 ends 9% below it on the validation cells (0.853 against 0.935) and stage 2, whose target is the left-out
# half of the genes, 8% below (0.857 against 0.932; ratio 0.919 in the title), so both stages learned something
# about the cells, and training raised no warning. The bump at epochs 6-7 is the end of the warm-up without
# quantization (the first 30% of stage 1): the codebooks are initialised by k-means there and the decoder starts
# reading quantized tokens.
#
# {func}`~cellformers.pl.codebook` shows the codes: during the warm-up a minibatch of 32 cells uses 4 to 7 codes
# per position; after the k-means initialisation about 21 (of 32 cells), with about 4 bits of entropy per position.
# Over all 2,638 cells, a position uses 68 of its 128 codes on average (right; between 23 and 119).
#
# ## Codebook usage
#
# Every cell becomes `N` = 32 codes, one from each position's codebook of `K` = 128.
# {meth}`~cellformers.model.ScPaLM.get_codebook_usage` summarises how many codes the data uses, counting the codes of
# different positions apart (code `k` of position `j` has the global id `j · K + k`, so `n_codes` is 32 × 128 =
# 4,096); {meth}`~cellformers.model.ScPaLM.get_pathway_codes` returns each cell's local codes `k` (0 to 127), one
# per position, which the plots below turn into global ids.

# %%
usage = model.get_codebook_usage()
print({k: round(v, 2) if isinstance(v, float) else v for k, v in usage.items()})
local = model.get_pathway_codes()  # (cells, positions): local index k of each position's codebook
K = usage["n_codes"] // local.shape[1]  # codes per position
codes = np.arange(local.shape[1]) * K + local  # global ids j * K + k: position j's code k is a column of its own
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
# The cells use 2,172 of the 4,096 codes (53%; 1,924 are never used), 68 per position on average. The perplexity,
# 1,019, is the number of equally used codes with the same entropy; as every position contributes the same number of
# tokens, it is 32 times the (geometric) mean perplexity of a position, so each position spreads the cells over the
# equivalent of about 32 of its 128 codes. A shared codebook uses only a few codes per position (see the user guide);
# {meth}`~cellformers.model.ScPaLM.get_codebook_statistics` gives the per-position numbers directly.
#
# The heatmap shows how the 40 most used codes divide between the cell types (a cell type's tokens at one position
# add up to 1/32 ≈ 0.031, the top of the colour scale). The five most used codes, 3270, 1189, 2078, 1878 and 3174,
# are the myeloid cells' (CD14+ and FCGR3A+ monocytes, dendritic cells) and almost never a lymphocyte's; 1889 and
# 1819 are the other way round, used by T and NK cells and megakaryocytes but not by myeloid cells; B cells have codes
# of their own further right. Codes used mostly by one cell type are candidates for cell-type programmes.
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
# position hold 1/32 ≈ 0.031 of them together. Eight of the ten most frequent codes, those the myeloid cells use in the
# heatmap above, list monocyte and dendritic-cell genes: `S100A8`, `S100A12`, `FCGR1A`, `FCGR1B`, `FOLR3`, `PLA2G7`,
# `C1QA`, `IFI30`, `CLEC10A`, `ASGR1`, `CST3`. The two lymphocyte codes, 1889 and 1819, list genes without an obvious
# common function: the myeloid programme is the most distinct one in this data, and what the other codes hold is
# less clear after a few minutes of training. (Code numbers change from one training run to the next.)
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
# MS4A1 and CD79A go to one code, 2449; the NK markers NKG7 and GNLY to another, 3579; FCGR3A to the myeloid code
# 3270; the platelet marker PPBP to 3690. (CD3E, LYZ and CD14 are not among the 1,838 input genes.)
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
# Two minutes of training on 2,638 cells bring both scPaLM embeddings close to, but not up to, HVG-PCA: AvgBIO 0.683
# for `h_C` and 0.714 for the mean pathway token, against 0.751 for HVG-PCA (the paper pre-trains on 0.5 million
# cells). `h_C` separates the B cells, the CD4 T cells and the myeloid cells (one long strand from CD14+ monocytes
# to FCGR3A+ monocytes and dendritic cells), and keeps NK and CD8 T cells together apart from the rest; the mean
# pathway token gives a similar picture. In this run the mean pathway token, which comes from stage 1 alone, scores a
# little higher than `h_C`; over three seeds of the benchmark, `h_C` scores higher (0.670 ± 0.019 against
# 0.584 ± 0.131, see the {doc}`benchmarks <../../benchmarks>`).
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
# Both scPaLM decoders predict the hidden expressed entries better than the baselines: RMSE 3.025 for the pathway
# (stage-1) decoder and 3.016 for the cell (stage-2) decoder, against 3.076 for kNN smoothing, 3.090 for the gene
# mean and 3.783 for leaving the hidden entries at zero. The errors are large for every method because only
# expressed entries were hidden (`candidates="nonzero"`), whose true values are far from zero. With the paper's
# setting, `candidates="all"`, almost all hidden entries are zeros: kNN smoothing is then ahead of both decoders, and
# leaving the hidden entries at zero beats every method (see the user guide).
#
# `cf.tl.impute(adata, model)` writes the imputed matrix of any AnnData to `adata.layers["scpalm_imputed"]`;
# `decoder="cell"` uses the stage-2 decoder, which predicts each gene from the cell token `h_C` of the pathway tokens
# that remain when its own token is left out.
