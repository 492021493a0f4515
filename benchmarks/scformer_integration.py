"""scFormer integration benchmark (paper section 4.2, Table 2/3) on the shared multi-batch datasets, on CPU.

For each dataset: batch-aware HVGs (the same genes for every method), HVG-PCA / scVI / Harmony through
``cellformers.tl.baselines``, scFormer trained with ``batch_key`` (plus optional ablation rows), all scored by
``cellformers.tl.benchmark`` (AvgBIO, AvgBATCH, Overall as defined in scFormer appendix A.1). Writes
``benchmarks/results/scformer_integration_<dataset>.json``.

    python benchmarks/scformer_integration.py --dataset pancreas --epochs 10
    python benchmarks/scformer_integration.py --dataset cellbench --ablations no_dar_dsbn mgm_only

Data: ``../shared/data`` (set ``CELLFORMERS_SHARED`` to the shared folder otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scanpy as sc
import torch

import cellformers as cf
import cellformers.model

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import seed_tables

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
DATASETS = {
    "pancreas": ("pancreas_baron_human.h5ad", "batch", "cell_type"),
    "cellbench": ("cellbench_celllines_multiprotocol.h5ad", "batch", "cell_type"),
}

# The CPU configuration of the reported numbers: the paper's architecture (4 blocks x 128, 4 heads, FFN 128, 51 bins,
# CE losses, mask ratio 0.4, <cls> embedding), expressed genes only (scGPT's pre-training input) capped at 128
# tokens per cell, and pre-norm blocks. With all 1,200 HVGs as tokens (the paper's input) one epoch takes ~15 min on
# this machine instead of ~40 s; include_zero_genes="fill" and post-norm blocks did worse in 3-epoch trials.
CPU_CONFIG = {"include_zero_genes": False, "max_length": 128, "norm_first": True}
# MVC as the only task head (no MGM, ECS, DAR or DSBN)
_MVC_ONLY = {"use_mgm": False, "use_ecs": False, "use_dar": False, "use_dsbn": False}
# name -> (model options, train options). "full" = every task head of the paper with its weights.
ABLATIONS = {
    "full": ({}, {}),
    "ecs_warmup": ({}, {"ecs_warmup_epochs": 5}),
    "no_ecs": ({"use_ecs": False}, {}),
    "no_dar": ({"use_dar": False}, {}),
    "no_dsbn": ({"use_dsbn": False}, {}),
    "mgm_mvc": ({"use_ecs": False, "use_dar": False, "use_dsbn": False}, {}),
    "mgm_only": ({"use_mvc": False, "use_ecs": False, "use_dar": False, "use_dsbn": False}, {}),
    "no_mgm": ({"use_mgm": False}, {}),
    "batch_decoders": ({"use_ecs": False, "batch_conditional_decoders": True}, {}),
    "paper_all_hvgs": ({"include_zero_genes": True, "max_length": None}, {}),
    # the cell token as the only route to the masked values (what made scPaLM's h_C learn): MVC alone, zeros scored
    "mvc_bottleneck": ({**_MVC_ONLY, "include_zero_genes": "fill", "max_length": 256}, {}),
    "mvc_bottleneck_all": ({**_MVC_ONLY, "include_zero_genes": True, "max_length": None}, {}),
    "mvc_bottleneck_log1p": (
        {**_MVC_ONLY, "include_zero_genes": "fill", "max_length": 256, "value_mode": "log1p", "mgm_loss": "mse"},
        {},
    ),
    "scgpt_like": ({"mgm_loss": "mse", "ecs_style": "scgpt", "ecs_beta": 0.8, "batch_conditional_decoders": True}, {}),
    # learnable targets: equal counts of a cell share a bin (mid-rank), optionally fewer bins
    "mvc_bottleneck_avg": (
        {**_MVC_ONLY, "include_zero_genes": "fill", "max_length": 256, "tie_breaking": "average"},
        {},
    ),
    "mvc_bottleneck_avg_bins11": (
        {**_MVC_ONLY, "include_zero_genes": "fill", "max_length": 256, "tie_breaking": "average", "n_bins": 11},
        {},
    ),
    "mgm_mvc_fill_avg": (
        {
            "use_ecs": False,
            "use_dar": False,
            "use_dsbn": False,
            "include_zero_genes": "fill",
            "max_length": 256,
            "tie_breaking": "average",
        },
        {},
    ),
}
#: The cell-embedding readouts scored for every trained model and its untrained copy.
READOUTS = ("cls", "mean", "weighted")


def load(name: str, n_top_genes: int):
    fname, batch_key, label_key = DATASETS[name]
    adata = sc.read_h5ad(SHARED / "data" / fname)
    adata.obs[batch_key] = adata.obs[batch_key].astype(str).astype("category")
    adata.obs[label_key] = adata.obs[label_key].astype(str).astype("category")
    sc.pp.filter_genes(adata, min_cells=3)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=n_top_genes, batch_key=batch_key)
    adata = adata[:, norm.var["highly_variable"].to_numpy()].copy()  # raw counts of the HVGs
    return adata, batch_key, label_key


def train_scformer(
    adata,
    batch_key,
    *,
    config: dict,
    train_opts: dict,
    epochs: int,
    batch_size: int,
    seed: int,
    precision: str,
    check_imputation: bool = False,
    readouts: tuple[str, ...] = READOUTS,
):
    """Train one configuration; the cell embeddings of each readout, trained and untrained, and the run's record."""
    import scvi

    scvi.settings.seed = seed
    ad = adata.copy()
    cf.model.ScFormer.setup_anndata(ad, batch_key=batch_key)
    model = cf.model.ScFormer(ad, **config)
    prec = cf.train.resolve_precision(precision, "cpu", training=False)
    readouts = tuple(dict.fromkeys((model.module.pooling, *readouts)))  # the model's own readout first
    reference = model.untrained_copy(seed=seed)  # one untrained copy, read out every way
    untrained = {p: reference.get_latent_representation(precision=prec, batch_size=64, pooling=p) for p in readouts}
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(
        max_epochs=epochs,
        batch_size=batch_size,
        precision=precision,
        accelerator="cpu",
        enable_progress_bar=False,
        **train_opts,
    )
    train_s, train_cpu = time.perf_counter() - t0, time.process_time() - c0
    t0 = time.perf_counter()
    trained = {p: model.get_latent_representation(precision=prec, batch_size=64, pooling=p) for p in readouts}
    embed_s = time.perf_counter() - t0
    hist = {k: [float(v) for v in model.history_[k].to_numpy().ravel()] for k in model.history_}
    info = {
        "train_s": train_s,
        "train_cpu_s": train_cpu,
        "embed_s": embed_s,
        "epochs": epochs,
        "best_epoch": getattr(model, "best_epoch_", None),
        "pooling": model.module.pooling,
        "history": hist,
        "summary": model._model_summary_string,
    }
    if check_imputation and model.module.use_mgm:
        info["imputation"] = imputation_check(model, ad)
    return trained, untrained, info, model


def imputation_check(model, adata, n_cells: int = 200) -> dict:
    """Imputed vs observed log1p values on the first ``n_cells`` cells, and the gene embeddings' shape."""
    idx = np.arange(min(n_cells, adata.n_obs))
    t0 = time.perf_counter()
    imp = model.get_imputed_expression(indices=idx, batch_size=16)
    seconds = time.perf_counter() - t0
    X = adata.X[idx]
    X = X.toarray() if hasattr(X, "toarray") else np.asarray(X)
    obs = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    nz = obs > 0
    genes = model.get_gene_embeddings()
    return {
        "seconds": seconds,
        "pearson_all": float(np.corrcoef(imp.ravel(), obs.ravel())[0, 1]),
        "pearson_expressed": float(np.corrcoef(imp[nz], obs[nz])[0, 1]),
        "mean_imputed_at_zeros": float(imp[~nz].mean()),
        "mean_imputed_at_expressed": float(imp[nz].mean()),
        "gene_embeddings_shape": list(genes.shape),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--n-top-genes", type=int, default=1200)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablations", nargs="*", default=["full"], choices=sorted(ABLATIONS))
    p.add_argument("--skip-baselines", action="store_true")
    p.add_argument("--scvi-epochs", type=int, default=None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument(
        "--precision", default="auto", help="Lightning precision: auto (bf16 only with bf16 units), 32 or bf16-mixed"
    )
    p.add_argument("--readouts", nargs="+", default=list(READOUTS), choices=READOUTS, help="embeddings scored")
    p.add_argument("--merge", nargs="+", default=None, help="per-seed result files to gather (mean and sd)")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    default_out = REPO / "benchmarks" / "results" / f"scformer_integration_{args.dataset}.json"
    if args.merge:
        runs = sorted((json.loads(Path(f).read_text()) for f in args.merge), key=lambda r: r["args"]["seed"])
        table, table_sd = seed_tables([r["table"] for r in runs])
        out = Path(args.out) if args.out else default_out
        merged = {
            "dataset": runs[0]["dataset"],
            "seeds": [r["args"]["seed"] for r in runs],
            "note": "table: mean over seeds (table_sd: sd)",
            "table": table,
            "table_sd": table_sd,
            "runs": runs,
        }
        out.write_text(json.dumps(merged, indent=2, default=float))
        print(f"wrote {out}")
        return

    torch.set_num_threads(args.threads)
    t_all = time.perf_counter()
    adata, batch_key, label_key = load(args.dataset, args.n_top_genes)
    keys = []
    runs = {}
    if not args.skip_baselines:
        cf.tl.baselines(
            adata,
            batch_key=batch_key,
            n_top_genes=adata.n_vars,
            max_epochs=args.scvi_epochs,
            accelerator="cpu",
            random_state=args.seed,
        )
        keys += [k for k in ("X_pca_hvg", "X_scvi", "X_harmony") if k in adata.obsm]
        runs["baselines_runtime_s"] = dict(adata.uns["cellformers_baselines"]["runtime_s"])
    for i, name in enumerate(args.ablations):
        opts, train_opts = ABLATIONS[name]
        config = {**CPU_CONFIG, **opts}
        trained, untrained, info, _ = train_scformer(
            adata,
            batch_key,
            config=config,
            train_opts=train_opts,
            epochs=args.epochs,
            batch_size=args.batch_size,
            seed=args.seed,
            precision=args.precision,
            check_imputation=i == 0,
            readouts=tuple(args.readouts),
        )
        key = "X_scformer" if name == "full" else f"X_scformer_{name}"
        # the model's own readout under the plain key, every readout under key_<readout>; the same for untrained
        for prefix, embs in ((key, trained), (f"{key}_untrained", untrained)):
            adata.obsm[prefix] = embs[info["pooling"]]
            keys.append(prefix)
            for pooling in embs:
                if pooling != info["pooling"]:
                    adata.obsm[f"{prefix}_{pooling}"] = embs[pooling]
                    keys.append(f"{prefix}_{pooling}")
        runs[key] = {"config": config, "train_options": train_opts, **info}
        print(f"{key}: trained in {info['train_s']:.0f} s ({args.epochs} epochs)", flush=True)
    table = cf.tl.benchmark(adata, embeddings=keys, label_key=label_key, batch_key=batch_key, random_state=args.seed)
    cols = ["AvgBIO", "AvgBATCH", "Overall", "ARI_cell", "NMI_cell", "ASW_cell", "ASW_batch", "GraphConn"]
    print(table[cols].round(3).to_string())
    out = Path(args.out) if args.out else default_out
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": DATASETS[args.dataset][0],
        "n_cells": int(adata.n_obs),
        "n_hvgs": int(adata.n_vars),
        "batch_key": batch_key,
        "label_key": label_key,
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": cf.train.bf16_hardware("cpu")[1],
            "load_avg_at_end": os.getloadavg(),
        },
        "table": table[cols].to_dict(orient="index"),
        "runs": runs,
        "total_s": time.perf_counter() - t_all,
    }
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
