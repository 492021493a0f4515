"""scPaLM on pbmc3k (CPU): both training stages, codebook usage, embedding benchmark, imputation table.

    python benchmarks/scpalm_pbmc3k.py                       # small preset, writes benchmarks/results/scpalm_pbmc3k.json
    python benchmarks/scpalm_pbmc3k.py --epochs1 2 --epochs2 1 --skip-imputation   # smoke run

Steps:
1. ``ScPaLM(preset="small", n_pathway_tokens=...)`` trained on the raw counts of ``pbmc3k_processed.h5ad`` (all
   13,714 genes, vocabulary built from the data): stage 1 (pathway VQ autoencoder, lr 1e-3), then stage 2 (cell token,
   lr 5e-4), AdamW, batch 128, ``precision="auto"`` (bf16 only where the CPU has bf16 units).
2. Codebook usage of the pathway tokens over all cells (perplexity, codes used of K).
3. ``cellformers.tl.benchmark`` of h_C, of the mean pathway token (Table 6's "Mean") and of HVG-PCA
   (``cellformers.tl.baselines``), labels ``cell_type``; plus Leiden at resolution 1.0 (section 4.2) with ARI/NMI.
4. ``cellformers.tl.evaluate_imputation`` (appendix B.4: 10% of genes per cell masked with probability
   proportional to exp(-expression)); a fresh ScPaLM (stage 1, ``decoder="pathway"``) is trained on the masked data
   beside kNN smoothing (MAGIC-style), scVI and the per-gene mean. Once with the paper's masking over all genes and
   once over detected genes only.
5. Top genes of the most frequent pathway tokens (appendix A.4).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"


def _data_path() -> Path:
    shared = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
    return shared / "data" / "pbmc3k_processed.h5ad"


def _leiden_res1(adata, key: str, labels: np.ndarray, seed: int = 0) -> dict:
    """Leiden at resolution 1.0 on a 15-NN graph of ``adata.obsm[key]`` (section 4.2), ARI/NMI vs labels."""
    import scanpy as sc
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    tmp = sc.AnnData(np.zeros((adata.n_obs, 1), dtype=np.float32), obs=adata.obs[[]].copy())
    tmp.obsm["rep"] = np.asarray(adata.obsm[key], dtype=np.float32)
    sc.pp.neighbors(tmp, use_rep="rep", n_neighbors=15, random_state=seed)
    sc.tl.leiden(tmp, resolution=1.0, flavor="igraph", n_iterations=2, directed=False, random_state=seed)
    clusters = tmp.obs["leiden"].to_numpy()
    return {
        "ARI": float(adjusted_rand_score(labels, clusters)),
        "NMI": float(normalized_mutual_info_score(labels, clusters)),
        "n_clusters": int(len(np.unique(clusters))),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small", choices=["small", "paper"])
    parser.add_argument("--n-tokens", type=int, default=32, help="N, pathway tokens")
    parser.add_argument("--n-codes", type=int, default=128, help="K, codebook size")
    parser.add_argument("--epochs1", type=int, default=6, help="stage-1 epochs")
    parser.add_argument("--epochs2", type=int, default=3, help="stage-2 epochs")
    parser.add_argument("--impute-epochs", type=int, default=4, help="stage-1 epochs of the imputation model")
    parser.add_argument("--impute-modes", default="all,nonzero", help="masking candidates to evaluate")
    parser.add_argument("--scvi-epochs", type=int, default=30)
    parser.add_argument(
        "--batch-size", type=int, default=32, help="minibatch (paper: 128; smaller = more steps on CPU)"
    )
    parser.add_argument("--precision", default="auto", help="auto: bf16 only where the CPU has bf16 units")
    parser.add_argument("--accelerator", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-imputation", action="store_true")
    parser.add_argument("--out", type=Path, default=RESULTS / "scpalm_pbmc3k.json")
    args = parser.parse_args()

    import scanpy as sc
    import scvi
    import torch

    import cellformers as cf
    from cellformers.model import ScPaLM

    scvi.settings.seed = args.seed
    torch.manual_seed(args.seed)
    load_before = os.getloadavg()
    adata = sc.read_h5ad(_data_path())
    labels = adata.obs["cell_type"].astype(str).to_numpy()
    model_kwargs = {"preset": args.preset, "n_pathway_tokens": args.n_tokens, "n_codes": args.n_codes}
    train_kwargs = {
        "accelerator": args.accelerator,
        "precision": args.precision,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "train_size": 1.0,
        "batch_size": args.batch_size,
    }
    result: dict = {
        "dataset": "pbmc3k_processed",
        "shape": list(adata.shape),
        "model_kwargs": model_kwargs,
        "epochs": {"stage1": args.epochs1, "stage2": args.epochs2},
        "train_kwargs": {k: v for k, v in train_kwargs.items() if k != "enable_progress_bar"},
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": cf.train.bf16_hardware("cpu")[1],
            "loadavg_start": load_before,
        },
    }

    # ---- 1. training
    ScPaLM.setup_anndata(adata, labels_key="cell_type")
    # the paper's stage 2 (contrastive loss on), which this benchmark documents; scpalm_codebook.py has the default
    model = ScPaLM(adata, stage2="paper", **model_kwargs)
    n_params = sum(p.numel() for p in model.module.parameters())
    t0 = time.perf_counter()
    model.train(max_epochs=args.epochs1, stage=1, **train_kwargs)
    t1 = time.perf_counter()
    model.train(max_epochs=args.epochs2, stage=2, **train_kwargs)
    t2 = time.perf_counter()
    hist = model.history_
    result["training"] = {
        "n_parameters": int(n_params),
        "stage1_seconds": t1 - t0,
        "stage2_seconds": t2 - t1,
        "stage1_mse_last_epoch": float(hist["mse_train"].to_numpy().ravel()[-1]),
        "stage1_mse_first_epoch": float(hist["mse_train"].to_numpy().ravel()[0]),
        "stage2_masked_mse_last_epoch": float(hist["masked_mse_train"].to_numpy().ravel()[-1]),
        "stage2_contrastive_last_epoch": float(hist["contrastive_loss_train"].to_numpy().ravel()[-1]),
        "dead_codes_replaced": int(model.module.quantizer.n_replaced),
        "kmeans_refits": int(model.module.contrastive_loss.n_fits),
    }
    print(json.dumps(result["training"], indent=1), flush=True)

    # ---- 2. codebook usage
    t = time.perf_counter()
    result["codebook"] = model.get_codebook_usage(batch_size=256)
    result["codebook"]["seconds"] = time.perf_counter() - t
    print("codebook", result["codebook"], flush=True)

    # ---- 3. embeddings and benchmark
    t = time.perf_counter()
    adata.obsm["X_scpalm"] = model.get_latent_representation(batch_size=256)
    result["embedding_seconds"] = time.perf_counter() - t
    adata.obsm["X_scpalm_mean"] = model.get_latent_representation(representation="mean", batch_size=256)
    t = time.perf_counter()
    cf.tl.baselines(adata, methods=("pca",), random_state=args.seed)
    result["hvg_pca_seconds"] = time.perf_counter() - t
    keys = ["X_scpalm", "X_scpalm_mean", "X_pca_hvg"]
    table = cf.tl.benchmark(adata, embeddings=keys, label_key="cell_type", random_state=args.seed)
    result["benchmark"] = json.loads(table.reset_index().to_json(orient="records"))
    print(table.to_string(), flush=True)
    result["leiden_resolution_1"] = {k: _leiden_res1(adata, k, labels, args.seed) for k in keys}
    print(json.dumps(result["leiden_resolution_1"], indent=1), flush=True)

    # ---- 5. pathway genes
    genes = model.get_pathway_genes(n_genes=10, min_cells=10)
    top = genes.sort_values("frequency", ascending=False).head(8)
    result["pathway_genes_top_codes"] = {
        str(code): {"frequency": float(row["frequency"]), "genes": [row[f"gene_{i}"] for i in range(1, 11)]}
        for code, row in top.iterrows()
    }

    # ---- 4. imputation
    if not args.skip_imputation:
        impute_train = dict(train_kwargs, max_epochs=args.impute_epochs or args.epochs1, stage=1)
        result["imputation"] = {}
        for candidates in args.impute_modes.split(","):
            fit = cf.tl.train_and_impute(
                ScPaLM,
                model_kwargs=model_kwargs,
                train_kwargs=impute_train,
                impute_kwargs={"decoder": "pathway", "batch_size": 256},
            )
            methods = {
                "scPaLM (pathway decoder)": fit,
                "kNN smoothing (MAGIC-style)": "knn_smoothing",
                "scVI": "scvi",
                "gene mean": "gene_mean",
                "no imputation (zeros)": "no_imputation",
            }
            df = cf.tl.evaluate_imputation(
                adata,
                methods,
                candidates=candidates,
                random_state=args.seed,
                method_kwargs={"scVI": {"max_epochs": args.scvi_epochs, "accelerator": args.accelerator}},
            )
            print(f"imputation, candidates={candidates!r}\n{df.to_string()}", flush=True)
            result["imputation"][candidates] = {
                "params": df.attrs["params"],
                "table": json.loads(df.reset_index().to_json(orient="records")),
            }
            if candidates == "all":
                result["imputation_model_codebook"] = fit.model.get_codebook_usage(batch_size=256)

    result["machine"]["loadavg_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
