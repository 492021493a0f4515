"""The xTrimoGene CPU recipe over seeds, beside the baselines of the same run (issue 23's acceptance run).

For one dataset and one seed (the model's initialisation, its 90/10 train/validation split, the annotation split):

* HVG-PCA (and, with ``--scvi``, scVI and Harmony on batched data) through :func:`cellformers.tl.baselines`;
* the recipe of ``xtrimogene_pbmc3k.py`` (``MODEL_KWARGS``, ``TRAIN_RECIPE``: encoder 4 x 64, Performer decoder
  2 x 64, 20 epochs, lr 2e-3) on the dataset's HVGs, with its wall and CPU time, the validation masked MSE per epoch
  against the trivial predictor of the same masked targets (each gene's training mean), and masked Pearson on the
  held-out cells;
* the same architecture untrained (:func:`cellformers.tl.embed_untrained`, same seed);
* :func:`cellformers.tl.benchmark` rows (AvgBIO, AvgBATCH, Overall) of all embeddings;
* a classifier head on the frozen encoder (:meth:`~cellformers.model.XTrimoGene.train_annotator`, 8:1:1 split)
  beside logistic regression on HVG-PCA on the same split (:func:`cellformers.tl.annotation_baselines`).

Each run writes one JSON per seed; ``--merge`` gathers them into ``benchmarks/results/xtrimogene_recipe_<dataset>.json``
with the mean and sd over seeds in ``table`` / ``table_sd`` (rows keyed by embedding).

Usage (two seeds side by side on a 2-core machine, one thread each)::

    python benchmarks/xtrimogene_recipe.py --dataset pancreas --seed 0 --scvi --out /tmp/p0.json &
    python benchmarks/xtrimogene_recipe.py --dataset pancreas --seed 1 --scvi --out /tmp/p1.json
    python benchmarks/xtrimogene_recipe.py --merge /tmp/p0.json /tmp/p1.json --dataset pancreas

Data: ``../shared/data`` (``CELLFORMERS_SHARED`` otherwise). pbmc3k: the tutorial's 1,838 HVGs (as
``xtrimogene_pbmc3k.py``); other data: 2,000 ``seurat_v3`` HVGs of the counts (batch-aware where there is a batch).
All genes stay registered, so the library size of the normalization is the cell's total count.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import mean_sd, quiet_libraries, seed_tables  # noqa: E402
from xtrimogene_pbmc3k import MODEL_KWARGS, TRAIN_RECIPE  # noqa: E402

SHARED = Path(os.environ.get("CELLFORMERS_SHARED", HERE.parent.parent / "shared"))
DATASETS = {
    "pbmc3k": ("pbmc3k_processed.h5ad", None),
    "pancreas": ("pancreas_baron_human.h5ad", "batch"),
    "cellbench": ("cellbench_celllines_multiprotocol.h5ad", "batch"),
}
LABELS_KEY = "cell_type"
COLUMNS = ("AvgBIO", "AvgBATCH", "Overall", "ARI_cell", "NMI_cell", "ASW_cell", "ASW_batch", "GraphConn")


def load(name: str):
    import anndata as ad
    import scanpy as sc

    fname, batch_key = DATASETS[name]
    adata = ad.read_h5ad(SHARED / "data" / fname)
    adata.obs[LABELS_KEY] = adata.obs[LABELS_KEY].astype(str).astype("category")
    if batch_key:
        adata.obs[batch_key] = adata.obs[batch_key].astype(str).astype("category")
    if "highly_variable" in adata.var and adata.var["highly_variable"].any():
        hvgs = list(adata.var_names[adata.var["highly_variable"].to_numpy()])
    else:
        tmp = sc.AnnData(adata.X.copy(), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
        if batch_key:
            tmp.obs[batch_key] = adata.obs[batch_key]
        sc.pp.filter_genes(tmp, min_cells=3)
        sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=2000, batch_key=batch_key)
        hvgs = list(tmp.var_names[tmp.var["highly_variable"].to_numpy()])
    return adata, batch_key, hvgs


def run(args) -> dict:
    import scvi

    import cellformers as cf
    from cellformers.model import XTrimoGene
    from cellformers.model.base._annotation import read_labels, stratified_split

    def pin():  # scanpy's numba kernels reset the thread count torch shares
        torch.set_num_threads(args.threads)

    t_all = time.perf_counter()
    adata, batch_key, hvgs = load(args.dataset)
    pin()
    scvi.settings.seed = args.seed
    vocab = cf.data.GeneVocab(hvgs, name=f"{args.dataset}-hvg")
    XTrimoGene.setup_anndata(adata, labels_key=LABELS_KEY)
    model = XTrimoGene(adata, vocab=vocab, **MODEL_KWARGS)
    pin()
    cf.tl.embed_untrained(adata, model, key_added="X_xtrimogene_untrained", seed=args.seed)

    pin()
    epochs = args.epochs or TRAIN_RECIPE["max_epochs"]
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(
        max_epochs=epochs,
        batch_size=TRAIN_RECIPE["batch_size"],
        precision=args.precision,
        accelerator="cpu",
        enable_progress_bar=False,
        enable_model_summary=False,
        plan_kwargs={"lr": TRAIN_RECIPE["lr"], "warmup_steps": TRAIN_RECIPE["warmup_steps"]},
    )
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    hist = model.history_

    def curve(key):
        return hist[key].to_numpy(dtype=float).ravel().tolist() if key in hist else None

    val = curve("masked_mse_validation")
    print(f"seed {args.seed}: trained in {train_s:.0f} s wall, {train_cpu:.0f} s CPU; val masked MSE {val}", flush=True)
    held_out = np.asarray(model.validation_indices)
    recovery = model.evaluate_masked_recovery(indices=held_out, n_groups=4)
    overall = recovery.iloc[0].to_dict()

    pin()
    t0 = time.perf_counter()
    adata.obsm["X_xtrimogene"] = model.get_latent_representation()
    embed_s = time.perf_counter() - t0

    methods = ("pca", "scvi", "harmony") if args.scvi and batch_key else ("pca", "scvi") if args.scvi else ("pca",)
    cf.tl.baselines(
        adata, methods=methods, batch_key=batch_key, accelerator="cpu", random_state=args.seed, n_top_genes=2000
    )
    keys = [k for k in ("X_pca_hvg", "X_scvi", "X_harmony") if k in adata.obsm]
    keys += ["X_xtrimogene", "X_xtrimogene_untrained"]
    table = cf.tl.benchmark(adata, embeddings=keys, label_key=LABELS_KEY, batch_key=batch_key, random_state=args.seed)
    cols = [c for c in COLUMNS if c in table.columns]
    print(table[cols].round(3).to_string(), flush=True)

    pin()
    split = stratified_split(read_labels(adata, LABELS_KEY), (0.8, 0.1, 0.1), args.seed)
    t0 = time.perf_counter()
    ann = model.train_annotator(LABELS_KEY, adata, freeze="encoder", seed=args.seed, precision=args.precision)
    head_s = time.perf_counter() - t0
    assert all(np.array_equal(model.annotator_.split[k], split[k]) for k in split), "annotation split differs"
    base = cf.tl.annotation_baselines(
        adata, labels_key=LABELS_KEY, split=split, seed=args.seed, methods=("logreg_pca",)
    )
    annotation = {
        "xtrimogene_frozen": {k: ann.metrics["test"][k] for k in ("macro_f1", "macro_precision", "accuracy")},
        "logreg_pca": {k: float(base.loc["logreg_pca", k]) for k in ("macro_f1", "macro_precision", "accuracy")},
        "head_seconds": head_s,
    }
    print("annotation", json.dumps(annotation, default=float), flush=True)

    return {
        "dataset": DATASETS[args.dataset][0],
        "seed": args.seed,
        "n_cells": int(adata.n_obs),
        "n_model_genes": len(hvgs),
        "batch_key": batch_key,
        "model_kwargs": MODEL_KWARGS,
        "train_recipe": {**TRAIN_RECIPE, "max_epochs": epochs, "precision": args.precision},
        "machine": {
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": cf.train.bf16_hardware("cpu")[1],
            "loadavg_at_end": os.getloadavg(),
        },
        "train_seconds": train_s,
        "train_cpu_seconds": train_cpu,
        "embed_seconds": embed_s,
        "learning_curve": {
            "masked_mse_validation": val,
            "trivial_loss_validation": curve("trivial_loss_validation"),
            "trivial_ratio_validation": curve("trivial_ratio_validation"),
            "masked_mse_train": curve("masked_mse_train"),
        },
        "learning_signal": {
            "pretext_loss": val[-1],
            "trivial_loss": curve("trivial_loss_validation")[-1],
            "ratio": curve("trivial_ratio_validation")[-1],
        },
        "masked_recovery_held_out": {
            k: (float(v) if isinstance(v, int | float | np.number) else v) for k, v in overall.items()
        },
        "table": table[cols].to_dict(orient="index"),
        "annotation": annotation,
        "baselines_runtime_s": dict(adata.uns["cellformers_baselines"]["runtime_s"]),
        "total_seconds": time.perf_counter() - t_all,
    }


def merge(paths: list[str]) -> dict:
    """Mean and sd over seeds of every table row, the learning signal and the annotation scores."""
    runs = sorted((json.loads(Path(p).read_text()) for p in paths), key=lambda r: r["seed"])
    table, table_sd = seed_tables([r["table"] for r in runs])
    summary = {
        "ratio": mean_sd(r["learning_signal"]["ratio"] for r in runs),
        "masked_pearson": mean_sd(r["masked_recovery_held_out"].get("pearson", np.nan) for r in runs),
        "train_seconds": mean_sd(r["train_seconds"] for r in runs),
        "train_cpu_seconds": mean_sd(r["train_cpu_seconds"] for r in runs),
        "annotation_macro_f1_xtrimogene_frozen": mean_sd(
            r["annotation"]["xtrimogene_frozen"]["macro_f1"] for r in runs
        ),
        "annotation_macro_f1_logreg_pca": mean_sd(r["annotation"]["logreg_pca"]["macro_f1"] for r in runs),
    }
    return {
        "dataset": runs[0]["dataset"],
        "seeds": [r["seed"] for r in runs],
        "note": "table: mean over seeds (table_sd: sd); summary values are (mean, sd)",
        "table": table,
        "table_sd": table_sd,
        "summary": {k: {"mean": m, "sd": s} for k, (m, s) in summary.items()},
        "runs": runs,
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=None, help="default: TRAIN_RECIPE's")
    p.add_argument("--scvi", action="store_true", help="also scVI (and Harmony on batched data)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto", help="auto: bf16 only where the CPU has bf16 units")
    p.add_argument("--merge", nargs="+", default=None, help="per-seed JSON files to gather")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    quiet_libraries()
    if args.merge:
        result = merge(args.merge)
        out = Path(args.out or HERE / "results" / f"xtrimogene_recipe_{args.dataset}.json")
    else:
        result = run(args)
        out = Path(args.out or f"xtrimogene_recipe_{args.dataset}_seed{args.seed}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out}", flush=True)


if __name__ == "__main__":
    main()
