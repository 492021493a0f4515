"""Context embeddings on real data (issue 19): Kang 2018 PBMC ctrl/stim, the perturbation adapter's data flow.

GEARS with xTrimoGene (App. 8.2) feeds the context embedding of each *control* cell (the state before the
perturbation) into GEARS' co-expression branch. This script runs that data flow on the Kang ctrl/stim PBMCs:
a small xTrimoGene trained briefly on the cells, per-gene decoder outputs of the control cells streamed to a
``.npy`` file (``cf.tl.context_embedding``), the pooled form in ``obsm``; it reports the wall time, the bytes per
cell, and how well a logistic regression tells ctrl from stim from the pooled context embedding and from the
log-normalized expression of the same genes (5-fold CV). A CPU-sized sanity run, not the paper's experiment.

Usage: ``python benchmarks/context_embedding_kang.py [--n-cells 600] [--n-genes 1000] [--epochs 2] [--out DIR]``.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import scanpy as sc

import cellformers as cf

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "pbmc_kang2018_ctrl_stim_2000.h5ad"


def main() -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--n-cells", type=int, default=600)
    parser.add_argument("--n-genes", type=int, default=1000)
    parser.add_argument("--n-context-genes", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    cf.settings.progress_bar = False

    adata = sc.read_h5ad(args.data)
    rng = np.random.default_rng(0)
    adata = adata[np.sort(rng.choice(adata.n_obs, size=min(args.n_cells, adata.n_obs), replace=False))].copy()
    tmp = adata.copy()
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    sc.pp.highly_variable_genes(tmp, n_top_genes=args.n_genes)
    adata = adata[:, tmp.var["highly_variable"].to_numpy()].copy()
    tmp = tmp[:, adata.var_names].copy()

    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(
        adata, preset="3M", encoder_layers=2, encoder_dim=64, decoder_layers=1, decoder_dim=32, encoder_ff=128
    )
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs, batch_size=32, enable_progress_bar=False)
    train_s = time.perf_counter() - t0

    genes = list(adata.var_names[: args.n_context_genes])
    out_dir = args.out or Path(tempfile.mkdtemp())
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "kang_context.npy"
    t0 = time.perf_counter()
    cf.tl.context_embedding(adata, model, genes=genes, path=path, pooled="mean")
    ctx_s = time.perf_counter() - t0
    full = np.load(path, mmap_mode="r")
    bytes_per_cell = full.shape[1] * full.shape[2] * 4

    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score

    y = (adata.obs["stim"].astype(str) == "stim").to_numpy() if "stim" in adata.obs else adata.obs["batch"].cat.codes
    clf = LogisticRegression(max_iter=2000)
    acc_ctx = cross_val_score(clf, adata.obsm["X_xtrimogene_context"], y, cv=5).mean()
    expr = tmp[:, genes].X
    expr = expr.toarray() if hasattr(expr, "toarray") else np.asarray(expr)
    acc_expr = cross_val_score(clf, expr, y, cv=5).mean()
    ctrl = ~np.asarray(y, dtype=bool)
    result = {
        "n_cells": int(adata.n_obs),
        "n_genes_model": int(adata.n_vars),
        "n_context_genes": len(genes),
        "d": int(full.shape[2]),
        "train_s": round(train_s, 1),
        "context_s": round(ctx_s, 1),
        "bytes_per_cell": int(bytes_per_cell),
        "npy_mb": round(path.stat().st_size / 1e6, 2),
        "ctrl_cells_for_gears": int(ctrl.sum()),
        "ctrl_vs_stim_accuracy_pooled_context": round(float(acc_ctx), 3),
        "ctrl_vs_stim_accuracy_expression_same_genes": round(float(acc_expr), 3),
    }
    print(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
