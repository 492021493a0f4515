"""xTrimoGene readouts and zero-group imputation, measured on one trained model (issue 23 items 2 and 4).

Trains the ``xtrimogene_pbmc3k.py`` recipe once on ``pbmc3k_processed.h5ad`` (HVG vocabulary, its
``TRAIN_RECIPE``, ``precision="auto"``), or loads a model that script saved (``--model-dir``), then scores every ``pooling`` of ``get_latent_representation`` with
:func:`cellformers.tl.benchmark` beside HVG-PCA and the same network untrained, and compares masked imputation with
all zero genes hidden at once (``zero_groups=None``) against training-sized groups (``zero_groups="training"``): the
Pearson correlation across cells between imputed and observed log-normalized expression of marker genes, and the
correlation of the imputed marker with its cell type.

Usage::

    python benchmarks/xtrimogene_readouts.py      # -> benchmarks/results/xtrimogene_readouts_pbmc3k.json
    python benchmarks/xtrimogene_pbmc3k.py --save-dir xtg && python benchmarks/xtrimogene_readouts.py --model-dir xtg
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from xtrimogene_pbmc3k import MODEL_KWARGS, TRAIN_RECIPE

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", HERE.parent.parent / "shared"))
POOLINGS = ("max", "mean", "weighted", "decoder", "all")
MARKERS = {"MS4A1": "B cells", "CD14": "CD14+ Monocytes", "NKG7": "NK cells", "PPBP": "Megakaryocytes"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--epochs", type=int, default=TRAIN_RECIPE["max_epochs"])
    p.add_argument(
        "--skip-zero-groups", action="store_true", help='impute with zero_groups=None only (not "training": 10x slower)'
    )
    p.add_argument("--model-dir", default=None, help="a model saved by xtrimogene_pbmc3k.py --save-dir (no training)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=str(HERE / "results" / "xtrimogene_readouts_pbmc3k.json"))
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    import anndata as ad
    import scanpy as sc

    import cellformers as cf

    cf.settings.seed = args.seed
    adata = ad.read_h5ad(SHARED / "data" / "pbmc3k_processed.h5ad")
    hvg = adata.var_names[adata.var["highly_variable"].to_numpy()]
    cf.model.XTrimoGene.setup_anndata(adata, labels_key="cell_type")
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    if args.model_dir:
        model = cf.model.XTrimoGene.load(args.model_dir, adata=adata)
    else:
        model = cf.model.XTrimoGene(adata, vocab=cf.data.GeneVocab(list(hvg), name="pbmc3k-hvg"), **MODEL_KWARGS)
        model.train(
            max_epochs=args.epochs,
            batch_size=TRAIN_RECIPE["batch_size"],
            accelerator="cpu",
            enable_progress_bar=False,
            plan_kwargs={"lr": TRAIN_RECIPE["lr"], "warmup_steps": TRAIN_RECIPE["warmup_steps"]},
        )
    train_s = time.perf_counter() - t0
    signal = cf.train.learning_signal(model.history_)
    cf.tl.baselines(adata, methods=("pca",), random_state=args.seed)
    reference = model.untrained_copy(seed=args.seed)
    keys = ["X_pca_hvg"]
    for pooling in POOLINGS:
        torch.set_num_threads(args.threads)
        adata.obsm[f"X_xtrimogene_{pooling}"] = model.get_latent_representation(pooling=pooling)
        adata.obsm[f"X_xtrimogene_untrained_{pooling}"] = reference.get_latent_representation(pooling=pooling)
        keys += [f"X_xtrimogene_{pooling}", f"X_xtrimogene_untrained_{pooling}"]
    table = cf.tl.benchmark(adata, embeddings=keys, label_key="cell_type", random_state=args.seed)
    print(table[["AvgBIO"]].round(3).to_string(), flush=True)

    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    imputation = {}
    for zero_groups in (None,) if args.skip_zero_groups else (None, "training"):
        torch.set_num_threads(args.threads)
        t1 = time.perf_counter()
        imputed = model.get_imputed_expression(zero_groups=zero_groups)
        seconds = time.perf_counter() - t1
        rows = {}
        for gene, cell_type in MARKERS.items():
            j = int(np.flatnonzero(adata.var_names == gene)[0])
            observed = np.asarray(norm.X[:, j].todense()).ravel() if hasattr(norm.X, "todense") else norm.X[:, j]
            is_type = (adata.obs["cell_type"] == cell_type).to_numpy().astype(float)
            rows[gene] = {
                "pearson_observed": float(np.corrcoef(imputed[:, j], observed)[0, 1]),
                "pearson_cell_type": float(np.corrcoef(imputed[:, j], is_type)[0, 1]),
                "pearson_observed_vs_cell_type": float(np.corrcoef(observed, is_type)[0, 1]),
            }
        imputation[str(zero_groups)] = {"seconds": seconds, "markers": rows}
        print(
            zero_groups, f"{seconds:.0f} s", {g: round(r["pearson_cell_type"], 3) for g, r in rows.items()}, flush=True
        )
    out = {
        "dataset": "pbmc3k_processed.h5ad",
        "n_cells": int(adata.n_obs),
        "model_kwargs": (
            {"preset": model.init_params_["non_kwargs"].get("preset"), **model.init_params_["kwargs"]["module_kwargs"]}
            if args.model_dir
            else MODEL_KWARGS
        ),
        "epochs": int(len(model.history_["masked_mse_validation"])),
        "model_dir": args.model_dir,
        "train_seconds": None if args.model_dir else train_s,
        "precision": str(model.trainer.precision) if not args.model_dir else "as saved (see its training run)",
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "bf16_units": cf.train.bf16_hardware("cpu")[1],
        "learning_signal": signal,
        "table": {
            k: {c: float(v) for c, v in row.items() if isinstance(v, int | float)} for k, row in table.iterrows()
        },
        "imputation": imputation,
    }
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
