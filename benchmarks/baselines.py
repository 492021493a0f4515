"""Baselines (HVG-PCA, scVI, Harmony) scored by ``cellformers.tl.benchmark`` on the shared datasets, on CPU.

For each dataset: ``cellformers.tl.baselines`` (defaults: 2,000 seurat_v3 HVGs, 50 PCs, scVI n_latent=30 for the capped
default of 200 epochs, Harmony when there is a batch), then ``cellformers.tl.benchmark`` with the dataset's labels and
batch. Prints the table as markdown and writes ``benchmarks/results/baselines_<dataset>.json``.

    python benchmarks/baselines.py --dataset pbmc3k
    python benchmarks/baselines.py --dataset pancreas --scvi-epochs 100 --threads 1

Data: ``../shared/data`` (set ``CELLFORMERS_SHARED`` to the shared folder otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import scanpy as sc
import torch

import cellformers as cf

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
DATASETS = {
    "pbmc3k": ("pbmc3k_processed.h5ad", None, "cell_type"),
    "pancreas": ("pancreas_baron_human.h5ad", "batch", "cell_type"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    parser.add_argument("--methods", nargs="+", default=["pca", "scvi", "harmony"])
    parser.add_argument("--scvi-epochs", type=int, default=None, help="default: capped scvi-tools heuristic")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scib-metrics", action="store_true")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    fname, batch_key, label_key = DATASETS[args.dataset]
    adata = sc.read_h5ad(SHARED / "data" / fname)
    t0 = time.perf_counter()
    cf.tl.baselines(
        adata,
        methods=args.methods,
        batch_key=batch_key,
        max_epochs=args.scvi_epochs,
        accelerator="cpu",
        random_state=args.seed,
    )
    t_baselines = time.perf_counter() - t0
    info = adata.uns["cellformers_baselines"]
    keys = list(info["obsm_keys"].values())
    t0 = time.perf_counter()
    table = cf.tl.benchmark(
        adata,
        embeddings=keys,
        label_key=label_key,
        batch_key=batch_key,
        random_state=args.seed,
        scib_metrics=args.scib_metrics,
    )
    t_benchmark = time.perf_counter() - t0
    print(table.round(3).to_markdown())
    runtime = {k: round(float(v), 1) for k, v in info["runtime_s"].items()}
    print(f"baselines {t_baselines:.1f} s {runtime}; benchmark {t_benchmark:.1f} s")

    result = {
        "dataset": fname,
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "label_key": label_key,
        "batch_key": batch_key,
        "scvi_max_epochs": int(info["params"].get("scvi_max_epochs", 0)),
        "hvg_flavor": str(info["params"]["hvg_flavor"]),
        "runtime_s": {"baselines_total": t_baselines, "benchmark": t_benchmark, **runtime},
        "benchmark_seconds_per_embedding": {
            k: v["seconds"] for k, v in adata.uns["cellformers_benchmark"]["clustering"].items()
        },
        "table": {k: {m: (None if v != v else float(v)) for m, v in row.items()} for k, row in table.iterrows()},
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads()},
    }
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"baselines_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
