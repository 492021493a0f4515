# %% [markdown]
# # Pre-training, sharing and loading a checkpoint
#
# A foundation model is pre-trained once on a large corpus and then applied to many datasets. This tutorial walks
# through that life cycle in miniature, on a laptop CPU and without touching the internet:
#
# 1. **pre-train** a small xTrimoGene {cite:p}`Gong23` on a corpus of two real PBMC datasets with the
#    `python -m cellformers pretrain` command, watch the loss go down, and resume the run from its last checkpoint;
# 2. **package** the result as one archive with its sha256, **register** it under a name, load it by that name in a
#    fresh Python process, see a tampered archive refused, and download it from a (local) web server;
# 3. **apply** the checkpoint to a dataset it has never seen, measured on another gene panel: align the genes,
#    embed, cluster, draw a UMAP;
# 4. convert the public scFoundation {cite:p}`Hao24` and scGPT {cite:p}`Cui24` weights, which follow the same path.
#
# ```{note}
# The corpus here is 3,000 cells and the model is trained for five short epochs, so the checkpoint is a toy: it shows
# the workflow, not what pre-training on millions of cells achieves. The same commands scale to a GPU cluster
# (see {doc}`../../pretrained`).
# ```

# %%
import dataclasses
import functools
import hashlib
import http.server
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import anndata as ad
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scanpy as sc
import scvi
import torch
from sklearn.metrics import adjusted_rand_score

import cellformers as cf

warnings.filterwarnings("ignore", module="lightning")
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
scvi.settings.verbosity = logging.WARNING  # scvi-tools' notes on AnnData set-up
cf.settings.progress_bar = False  # no progress bars in the stored outputs
cf.settings.seed = 0  # the one seed: cellformers, scvi-tools, torch, NumPy, random
sc.settings.set_figure_params(dpi=80, frameon=False)
# a cache of its own, so that the downloads below really happen (by default: ~/.cache/cellformers)
cf.settings.cache_dir = Path("cellformers_cache").resolve()
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", "../../shared"))
print(f"cellformers {cf.__version__}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads")

# %% [markdown]
# ## 1. Pre-training from the command line
#
# ### The corpus and the gene vocabulary
#
# The corpus is two `.h5ad` files with raw counts: 10x Genomics' "3k PBMCs" (v1 chemistry) and "4k PBMCs" (v2
# chemistry, all 33,694 genes). The `pretrain` command never loads them: it opens each file backed and streams blocks
# of cells from disk, so the same command works on a corpus that does not fit in memory.
#
# Every model embeds genes by their id in a **gene vocabulary**, and the vocabulary fixes which genes the checkpoint
# knows. The command's default is the 19,264 genes of scFoundation (xTrimoGene's input list), whose decoder is far too
# large for a laptop. We use our own vocabulary instead: the 1,000 most variable genes of the corpus, written to a
# JSON file with {meth}`~cellformers.data.GeneVocab.to_json`.

# %%
corpus = [SHARED / "data" / "pbmc3k_processed.h5ad", SHARED / "data" / "pbmc4k_soupx.h5ad"]
combined = ad.concat(
    {path.stem: sc.read_h5ad(path) for path in corpus}, label="dataset", join="inner", index_unique="-"
)
sc.pp.normalize_total(combined, target_sum=1e4)
sc.pp.log1p(combined)
sc.pp.highly_variable_genes(combined, n_top_genes=1000, batch_key="dataset")
genes = list(combined.var_names[combined.var["highly_variable"]])

vocab = cf.data.GeneVocab(genes, name="pbmc-hvg-1000")
vocab.to_json("pbmc_vocab.json")
print(f"{combined.n_obs} cells, {combined.n_vars} genes in both files; vocabulary: {vocab}")
del combined

# %% [markdown]
# ### Running `python -m cellformers pretrain`
#
# In a terminal the command reads:
#
# ```bash
# python -m cellformers pretrain --model xtrimogene --preset 3M --vocab pbmc_vocab.json \
#     --data pbmc3k_processed.h5ad pbmc4k_soupx.h5ad --max-cells 1500 --min-genes 20 --val-fraction 0.1 \
#     --model-kwargs '{"encoder_dim": 64, ...}' --plan-kwargs '{"lr": 1e-3, "warmup_steps": 50}' \
#     --epochs 3 --batch-size 32 --accelerator cpu --out runs/xtg-pbmc --name xtg-pbmc-tiny --license CC-BY-4.0
# ```
#
# From a notebook, run it with `subprocess` (or `!python -m cellformers ...`). What the options do:
#
# - `--max-cells 1500` keeps a seeded random 1,500 cells of each file (a short tutorial);
# - `--min-genes 20` is the quality control: a cell is kept when more than 20 of its expressed genes are in the
#   vocabulary. xTrimoGene keeps cells with more than 200 expressed genes of its 19,264 (the default), too strict for
#   a 1,000-gene vocabulary;
# - `--val-fraction 0.1` holds out 10% of the cells for validation, chosen by a hash of file and cell name (so a
#   resumed run holds out the same cells);
# - `--model-kwargs` makes the "3M" preset narrower and shallower, `--plan-kwargs` sets the optimizer.

# %%
MODEL_KWARGS = {
    "encoder_dim": 64,
    "encoder_heads": 4,
    "encoder_ff": 128,
    "encoder_layers": 2,
    "decoder_layers": 1,
    "decoder_dim": 32,
    "decoder_ff": 64,
}
PRETRAIN_ARGS = [
    "--model", "xtrimogene", "--preset", "3M", "--vocab", "pbmc_vocab.json",
    "--data", *map(str, corpus), "--max-cells", "1500", "--min-genes", "20", "--val-fraction", "0.1",
    "--model-kwargs", json.dumps(MODEL_KWARGS), "--plan-kwargs", json.dumps({"lr": 1e-3, "warmup_steps": 50}),
    "--batch-size", "32", "--accelerator", "cpu", "--seed", "0",
    "--out", "runs/xtg-pbmc", "--name", "xtg-pbmc-tiny", "--license", "CC-BY-4.0",
]  # fmt: skip


def cellformers_cli(*args: str) -> str:
    """Run ``python -m cellformers <args>`` in a child process, as a terminal would; return what it printed."""
    env = {**os.environ, "COLUMNS": "120"}
    result = subprocess.run(
        [sys.executable, "-m", "cellformers", *args], capture_output=True, text=True, env=env, check=False
    )
    if result.returncode != 0:
        msg = f"python -m cellformers {args[0]} failed:\n{result.stderr[-3000:]}"
        raise RuntimeError(msg)
    # Lightning's progress bars are meant for a terminal: leave them out
    return "\n".join(line.rstrip() for line in result.stdout.splitlines() if "━" not in line and "\x1b" not in line)


print(cellformers_cli("pretrain", *PRETRAIN_ARGS, "--epochs", "3"))

# %% [markdown]
# The command reported what it kept (15 pbmc3k cells fail the quality control; 10% of the rest are held out),
# trained, and wrote a
# **checkpoint** folder, an **archive** of it with its **sha256**, and the code that registers it. The run folder:

# %%
run = Path("runs/xtg-pbmc")
for path in sorted(run.rglob("*")):
    if path.is_file():
        print(f"{str(path.relative_to(run)):42s} {path.stat().st_size / 1e3:9.1f} kB")

# %% [markdown]
# `lightning/train/` holds the Lightning checkpoint written at the end of every epoch (`epochNNN.ckpt`, the latest
# one kept) and `last.ckpt`, with the optimizer and scheduler state. `--resume`, with the same arguments and a larger
# `--epochs`, continues from there: two more epochs.

# %%
printed = cellformers_cli("pretrain", *PRETRAIN_ARGS, "--epochs", "5", "--resume")
print("\n".join(line for line in printed.splitlines() if "resuming" in line or "sha256:" in line))
print(sorted(p.name for p in (run / "lightning" / "train").iterdir()))

# %% [markdown]
# `history.json` holds the per-epoch losses of both parts of the run. The loss is xTrimoGene's: the mean squared error
# of the masked expression values (log1p of counts per 10k), on the training cells and on the held-out ones.

# %%
history = json.loads((run / "history.json").read_text())
losses = pd.DataFrame(
    {
        name: pd.Series(history[key]["values"], index=history[key]["index"])
        for name, key in [("training", "masked_mse_train"), ("validation", "masked_mse_validation")]
    }
).rename_axis("epoch")
losses.index = losses.index.astype(int)
ax = losses.plot(marker="o", figsize=(4.5, 3))
ax.axvline(2.5, color="grey", linestyle=":", label="resumed")
ax.set(ylabel="masked MSE", title="pre-training xTrimoGene")
ax.legend()
plt.show()
losses.round(3)

# %% [markdown]
# The held-out loss falls across the resume without a jump: the second run picked up the weights, the optimizer
# state and the learning-rate schedule of the first.
#
# ## 2. Package, register, load
#
# ### The archive and its sha256
#
# A checkpoint is a folder: `config.json` (the model class, its hyperparameters and `setup_anndata` arguments, the
# genes), `model.safetensors` (the weights, no pickle), `vocab.json` and `checksums.json`. The registry works with
# one file per checkpoint: {func}`~cellformers.pretrained.pack_checkpoint` packs the folder with fixed timestamps and
# owners, so packing the same checkpoint twice gives the same bytes and the same sha256. The command did this already;
# packing again shows it:

# %%
checkpoint = run / "checkpoint"
summary = json.loads((checkpoint / "config.json").read_text())["training_summary"]
print(f"checkpoint after {summary['n_epochs']} epochs, validation loss {summary['final']['masked_mse_validation']:.3f}")
archive = cf.pretrained.pack_checkpoint(checkpoint, "xtg-pbmc-tiny.tar.gz", overwrite=True)
sha256 = hashlib.sha256(archive.read_bytes()).hexdigest()
print(f"{archive}: {archive.stat().st_size / 1e6:.2f} MB, sha256 {sha256}")
print("same bytes as the command's archive:", sha256 == hashlib.sha256((run / archive.name).read_bytes()).hexdigest())
print((run / f"{archive.name}.sha256").read_text())  # the `sha256sum` line beside the archive

# %% [markdown]
# ### Registering a local checkpoint
#
# A {class}`~cellformers.pretrained.PretrainedCard` pins a name to one archive and its sha256;
# {meth}`~cellformers.pretrained.PretrainedCard.from_archive` reads the model class and vocabulary from the archive
# and hashes it. {func}`~cellformers.pretrained.register_pretrained` adds it to the registry of the session (put these
# lines at the top of a script, or in a lab package).

# %%
card = cf.pretrained.PretrainedCard.from_archive(
    archive,
    name="xtg-pbmc-tiny",
    license="CC-BY-4.0",
    description="tutorial: xTrimoGene (narrow 3M) on 3,000 PBMCs, 5 epochs",
)
cf.pretrained.register_pretrained(card)
cf.pretrained.list_pretrained()[["model_class", "vocabulary", "size_mb", "license", "cached", "sha256"]]

# %% [markdown]
# `from_pretrained` finds the name in the registry, checks the archive against the card's sha256, extracts it into the
# cache (checking every file against `checksums.json`), builds the model class named in `config.json` and reads the
# weights. The pbmc3k cells have 13,714 genes and the checkpoint 1,000: the model works on an **aligned copy**,
# `model.adata`, with exactly the checkpoint's genes (`pbmc3k` itself is not modified; `cf.tl.embed(pbmc3k, model)`
# would align it the same way and write into `pbmc3k.obsm`).

# %%
pbmc3k = sc.read_h5ad(corpus[0])
model = cf.model.XTrimoGene.from_pretrained("xtg-pbmc-tiny", pbmc3k)
print(model.adata.shape, model.pretrained_info_["name"], model.pretrained_info_["sha256"][:16])
z = model.get_latent_representation()
z.shape

# %% [markdown]
# ### Loading by name in a new session
#
# The card is all another session needs. A fresh Python process registers the same card (as the command printed
# it), loads the model by name and embeds the same cells: the embedding is identical, bit for bit.

# %%
Path("card.json").write_text(json.dumps(dataclasses.asdict(card)))
script = f"""
import json
import numpy as np
import scanpy as sc
import cellformers as cf

cf.settings.cache_dir = {str(cf.settings.cache_dir)!r}
cf.pretrained.register_pretrained(cf.pretrained.PretrainedCard(**json.load(open("card.json"))))
model = cf.model.XTrimoGene.from_pretrained("xtg-pbmc-tiny", sc.read_h5ad({str(corpus[0])!r}))
np.save("z_new_session.npy", model.get_latent_representation())
"""
subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
z_new = np.load("z_new_session.npy")
print("identical embeddings in a new session:", np.array_equal(z, z_new))

# %% [markdown]
# ### A tampered archive is refused
#
# Change one byte of the archive (a damaged download, or someone swapping the weights) and the card no longer
# matches: loading raises {class}`~cellformers.ChecksumError` before anything is extracted.

# %%
data = bytearray(archive.read_bytes())
data[len(data) // 2] ^= 0x01
Path("tampered.tar.gz").write_bytes(bytes(data))
cf.pretrained.register_pretrained(
    dataclasses.replace(card, name="xtg-pbmc-tampered", url=Path("tampered.tar.gz").resolve().as_uri())
)
try:
    cf.model.XTrimoGene.from_pretrained("xtg-pbmc-tampered", pbmc3k)
except cf.ChecksumError as err:
    print(f"{type(err).__name__}: {err}")

# %% [markdown]
# ### Downloading from a server
#
# To share the checkpoint, upload the archive (a lab web server, Zenodo, a Hugging Face repository) and give the card
# its public address: `PretrainedCard.from_archive(archive, name=..., url="https://...")`. On first use,
# `from_pretrained` downloads it with pooch into `cellformers.settings.cache_dir`, checks the sha256 (a file that
# does not match is deleted) and later uses the cached copy without touching the network.
#
# Here the "server" is Python's `http.server` on 127.0.0.1, in a background thread, so that nothing leaves the
# machine. It records the files it is asked for.


# %%
class Handler(http.server.SimpleHTTPRequestHandler):
    """Serve a folder; record the requested paths instead of logging them."""

    requests: list[str] = []

    def log_message(self, fmt, *args):
        Handler.requests.append(self.path)


def serve(folder: Path) -> str:
    """Serve ``folder`` on 127.0.0.1 (a free port) in a background thread; return its base URL."""
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(folder)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{httpd.server_address[1]}"


os.environ["NO_PROXY"] = "127.0.0.1,localhost"  # a proxy setting must not intercept the local server
Path("www").mkdir(exist_ok=True)
shutil.copyfile(archive, Path("www") / archive.name)
base_url = serve(Path("www"))

shared_card = dataclasses.replace(card, name="xtg-pbmc-shared", url=f"{base_url}/{archive.name}")
cf.pretrained.register_pretrained(shared_card)
downloaded = cf.model.XTrimoGene.from_pretrained("xtg-pbmc-shared", pbmc3k)
print("requests:", Handler.requests)
print("cached:", sorted(p.name for p in (cf.settings.cache_dir / "pretrained").glob("*.tar.gz")))
print("same embeddings:", np.array_equal(downloaded.get_latent_representation(), z))
cf.model.XTrimoGene.from_pretrained("xtg-pbmc-shared", pbmc3k)  # the second time: from the cache
print("requests after loading it again:", Handler.requests)

# %% [markdown]
# The environment variable `CELLFORMERS_PRETRAINED_URL` replaces the host of every card (a mirror, or a server inside
# a network without internet access, that serves `<base>/<card.filename>`); the sha256 pins still apply. Without a
# card, `from_pretrained("https://.../xtg-pbmc-tiny.tar.gz", sha256="...")` loads an archive directly; a URL without
# a hash is refused.
#
# ## 3. Applying the checkpoint to another dataset
#
# The FACS-sorted PBMCs of Zheng et al. (2017) are a different experiment, with their genes filtered to 8,846. Before
# applying a checkpoint, check how many of its genes the data measures: {func}`~cellformers.pp.map_genes` maps the
# data's genes to the checkpoint's vocabulary and {func}`~cellformers.pp.align_to_reference` builds the aligned
# copy, the checkpoint's genes in its order, with the genes the data lacks as zeros (as xTrimoGene treats unmeasured
# genes, App. 1 of {cite:t}`Gong23`). Both report what is missing.

# %%
zheng = sc.read_h5ad(SHARED / "data" / "pbmc_zheng_sorted_3500.h5ad")
zheng.obs["cell_type"] = zheng.obs["cell_type_short"].astype("category")
checkpoint_vocab = cf.data.GeneVocab.from_json(model.pretrained_info_["directory"] + "/vocab.json")
cf.pp.map_genes(zheng, checkpoint_vocab, min_coverage=0.0)
mapping = zheng.uns["cellformers_gene_mapping"]
print(f"{mapping['n_mapped']} of the data's {mapping['n_genes']} genes are in the checkpoint's vocabulary, "
      f"which is {mapping['vocab_coverage']:.1%} of its {checkpoint_vocab.n_genes} genes")  # fmt: skip

aligned = cf.pp.align_to_reference(zheng, checkpoint_vocab.genes)
alignment = aligned.uns["cellformers_alignment"]
print(f"aligned: {aligned.shape}; {alignment['n_reference'] - alignment['n_present']} checkpoint genes are missing "
      f"(zeros), e.g. {alignment['missing_examples'][:8]}")  # fmt: skip

# %% [markdown]
# A quarter of the checkpoint's genes were filtered out of this dataset (among them the complement genes *C1QA* and
# *C1QB*, monocyte markers). That is above the floor of `from_pretrained` (`min_gene_coverage=0.5`: below it the data
# is refused with a {class}`~cellformers.GeneMappingError`), but the model will see zeros where it expects signal. Loading the checkpoint with this data aligns it the
# same way; its embedding goes into `zheng.obsm` (same cells, same order).

# %%
query_model = cf.model.XTrimoGene.from_pretrained("xtg-pbmc-tiny", zheng)
zheng.obsm["X_xtrimogene"] = query_model.get_latent_representation()
cf.tl.baselines(zheng, methods=("pca",))  # HVG-PCA of the data itself, for comparison
for key in ("X_xtrimogene", "X_pca_hvg"):
    cf.tl.leiden_search(zheng, use_rep=key, n_clusters=7, key_added=f"leiden_{key}")
scores = pd.Series(
    {key: adjusted_rand_score(zheng.obs["cell_type"], zheng.obs[f"leiden_{key}"]) for key in ("X_xtrimogene", "X_pca_hvg")},
    name="ARI with the FACS labels (7 Leiden clusters)",
)  # fmt: skip
scores.round(3)

# %%
cf.tl.umap(zheng, "X_xtrimogene")
fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
fig.get_layout_engine().set(wspace=0.08)  # a visible gap between the frameless panels
cf.pl.embedding(zheng, basis="X_xtrimogene", color="cell_type", ax=axes[0], show=False, title="FACS population")
cf.pl.embedding(
    zheng, basis="X_xtrimogene", color="leiden_X_xtrimogene", ax=axes[1], show=False, title="Leiden clusters",
    legend_loc="on data", palette="Set2",  # not the FACS colours: cluster numbers are not populations
)  # fmt: skip
plt.show()

# %% [markdown]
# The checkpoint, which never saw these cells, separates the monocytes, the NK cells and most B cells, and part of the
# naive CD8⁺ T cells; the CD4⁺ T-cell subsets (naive, memory, regulatory), which differ in a handful of genes, mix.
# PCA of the data's own variable genes does clearly better (ARI 0.71 against 0.33). That is the toy model of this
# tutorial speaking: a checkpoint pre-trained on millions of cells is what makes the embedding of new data worth
# having.
#
# ## 4. Converting scFoundation and scGPT checkpoints
#
# The public foundation-model weights are not distributed in cellformers' format. The converters read the upstream
# files safely (`torch.load(weights_only=True)`: tensors and plain containers only), map the weights onto the
# cellformers modules (the tests check that the converted models compute the upstream forward pass) and return an
# ordinary model; `out=` also writes it as a checkpoint, which you then pack and register exactly as in section 2.
#
# The upstream files (hundreds of MB, downloaded from the scFoundation and scGPT repositories) are not available
# offline, so the code of this section is shown, not run:
#
# ```python
# # scFoundation's models.ckpt -> XTrimoGene (19,264-gene vocabulary, 3,072-dimensional cell embedding)
# model = cf.pretrained.convert_scfoundation("models.ckpt", key="cell", out="scfoundation_cell")
# archive = cf.pretrained.pack_checkpoint("scfoundation_cell", "scfoundation_cell.tar.gz")
# cf.pretrained.register_pretrained(
#     cf.pretrained.PretrainedCard.from_archive(archive, name="scfoundation-cell", license="...")
# )
# model = cf.model.XTrimoGene.from_pretrained("scfoundation-cell", adata)  # adata: raw counts
# adata.obsm["X_scfoundation"] = model.get_latent_representation(pooling="all")
#
# # scGPT's model folder (best_model.pt, args.json, vocab.json) -> ScFormer
# model = cf.pretrained.convert_scgpt("scGPT_human/", out="scgpt_human")
# model = cf.model.ScFormer.from_pretrained("scgpt_human", adata, min_gene_coverage=0.1)
# adata.obsm["X_scgpt"] = model.get_latent_representation()
# ```
#
# What *can* be checked offline is how much of a dataset each public vocabulary covers. The two gene lists are
# downloaded once from GitHub and checked against pinned hashes; this notebook serves the copies in `shared/data/genes`
# from the local server instead, through `CELLFORMERS_REFERENCE_URL` (the mirror variable of gene lists).

# %%
os.environ["CELLFORMERS_REFERENCE_URL"] = serve(SHARED / "data" / "genes")
coverage = {}
for reference in ("scfoundation-19264", "scgpt-default"):
    mapped = cf.pp.map_genes(zheng, reference, min_coverage=0.0, copy=True)
    info = mapped.uns["cellformers_gene_mapping"]
    coverage[reference] = {
        "vocabulary genes": cf.data.GeneVocab.load(reference).n_genes,
        "measured here": info["n_mapped"],
        "share of the vocabulary": round(info["vocab_coverage"], 3),
        "share of the data's genes": round(info["coverage"], 3),
    }
pd.DataFrame.from_dict(coverage, orient="index")

# %% [markdown]
# The Zheng data measures under half of scFoundation's genes and a sixth of scGPT's: the aligned copy fills the rest
# with zeros, which both models saw in pre-training (most genes are zero in most cells), but the lower the coverage,
# the further the input is from what the model was trained on. scFoundation's default floor (`min_gene_coverage=0.5`)
# would refuse this dataset; lower it knowingly, as the scGPT example does, or use data with all measured genes
# rather than a filtered panel.
