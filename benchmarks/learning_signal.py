"""Did each model's CPU recipe learn? Pretext loss against its trivial predictor, trained against untrained.

For one dataset, every model is trained with the recipe of its own benchmark script (the settings below are copied
from ``xtrimogene_pbmc3k.py``, ``scformer_integration.py`` and ``scpalm_codebook.py``, with validation cells kept so
the trivial baseline can be scored) and read against the two references every training result needs:

* the final validation pretext loss beside the loss of the trivial predictor of the same target on the same
  positions (:class:`cellformers.nn.TrivialBaseline`: each gene's mean over the scored training positions for MSE,
  each gene's bin marginal for cross-entropy), from ``model.history_``;
* the benchmark scores (:func:`cellformers.tl.benchmark`: AvgBIO / AvgBATCH / Overall and their parts) of the
  trained embedding beside the **same architecture untrained** (:func:`cellformers.tl.embed_untrained`), HVG-PCA
  and scVI.

Written to ``benchmarks/results/learning_signal_<dataset>.json`` in the shape of the other results: a ``dataset``
field and a ``table`` keyed by embedding (``X_pca_hvg``, ``X_scvi``, ``X_<model>``, ``X_<model>_untrained``), plus
``models`` (per model: recipe, training time, precision, pretext vs trivial loss) and ``machine`` (CPU capability and
whether it has bf16 units; precision is ``"auto"`` unless ``--precision`` says otherwise).

Usage::

    python benchmarks/learning_signal.py --dataset pbmc3k
    python benchmarks/learning_signal.py --dataset pancreas --models xtrimogene scpalm
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
from typing import TYPE_CHECKING

import torch
from scformer_integration import CPU_CONFIG as SCFORMER_CPU_CONFIG
from xtrimogene_pbmc3k import MODEL_KWARGS as XTRIMOGENE_KWARGS
from xtrimogene_pbmc3k import TRAIN_RECIPE as XTRIMOGENE_TRAIN

if TYPE_CHECKING:
    import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", HERE.parent.parent / "shared"))
DATASETS = {
    "pbmc3k": ("pbmc3k_processed.h5ad", None, "cell_type"),
    "pancreas": ("pancreas_baron_human.h5ad", "batch", "cell_type"),
    "cellbench": ("cellbench_celllines_multiprotocol.h5ad", "batch", "cell_type"),
}

#: The recipes of the per-model benchmark scripts (model options, train options, gene set).
RECIPES = {
    # xtrimogene_pbmc3k.py: 3M preset narrowed to a 4 x 64 encoder and a 2 x 64 Performer decoder, HVG vocabulary
    "xtrimogene": {
        "model": dict(XTRIMOGENE_KWARGS),
        "train": {
            "max_epochs": XTRIMOGENE_TRAIN["max_epochs"],
            "batch_size": XTRIMOGENE_TRAIN["batch_size"],
            "plan_kwargs": {"lr": XTRIMOGENE_TRAIN["lr"], "warmup_steps": XTRIMOGENE_TRAIN["warmup_steps"]},
        },
        "genes": "hvg_vocab",
    },
    # scformer_integration.py: paper architecture (4 x 128), every head (ECS, DAR and DSBN need a batch), CPU_CONFIG
    "scformer": {
        "model": dict(SCFORMER_CPU_CONFIG),
        "train": {"max_epochs": 10, "batch_size": 16},
        "genes": "hvg_1200",
    },
    # scpalm_codebook.py: small preset, N = 32 tokens, K = 128 codes, the model's defaults (per-position codebooks,
    # bottleneck stage 2, highly variable genes), 20 + 30 epochs, batch 32, lr 2e-3
    "scpalm": {
        "model": {"preset": "small", "n_pathway_tokens": 32, "n_codes": 128},
        "train": {"max_epochs": 20, "max_epochs_stage2": 30, "batch_size": 32, "lr": 2e-3},
        "genes": "all",
    },
}


def load(name: str):
    import scanpy as sc

    fname, batch_key, label_key = DATASETS[name]
    adata = sc.read_h5ad(SHARED / "data" / fname)
    adata.obs[label_key] = adata.obs[label_key].astype(str).astype("category")
    if batch_key:
        adata.obs[batch_key] = adata.obs[batch_key].astype(str).astype("category")
    sc.pp.filter_genes(adata, min_cells=3)
    return adata, batch_key, label_key


def hvgs(adata, n_top_genes: int, batch_key: str | None, *, stored: bool = False) -> np.ndarray:
    """Boolean mask of highly variable genes: the file's own (``stored``, pbmc3k's tutorial HVGs) where it has
    them, else scanpy's ``seurat`` flavour on log-normalized counts (batch-aware with a batch)."""
    import scanpy as sc

    if stored and "highly_variable" in adata.var:
        return adata.var["highly_variable"].to_numpy(dtype=bool)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    sc.pp.highly_variable_genes(norm, n_top_genes=n_top_genes, batch_key=batch_key)
    return norm.var["highly_variable"].to_numpy(dtype=bool)


def train_model(name: str, adata, batch_key, label_key, *, seed: int, precision: str, threads: int):
    """Train ``name``'s recipe on its own copy of the data; return (model, its AnnData, info)."""
    import scvi

    import cellformers as cf

    recipe = RECIPES[name]
    genes = recipe["genes"]
    if genes == "hvg_1200":
        ad = adata[:, hvgs(adata, 1200, batch_key)].copy()
    else:
        ad = adata.copy()
    cls = {"xtrimogene": cf.model.XTrimoGene, "scformer": cf.model.ScFormer, "scpalm": cf.model.ScPaLM}[name]
    cls.setup_anndata(ad, batch_key=batch_key, labels_key=label_key)
    extra = {}
    if genes == "hvg_vocab":
        extra["vocab"] = cf.data.GeneVocab(
            list(ad.var_names[hvgs(ad, 2000, batch_key, stored=True)]), name=f"{name}-hvg"
        )
    scvi.settings.seed = seed
    torch.manual_seed(seed)
    model = cls(ad, **recipe["model"], **extra)
    torch.set_num_threads(threads)
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(accelerator="cpu", precision=precision, enable_progress_bar=False, **recipe["train"])
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    signal = cf.train.learning_signal(model.history_)
    hist = model.history_
    curve = {
        k: [float(v) for v in hist[k].to_numpy(dtype=float).ravel()]
        for k in ("pretext_loss_validation", "trivial_loss_validation", "trivial_ratio_validation")
        if k in hist
    }
    info = {
        "recipe": recipe,
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "n_model_genes": int(model.module.n_genes),
        "precision": str(model.trainer.precision),
        "train_wall_s": wall,
        "train_cpu_s": cpu,
        "learning_signal": signal,
        "curves": curve,
    }
    print(
        f"{name}: {wall:.0f} s wall ({cpu:.0f} s CPU), validation pretext {signal['pretext_loss']:.4f} vs trivial "
        f"{signal['trivial_loss']:.4f} (ratio {signal['ratio']:.3f})",
        flush=True,
    )
    return model, ad, info


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--models", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--precision", default="auto", help="'auto' (bf16 only with bf16 units), '32' or 'bf16-mixed'")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core machine)")
    p.add_argument("--skip-scvi", action="store_true")
    p.add_argument(
        "--scvi-from",
        default=None,
        help="take the X_scvi row from this results JSON (e.g. baselines_pbmc3k.json, same tl.baselines/tl.benchmark) "
        "instead of training scVI here (it is recorded as such)",
    )
    p.add_argument("--out", default=None)
    args = p.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    import cellformers as cf

    adata, batch_key, label_key = load(args.dataset)
    methods = ("pca",) if args.skip_scvi or args.scvi_from else ("pca", "scvi")
    t0 = time.perf_counter()
    cf.tl.baselines(adata, methods=methods, batch_key=batch_key, accelerator="cpu", random_state=args.seed)
    baseline_s = time.perf_counter() - t0
    keys = [k for k in ("X_pca_hvg", "X_scvi") if k in adata.obsm]
    models = {}
    for name in args.models:
        model, ad, info = train_model(
            name, adata, batch_key, label_key, seed=args.seed, precision=args.precision, threads=args.threads
        )
        torch.set_num_threads(args.threads)
        t1 = time.perf_counter()
        cf.tl.embed(ad, model)
        cf.tl.embed_untrained(ad, model, seed=args.seed)
        info["embed_s"] = time.perf_counter() - t1
        for key in (f"X_{name}", f"X_{name}_untrained"):
            adata.obsm[key] = ad.obsm[key]
            keys.append(key)
        models[name] = info
    table = cf.tl.benchmark(adata, embeddings=keys, label_key=label_key, batch_key=batch_key, random_state=args.seed)
    print(table[["AvgBIO", "AvgBATCH", "Overall"]].round(3).to_string(), flush=True)
    rows = {k: {c: float(v) for c, v in row.items() if isinstance(v, int | float)} for k, row in table.iterrows()}
    if args.scvi_from:
        stored = json.loads(Path(args.scvi_from).read_text())
        rows["X_scvi"] = {k: v for k, v in stored["table"]["X_scvi"].items() if v is not None}
        rows["X_scvi"]["source"] = f"{Path(args.scvi_from).name} (not re-run here)"
    fast, why = cf.train.bf16_hardware("cpu")
    out = {
        "dataset": DATASETS[args.dataset][0],
        "n_cells": int(adata.n_obs),
        "batch_key": batch_key,
        "label_key": label_key,
        "args": vars(args),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpus": os.cpu_count(),
            "torch_threads": args.threads,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": fast,
            "bf16_reason": why,
            "load_avg_at_end": os.getloadavg(),
        },
        "baselines_s": baseline_s,
        "models": models,
        "table": rows,
    }
    path = Path(args.out) if args.out else HERE / "results" / f"learning_signal_{args.dataset}.json"
    if path.exists():  # models not re-run keep their stored rows, marked with the run they come from
        stored = json.loads(path.read_text())
        for name, info in stored.get("models", {}).items():
            if name in models:
                continue
            out["models"][name] = {**info, "source": f"an earlier run ({stored.get('args', {}).get('precision')})"}
            for key in (f"X_{name}", f"X_{name}_untrained"):
                if key in stored.get("table", {}):
                    out["table"][key] = {**stored["table"][key], "source": "an earlier run (not re-run here)"}
    path.write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
