"""How low can xTrimoGene's masked MSE go? Reference predictors of the same masked targets (issue 23).

xTrimoGene's pretext (App. 6, ``mask_strategy="balanced"``): per cell, 30% of the non-zero genes and 0.9 times as
many zero genes are hidden and predicted, scored by the MSE on ``log1p(x / Σx · 1e4)``. The model's history reads
that loss against the *trivial* predictor, each gene's mean over the masked training positions. This script scores,
on the same kind of masks of held-out cells, predictors that use more than the gene:

* ``gene_mean`` (the trivial baseline of the model's history);
* ``gene_bayes``: the gene's non-zero rate and mean non-zero value, combined with the cell's own masking rates
  (a masked position of a cell with few detected genes is more likely a masked zero): what a model that knows
  gene identity and cell sparsity, but nothing about the cell type, can reach;
* ``knn_bayes``: the same with the rates and means of the ``k`` nearest training cells (PCA of the visible values),
  a non-parametric predictor that uses the visible part of the cell as xTrimoGene's encoder does.

The ratio ``knn_bayes / gene_mean`` shows how far below the trivial baseline a model that reads the cell can go
on these data (it is not a bound: a better predictor may go lower). Written to
``benchmarks/results/xtrimogene_masked_reference_<dataset>.json``.

Usage: ``python benchmarks/xtrimogene_masked_reference.py --dataset pbmc3k`` (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", HERE.parent.parent / "shared"))
# as in the xTrimoGene benchmarks: pbmc3k's own HVG column (the model's 1,838 genes), pancreas' top 2,000 HVGs
DATASETS = {"pbmc3k": "pbmc3k_processed.h5ad", "pancreas": "pancreas_baron_human.h5ad"}


def hvg_values(name: str) -> np.ndarray:
    """``log1p(x / Σx · 1e4)`` (Σ over all genes) of the highly variable genes, cells x genes."""
    import scanpy as sc
    from scipy import sparse

    adata = sc.read_h5ad(SHARED / "data" / DATASETS[name])
    X = adata.X.toarray() if sparse.issparse(adata.X) else np.asarray(adata.X, dtype=np.float64)
    values = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    if "highly_variable" in adata.var:
        keep = adata.var["highly_variable"].to_numpy(bool)
    else:
        lognorm = sc.AnnData(values.astype(np.float32))
        sc.pp.highly_variable_genes(lognorm, n_top_genes=2000)
        keep = lognorm.var["highly_variable"].to_numpy(bool)
    return values[:, keep].astype(np.float32)


def balanced_mask(values: np.ndarray, rng, ratio: float = 0.3, zero_ratio: float = 0.9):
    """xTrimoGene's balanced masking; also each cell's probability of masking a zero (for the Bayes predictors)."""
    nonzero = values > 0
    mask = np.zeros_like(nonzero)
    zero_rate = np.zeros(len(values))
    for i, row in enumerate(nonzero):
        nz, z = np.flatnonzero(row), np.flatnonzero(~row)
        k = round(ratio * nz.size)
        kz = min(round(zero_ratio * k), z.size)
        mask[i, rng.choice(nz, k, replace=False)] = True
        mask[i, rng.choice(z, kz, replace=False)] = True
        zero_rate[i] = kz / max(z.size, 1)
    return mask, zero_rate


def bayes(p_nonzero: np.ndarray, mean_nonzero: np.ndarray, zero_rate: np.ndarray, ratio: float = 0.3) -> np.ndarray:
    """E[value | masked] from the prior non-zero probability and the two masking rates."""
    odds = p_nonzero * ratio / np.maximum((1 - p_nonzero) * zero_rate[:, None], 1e-9)
    return odds / (1 + odds) * mean_nonzero


def main() -> dict:
    from sklearn.decomposition import PCA
    from sklearn.neighbors import NearestNeighbors

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", choices=sorted(DATASETS), default="pbmc3k")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--neighbors", type=int, nargs="+", default=[30, 100, 200])
    p.add_argument("--out", default=None)
    args = p.parse_args()

    values = hvg_values(args.dataset)
    rng = np.random.default_rng(args.seed)
    order = rng.permutation(len(values))
    n_val = len(values) // 10
    val, train = values[order[:n_val]], values[order[n_val:]]
    mask_tr, _ = balanced_mask(train, rng)
    mask_va, zero_rate = balanced_mask(val, rng)
    target = val[mask_va]

    def mse(pred: np.ndarray) -> float:
        return float(((np.broadcast_to(pred, val.shape)[mask_va] - target) ** 2).mean())

    gene_mean = (train * mask_tr).sum(0) / np.maximum(mask_tr.sum(0), 1)
    trivial = mse(gene_mean)
    nonzero = train > 0
    p_gene = nonzero.mean(0)
    mu_gene = train.sum(0) / np.maximum(nonzero.sum(0), 1)
    rows = {
        "gene_mean": trivial,
        "gene_bayes": mse(bayes(np.broadcast_to(p_gene, val.shape), np.broadcast_to(mu_gene, val.shape), zero_rate)),
    }
    pca = PCA(50, random_state=args.seed).fit(train)
    visible = np.where(mask_va, 0.0, val)  # what the encoder sees: masked values hidden
    neighbours = NearestNeighbors().fit(pca.transform(train))
    for k in args.neighbors:
        _, idx = neighbours.kneighbors(pca.transform(visible), n_neighbors=k)
        near = train[idx]  # (cells, k, genes)
        n_nz = (near > 0).sum(1)
        p_near = (n_nz + 2 * p_gene) / (k + 2)  # shrunk towards the gene's rate
        mu_near = (near.sum(1) + 2 * mu_gene) / (n_nz + 2)
        rows[f"knn_bayes_k{k}"] = mse(bayes(p_near, mu_near, zero_rate))
    table = {name: {"masked_mse": v, "ratio_to_gene_mean": v / trivial} for name, v in rows.items()}
    result = {
        "dataset": DATASETS[args.dataset],
        "n_cells": int(len(values)),
        "n_genes": int(values.shape[1]),
        "masking": "balanced: 30% of non-zeros + 0.9x as many zeros per cell (App. 6)",
        "nonzero_fraction_of_targets": float((target > 0).mean()),
        "predictors": table,
        "args": vars(args),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count()},
    }
    for name, row in table.items():
        print(f"{name:>16}: masked MSE {row['masked_mse']:.4f}  ratio {row['ratio_to_gene_mean']:.3f}")
    out = Path(args.out or HERE / "results" / f"xtrimogene_masked_reference_{args.dataset}.json")
    out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
