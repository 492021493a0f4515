"""scPaLM codebook: does the cell token carry the cell? Paper quantizer against the per-position default (issue 16).

    python benchmarks/scpalm_codebook.py --dataset pbmc3k                      # 3 seeds + paper row + imputation
    python benchmarks/scpalm_codebook.py --dataset pancreas --seeds 0 --annotation --no-imputation

For each seed the default scPaLM (``quantizer="per_position"``: a codebook per position, 30% of stage 1 without
quantization then k-means codebooks, no pre-VQ position embedding; ``stage2="bottleneck"``: the stage-2 decoder
reads ``h_C`` alone, no contrastive loss) is trained on the highly variable genes
(``genes="hvg"``; pbmc3k's own 1,838 tutorial HVGs, scanpy's 2,000 elsewhere), small preset, N = 32 tokens,
K = 128 codes, 20 + 30 epochs, batch 32, lr 2e-3, ``precision="32"``, one torch thread, 10% validation cells (for
the trivial baselines). The paper's model (``quantizer="paper"``: shared codebook, random codes, pre-VQ position
embedding; ``stage2="paper"``: the decoder reads the kept tokens, contrastive loss on) is trained with the same recipe
for seed 0 (the "before" row), and so is the default quantizer with the paper's stage 2 (``X_scpalm_paper_stage2``).

Written to ``benchmarks/results/scpalm_codebook_<dataset>.json``: ``dataset``, ``table`` keyed by embedding
(``X_pca_hvg``, ``X_scpalm`` = h_C over all tokens, ``X_scpalm_subsets4`` = h_C averaged over 4 subsets of the
training keep ratio, ``X_scpalm_mean`` = mean pathway token, ``X_scpalm_untrained``, ``X_scpalm_paper``,
``X_scpalm_paper_stage2``;
AvgBIO/AvgBATCH/Overall, mean and sd over the seeds), ``runs`` (per variant and seed: times, stage-1 MSE vs the
per-gene-mean baseline, codebook statistics) and ``before_after`` (paper vs default, seed 0 and the seed mean), plus
``imputation`` (appendix B.4 masking on the HVG data: scPaLM's pathway and cell decoders vs kNN smoothing and the gene
mean) and
``annotation`` (frozen-encoder head on h_C beside logistic regression on HVG-PCA, same split).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", HERE.parent.parent / "shared"))
DATASETS = {
    "pbmc3k": ("pbmc3k_processed.h5ad", None, "cell_type"),
    "pancreas": ("pancreas_baron_human.h5ad", "batch", "cell_type"),
}
MODEL = {"preset": "small", "n_pathway_tokens": 32, "n_codes": 128}


def load(name: str):
    import scanpy as sc

    fname, batch_key, label_key = DATASETS[name]
    adata = sc.read_h5ad(SHARED / "data" / fname)
    adata.obs[label_key] = adata.obs[label_key].astype(str).astype("category")
    if batch_key:
        adata.obs[batch_key] = adata.obs[batch_key].astype(str).astype("category")
    sc.pp.filter_genes(adata, min_cells=3)
    return adata, batch_key, label_key


def train(adata, quantizer: str, seed: int, args, batch_key, stage2: str = "bottleneck"):
    import scvi
    import torch

    import cellformers as cf
    from cellformers.model import ScPaLM

    scvi.settings.seed = seed
    torch.manual_seed(seed)
    ScPaLM.setup_anndata(adata, batch_key=batch_key)
    model = ScPaLM(adata, quantizer=quantizer, stage2=stage2, genes="hvg", **MODEL)
    tk = {
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "batch_size": args.batch_size,
        "train_size": 0.9,
        "precision": args.precision,
        "lr": args.lr,
        "accelerator": "cpu",
    }
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs1, stage=1, **tk)
    t1 = time.perf_counter()
    signal = cf.train.learning_signal(model.history_)
    hist1 = {
        k: float(model.history_[k].iloc[-1, 0])
        for k in ("codes_per_position_validation", "code_entropy_validation")
        if k in model.history_
    }
    model.train(max_epochs=args.epochs2, stage=2, **tk)
    t2 = time.perf_counter()
    signal2 = cf.train.learning_signal(model.history_)
    run = {
        "quantizer": quantizer,
        "stage2": stage2,
        "seed": seed,
        "n_genes": int(model.module.n_genes),
        "stage1_seconds": t1 - t0,
        "stage2_seconds": t2 - t1,
        "stage1_mse_validation": signal["pretext_loss"] if signal else None,
        "stage1_trivial_validation": signal["trivial_loss"] if signal else None,
        "stage1_ratio_validation": signal["ratio"] if signal else None,
        "stage2_mse_validation": signal2["pretext_loss"] if signal2 else None,
        "stage2_trivial_validation": signal2["trivial_loss"] if signal2 else None,
        "stage2_ratio_validation": signal2["ratio"] if signal2 else None,
        "history_last_stage1": hist1,
        "codebook": model.get_codebook_statistics(batch_size=256),
        "usage": model.get_codebook_usage(batch_size=256),
    }
    print(json.dumps(run), flush=True)
    return model, run


def imputation(adata, args) -> dict:
    """Appendix B.4 masking on the HVGs, both ways: every entry a candidate (the paper) and expressed entries only.

    With ``candidates="all"`` the draw (probability proportional to ``exp(-expression)``) hides almost only zeros,
    so the "no imputation" row (the masked zeros themselves) is the reference that shows what the RMSE rewards.
    """
    import cellformers as cf
    from cellformers.model import ScPaLM

    hv = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    train_kwargs = {
        "max_epochs": args.epochs1,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "precision": args.precision,
        "accelerator": "cpu",
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "train_size": 1.0,
    }
    # the pathway decoder needs stage 1 only; the cell decoder both stages
    fit = cf.tl.train_and_impute(
        ScPaLM,
        model_kwargs=dict(MODEL, genes="all"),
        train_kwargs={**train_kwargs, "stage": 1},
        impute_kwargs={"decoder": "pathway", "batch_size": 256},
    )
    fit_cell = cf.tl.train_and_impute(
        ScPaLM,
        model_kwargs=dict(MODEL, genes="all"),
        train_kwargs={**train_kwargs, "max_epochs_stage2": args.epochs2},
        impute_kwargs={"decoder": "cell", "batch_size": 256},
    )
    methods = {
        "scPaLM (pathway decoder)": fit,
        "scPaLM (cell decoder)": fit_cell,
        "kNN smoothing (MAGIC-style)": "knn_smoothing",
        "gene mean": "gene_mean",
        "no imputation": "no_imputation",
    }
    out = {}
    for key, candidates in (("imputation", "all"), ("imputation_nonzero", "nonzero")):
        df = cf.tl.evaluate_imputation(hv, methods, candidates=candidates, random_state=0)
        print(df.to_string(), flush=True)
        out[key] = {
            "data": f"{hv.n_vars} HVGs",
            "params": df.attrs.get("params"),
            "table": json.loads(df.reset_index().to_json(orient="records")),
        }
    return out


def hvg_mask(adata, n_top: int = 2000) -> np.ndarray:
    import scanpy as sc

    if "highly_variable" in adata.var:
        return adata.var["highly_variable"].to_numpy(dtype=bool)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=n_top, flavor="seurat")
    return norm.var["highly_variable"].to_numpy(dtype=bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="pbmc3k", choices=sorted(DATASETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--epochs1", type=int, default=20)
    parser.add_argument("--epochs2", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--precision", default="32")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-paper", action="store_true", help="skip the paper-quantizer and paper-stage-2 rows")
    parser.add_argument("--no-imputation", action="store_true")
    parser.add_argument("--annotation", action="store_true", help="frozen-head macro-F1 beside LR on HVG-PCA")
    parser.add_argument(
        "--only-imputation", action="store_true", help="re-run the imputation tables into the existing results JSON"
    )
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    import cellformers as cf

    adata, batch_key, label_key = load(args.dataset)
    adata.var["highly_variable"] = hvg_mask(adata)
    if args.only_imputation:
        out = args.out or HERE / "results" / f"scpalm_codebook_{args.dataset}.json"
        stored = json.loads(out.read_text())
        stored.update(imputation(adata, args))
        out.write_text(json.dumps(stored, indent=1, default=float) + "\n")
        print(f"wrote {out}")
        return
    cf.tl.baselines(adata, methods=("pca",), random_state=0)
    result: dict = {
        "dataset": args.dataset,
        "shape": list(adata.shape),
        "n_hvg": int(adata.var["highly_variable"].sum()),
        "model_kwargs": MODEL,
        "recipe": {k: v for k, v in vars(args).items() if k not in ("out", "dataset")},
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "loadavg_start": os.getloadavg(),
        },
        "runs": [],
    }
    scores: dict[str, list[dict]] = {}

    def bench(keys):
        tab = cf.tl.benchmark(adata, embeddings=keys, label_key=label_key, batch_key=batch_key, random_state=0)
        for key, row in tab.iterrows():
            scores.setdefault(key, []).append(
                {c: (None if row[c] is None or row[c] != row[c] else float(row[c])) for c in tab.columns}
            )
        print(tab[["AvgBIO", "AvgBATCH", "Overall"]].to_string(), flush=True)

    bench(["X_pca_hvg"])
    model = None
    for i, seed in enumerate(args.seeds):
        model, run = train(adata, "per_position", seed, args, batch_key)
        adata.obsm["X_scpalm"] = model.get_latent_representation(batch_size=256)
        adata.obsm["X_scpalm_subsets4"] = model.get_latent_representation(n_subsets=4, batch_size=256)
        adata.obsm["X_scpalm_mean"] = model.get_latent_representation(representation="mean", batch_size=256)
        keys = ["X_scpalm", "X_scpalm_subsets4", "X_scpalm_mean"]
        if i == 0:
            cf.tl.embed_untrained(adata, model, key_added="X_scpalm_untrained", seed=seed)
            keys.append("X_scpalm_untrained")
        bench(keys)
        result["runs"].append(run)
        if i == 0 and args.annotation:
            ann = model.train_annotator(label_key, freeze="encoder", seed=0, precision=args.precision)
            base = cf.tl.annotation_baselines(adata, labels_key=label_key, split=ann, methods=("logreg_pca",), seed=0)
            result["annotation"] = {
                "scpalm_frozen_head": {k: float(v) for k, v in ann.metrics["test"].items() if np.isscalar(v)},
                "baselines": json.loads(base.reset_index().to_json(orient="records")),
            }
            print(json.dumps(result["annotation"]), flush=True)
    if not args.no_paper:
        paper, run = train(adata, "paper", args.seeds[0], args, batch_key, stage2="paper")
        adata.obsm["X_scpalm_paper"] = paper.get_latent_representation(batch_size=256)
        result["runs"].append(run)
        paper2, run = train(adata, "per_position", args.seeds[0], args, batch_key, stage2="paper")
        adata.obsm["X_scpalm_paper_stage2"] = paper2.get_latent_representation(batch_size=256)
        result["runs"].append(run)
        bench(["X_scpalm_paper", "X_scpalm_paper_stage2"])

    table = {}
    for key, rows in scores.items():
        entry = {"n_seeds": len(rows)}
        for col in ("AvgBIO", "AvgBATCH", "Overall"):
            vals = [r[col] for r in rows if r.get(col) is not None]
            entry[col] = float(np.mean(vals)) if vals else None
            entry[f"{col}_sd"] = float(np.std(vals, ddof=1)) if len(vals) > 1 else None
        entry["parts_seed0"] = rows[0]
        table[key] = entry
    result["table"] = table
    default_runs = [r for r in result["runs"] if r["quantizer"] == "per_position" and r["stage2"] == "bottleneck"]
    paper_runs = [r for r in result["runs"] if r["quantizer"] == "paper"]
    paper_stage2_runs = [r for r in result["runs"] if r["quantizer"] == "per_position" and r["stage2"] == "paper"]

    def summary(runs, key):
        return {
            "AvgBIO_h_C": table.get(key, {}).get("AvgBIO"),
            "AvgBIO_h_C_sd": table.get(key, {}).get("AvgBIO_sd"),
            "codes_per_position": float(np.mean([r["codebook"]["codes_per_position"] for r in runs])),
            "code_entropy_bits": float(np.mean([r["codebook"]["code_entropy"] for r in runs])),
            "distinct_cells": float(np.mean([r["codebook"]["distinct_cells"] for r in runs])),
            "stage1_ratio_validation": float(np.mean([r["stage1_ratio_validation"] for r in runs])),
            "stage2_ratio_validation": float(np.mean([r["stage2_ratio_validation"] for r in runs])),
            "seconds": float(np.mean([r["stage1_seconds"] + r["stage2_seconds"] for r in runs])),
            "seeds": [r["seed"] for r in runs],
        }

    result["before_after"] = {"paper": summary(paper_runs, "X_scpalm_paper") if paper_runs else None}
    if paper_stage2_runs:
        result["before_after"]["per_position_paper_stage2"] = summary(paper_stage2_runs, "X_scpalm_paper_stage2")
    result["before_after"]["per_position"] = summary(default_runs, "X_scpalm")

    if not args.no_imputation:
        result.update(imputation(adata, args))
    result["machine"]["loadavg_end"] = os.getloadavg()
    out = args.out or HERE / "results" / f"scpalm_codebook_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
