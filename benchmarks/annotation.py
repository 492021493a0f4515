"""Cell-type annotation by fine-tuning (xTrimoGene App. 8.1) and label transfer across donors, on the CPU.

For ``pbmc3k_processed.h5ad`` (8 types) and ``pancreas_baron_human.h5ad`` (14 types, 4 donors):

1. each model (small CPU configurations, below) is pre-trained without labels on all cells (``precision="auto"``),
   then a classifier head is fine-tuned with :meth:`~cellformers.model.CellformersModel.train_annotator` on the
   seeded, stratified 8:1:1 split (model selection on validation): once with the encoder frozen, then with the whole
   backbone fine-tuned (``freeze="none"``, warm-started from the frozen head); for each of ``--seeds`` (default
   0, 1, 2: the split and the head's initialisation), from the same pre-trained weights, with the mean and sd over
   seeds in ``summary`` beside the baselines on the same splits, and the test support of each class;
2. the baselines run on the same split (:func:`cellformers.tl.annotation_baselines`): logistic regression on HVG-PCA
   and a kNN vote in the scVI latent space (:func:`cellformers.tl.baselines`; scVI is unsupervised and sees all
   cells, like the models' pre-training);
3. test macro-F1 / macro-precision / accuracy and wall times are recorded;
4. pancreas only: label transfer from one donor (the largest, by default) to the three others. Each model is
   pre-trained on the reference donor alone (HVGs of the reference as vocabulary), both donors' cells are embedded
   with it, and labels move by a distance-weighted kNN vote (:func:`cellformers.tl.transfer_labels`, with
   confidence) and by a classifier head trained on the reference (:func:`cellformers.tl.annotate` on the query).
   Baselines: kNN in a PCA fitted on the reference (query projected) and logistic regression on the reference's
   log-normalized HVGs.

The models only see the highly variable genes (vocabulary): pbmc3k's 1,838 tutorial HVGs, and for pancreas 2,000
``seurat_v3`` HVGs; the library size of the normalization is the total count over all genes.

Usage (the lead's machine is shared, so run it niced; one thread)::

    nice -n 10 python benchmarks/annotation.py                 # everything -> benchmarks/results/annotation.json
    nice -n 10 python benchmarks/annotation.py --quick         # a smoke run (1 epoch each), to another file
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
import torch

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
RESULTS = REPO / "benchmarks" / "results"
DATASETS = {"pbmc3k": "pbmc3k_processed.h5ad", "pancreas": "pancreas_baron_human.h5ad"}
LABELS_KEY, BATCH_KEY = "cell_type", "batch"
TRAIN_KW = {"accelerator": "cpu", "enable_progress_bar": False, "enable_model_summary": False}

#: Small CPU configurations (same as the per-model benchmarks) and their pre-training schedule.
MODELS = {
    "xtrimogene": {
        "kwargs": {
            "preset": "3M",
            "encoder_layers": 4,
            "encoder_heads": 4,
            "encoder_dim": 64,
            "encoder_ff": 256,
            "decoder_layers": 1,
            "decoder_heads": 2,
            "decoder_dim": 32,
            "decoder_ff": 128,
        },
        "train": {"max_epochs": 8, "batch_size": 32, "plan_kwargs": {"lr": 1e-3, "warmup_steps": 50}},
    },
    "scformer": {
        "kwargs": {"include_zero_genes": False, "max_length": 128, "norm_first": True},
        "train": {"max_epochs": 6, "batch_size": 64},
    },
    "scpalm": {
        "kwargs": {"preset": "small", "n_pathway_tokens": 32},
        "train": {"max_epochs": 6, "max_epochs_stage2": 3, "batch_size": 64},
    },
}


def _model_cls(name: str):
    from cellformers.model import ScFormer, ScPaLM, XTrimoGene

    return {"xtrimogene": XTrimoGene, "scformer": ScFormer, "scpalm": ScPaLM}[name]


def load(name: str):
    import anndata as ad

    adata = ad.read_h5ad(SHARED / "data" / DATASETS[name])
    adata.obs[LABELS_KEY] = adata.obs[LABELS_KEY].astype(str).astype("category")
    if BATCH_KEY in adata.obs:
        adata.obs[BATCH_KEY] = adata.obs[BATCH_KEY].astype(str).astype("category")
    return adata


def hvg_list(adata, n_top: int = 2000) -> list[str]:
    """The tutorial HVGs of pbmc3k when present, else ``seurat_v3`` HVGs of the counts."""
    import scanpy as sc

    if "highly_variable" in adata.var and adata.var["highly_variable"].any():
        return list(adata.var_names[adata.var["highly_variable"].to_numpy()])
    tmp = sc.AnnData(adata.X.copy(), var=adata.var[[]].copy())
    sc.pp.filter_genes(tmp, min_cells=3)
    sc.pp.highly_variable_genes(tmp, flavor="seurat_v3", n_top_genes=n_top)
    return list(tmp.var_names[tmp.var["highly_variable"].to_numpy()])


def _pin_threads() -> None:
    """Scanpy's numba kernels reset the OpenMP thread count torch shares: set it again before every timed step."""
    torch.set_num_threads(int(os.environ.get("CELLFORMERS_BENCH_THREADS", torch.get_num_threads())))


def pretrain(name: str, adata, vocab, epochs_scale: float, seed: int, precision: str):
    import scvi

    _pin_threads()
    scvi.settings.seed = seed
    cls = _model_cls(name)
    cfg = MODELS[name]
    cls.setup_anndata(adata)
    model = cls(adata, vocab=vocab, **cfg["kwargs"])
    train = dict(cfg["train"])
    for k in ("max_epochs", "max_epochs_stage2"):
        if k in train:
            train[k] = max(1, round(train[k] * epochs_scale))
    t0, c0 = time.perf_counter(), time.process_time()
    model.train(precision=precision, **train, **TRAIN_KW)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_params = int(sum(p.numel() for p in model.module.parameters()))
    print(
        f"  {name}: pre-trained in {seconds:.0f} s wall, {cpu:.0f} s CPU ({train}), {n_params / 1e6:.2f}M parameters",
        flush=True,
    )
    info = {"seconds": seconds, "cpu_seconds": cpu, "schedule": train, "n_parameters": n_params}
    return model, {**info, "config": cfg["kwargs"]}


def finetune(model, adata, *, freeze: str, epochs: int | None, seed: int, precision: str) -> dict:
    _pin_threads()
    t0, c0 = time.perf_counter(), time.process_time()
    ann = model.train_annotator(LABELS_KEY, adata, freeze=freeze, max_epochs=epochs, seed=seed, precision=precision)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    test = ann.metrics["test"]
    print(
        f"  {type(model).__name__} freeze={freeze}: test macro-F1 {test['macro_f1']:.3f}, macro-precision "
        f"{test['macro_precision']:.3f}, accuracy {test['accuracy']:.3f} (best epoch {ann.best_epoch}, {seconds:.0f} s "
        f"wall, {cpu:.0f} s CPU)",
        flush=True,
    )
    return {
        "test": test,
        "validation": ann.metrics.get("validation"),
        "best_epoch": int(ann.best_epoch),
        "epochs_run": int(len(ann.history)),
        "seconds": seconds,
        "cpu_seconds": cpu,
        "params": ann.params,
    }


def annotation_task(name: str, models: list[str], args) -> dict:
    import cellformers as cf

    adata = load(name)
    hvgs = hvg_list(adata)
    vocab = cf.data.GeneVocab(hvgs, name=f"{name}-hvg")
    counts = adata.obs[LABELS_KEY].value_counts()
    out: dict = {
        "dataset": DATASETS[name],
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "n_model_genes": len(hvgs),
        "classes": {str(k): int(v) for k, v in counts.items()},
    }
    print(f"== {name}: {adata.n_obs} cells, {len(hvgs)} HVGs, {len(counts)} classes", flush=True)
    split = cf.model.base._annotation.stratified_split(
        cf.model.base._annotation.read_labels(adata, LABELS_KEY), (0.8, 0.1, 0.1), args.seed
    )
    out["split_sizes"] = {k: int(v.size) for k, v in split.items()}

    t0 = time.perf_counter()
    cf.tl.baselines(
        adata, methods=("pca", "scvi"), max_epochs=args.scvi_epochs, accelerator="cpu", random_state=args.seed
    )
    emb_s = time.perf_counter() - t0
    table = cf.tl.annotation_baselines(adata, labels_key=LABELS_KEY, split=split, seed=args.seed)
    print(table.round(3).to_string(), flush=True)
    runtime = adata.uns["cellformers_baselines"]["runtime_s"]
    out["baselines"] = {
        m: {**{k: (float(v) if isinstance(v, float | np.floating) else v) for k, v in row.items()}}
        for m, row in table.to_dict(orient="index").items()
    }
    out["baselines"]["logreg_pca"]["embedding_seconds"] = float(runtime.get("pca", np.nan))
    out["baselines"]["knn_scvi"]["embedding_seconds"] = float(runtime.get("scvi", np.nan))
    out["baseline_embeddings_seconds"] = emb_s
    out["scvi_epochs"] = args.scvi_epochs

    out["models"] = {}
    seeds = args.seeds or [args.seed]
    per_seed: dict[str, list[dict]] = {}
    for s in seeds:
        split_s = (
            split
            if s == args.seed
            else cf.model.base._annotation.stratified_split(
                cf.model.base._annotation.read_labels(adata, LABELS_KEY), (0.8, 0.1, 0.1), s
            )
        )
        base = (
            table if s == args.seed else cf.tl.annotation_baselines(adata, labels_key=LABELS_KEY, split=split_s, seed=s)
        )
        for method, row in base.to_dict(orient="index").items():
            per_seed.setdefault(method, []).append({k: row[k] for k in METRIC_KEYS if k in row})
    for m in models:
        data = adata.copy()
        model, info = pretrain(m, data, vocab, args.epochs_scale, args.seed, args.precision)
        res = {"pretrain": info}
        pretrained_state = {k: v.detach().clone() for k, v in model.module.state_dict().items()}
        for s in seeds:
            model.module.load_state_dict(pretrained_state)  # full fine-tuning of the previous seed changed it
            frozen = finetune(model, data, freeze="encoder", epochs=None, seed=s, precision=args.precision)
            per_seed.setdefault(f"{m} frozen", []).append(frozen["test"])
            if s == args.seed:
                res["frozen"] = frozen
                assert all(np.array_equal(model.annotator_.split[k], split[k]) for k in split), "split differs"
            if args.finetune_epochs > 0:
                full = finetune(
                    model, data, freeze="none", epochs=args.finetune_epochs, seed=s, precision=args.precision
                )
                per_seed.setdefault(f"{m} full", []).append(full["test"])
                if s == args.seed:
                    res["full"] = full
        out["models"][m] = res
    out["seeds"] = seeds
    out["summary"] = _summarize(per_seed)
    return out


METRIC_KEYS = ("macro_f1", "macro_f1_supported", "macro_precision", "accuracy")


def _summarize(per_seed: dict[str, list[dict]]) -> dict:
    """Mean and standard deviation over seeds of each method's test scores (splits and heads differ by seed)."""
    keys = METRIC_KEYS
    out = {}
    for method, runs in per_seed.items():
        out[method] = {"n_seeds": len(runs)}
        for k in keys:
            vals = np.array([r[k] for r in runs if r.get(k) is not None], dtype=float)
            if vals.size:
                out[method][k] = {"mean": float(vals.mean()), "sd": float(vals.std(ddof=1)) if vals.size > 1 else 0.0}
        support = runs[0].get("per_class")
        if support:
            out[method]["test_support"] = {c: v["support"] for c, v in support.items()}
    return out


def _lognorm_hvg(adata, genes):
    import scanpy as sc
    from scipy import sparse

    tmp = sc.AnnData(sparse.csr_matrix(adata.X, dtype=np.float32, copy=True))
    sc.pp.normalize_total(tmp, target_sum=1e4)
    sc.pp.log1p(tmp)
    cols = adata.var_names.get_indexer(genes)
    return np.asarray(tmp.X[:, cols].toarray(), dtype=np.float64)


def transfer_task(models: list[str], args) -> dict:
    import pandas as pd
    from sklearn.decomposition import PCA
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    import cellformers as cf
    from cellformers.metrics import classification_metrics

    adata = load("pancreas")
    donors = adata.obs[BATCH_KEY].value_counts()
    ref_donor = args.reference_donor or str(donors.index[0])
    is_ref = (adata.obs[BATCH_KEY] == ref_donor).to_numpy()
    ref, query = adata[is_ref].copy(), adata[~is_ref].copy()
    truth = query.obs[LABELS_KEY].astype(str).to_numpy()
    seen = np.isin(truth, ref.obs[LABELS_KEY].astype(str).unique())
    hvgs = hvg_list(ref)
    vocab = cf.data.GeneVocab(hvgs, name="pancreas-ref-hvg")
    out: dict = {
        "dataset": DATASETS["pancreas"],
        "reference_donor": ref_donor,
        "n_reference": int(ref.n_obs),
        "n_query": int(query.n_obs),
        "query_donors": {str(k): int(v) for k, v in donors.items() if str(k) != ref_donor},
        "n_query_types_unseen_in_reference": int((~seen).sum()),
        "note": "accuracy over all query cells; accuracy_seen_types over query cells whose type occurs in the reference",
    }
    print(f"== transfer: reference {ref_donor} ({ref.n_obs} cells) -> {query.n_obs} query cells", flush=True)

    def score(pred, conf=None) -> dict:
        pred = np.asarray(pred, dtype=str)
        m = classification_metrics(truth, pred)
        res = {**m, "accuracy_seen_types": float((pred[seen] == truth[seen]).mean())}
        if conf is not None:
            conf = np.asarray(conf, dtype=float)
            res["mean_confidence"] = float(conf.mean())
            hi = conf >= 0.9
            res["fraction_confident_0.9"] = float(hi.mean())
            res["accuracy_confident_0.9"] = float((pred[hi] == truth[hi]).mean()) if hi.any() else float("nan")
        return res

    base: dict = {}
    t0 = time.perf_counter()
    xr, xq = _lognorm_hvg(ref, hvgs), _lognorm_hvg(query, hvgs)
    scaler = StandardScaler().fit(xr)
    pca = PCA(n_components=50, random_state=args.seed).fit(scaler.transform(xr))
    ref.obsm["X_pca_ref"] = pca.transform(scaler.transform(xr)).astype(np.float32)
    query.obsm["X_pca_ref"] = pca.transform(scaler.transform(xq)).astype(np.float32)
    cf.tl.transfer_labels(query, ref, labels_key=LABELS_KEY, use_rep="X_pca_ref", key_added="pca_knn")
    base["knn_pca"] = {
        **score(query.obs["pca_knn"], query.obs["pca_knn_confidence"]),
        "seconds": time.perf_counter() - t0,
    }
    t0 = time.perf_counter()
    clf = LogisticRegression(C=0.1, max_iter=3000).fit(scaler.transform(xr), ref.obs[LABELS_KEY].astype(str))
    proba = clf.predict_proba(scaler.transform(xq))
    base["logreg_hvg"] = {
        **score(clf.classes_[proba.argmax(1)], proba.max(1)),
        "seconds": time.perf_counter() - t0,
    }
    out["baselines"] = base
    print(pd.DataFrame(base).T[["accuracy", "macro_f1", "accuracy_seen_types"]].round(3).to_string(), flush=True)

    out["models"] = {}
    for m in models:
        r, q = ref.copy(), query.copy()
        model, info = pretrain(m, r, vocab, args.epochs_scale, args.seed, args.precision)
        res: dict = {"pretrain": info}
        t0 = time.perf_counter()
        _pin_threads()
        prec = cf.train.resolve_precision(args.precision, "cpu", training=False)
        cf.tl.embed(r, model, key_added="X_model", precision=prec)
        cf.tl.embed(q, model, key_added="X_model", precision=prec)
        cf.tl.transfer_labels(q, r, labels_key=LABELS_KEY, use_rep="X_model", key_added="knn")
        res["knn"] = {**score(q.obs["knn"], q.obs["knn_confidence"]), "seconds": time.perf_counter() - t0}
        t0 = time.perf_counter()
        model.train_annotator(LABELS_KEY, r, freeze="encoder", split=(0.9, 0.1, 0.0), seed=args.seed, precision=prec)
        cf.tl.annotate(q, model, key_added="head", precision=prec)
        res["head_frozen"] = {
            **score(q.obs["head"], q.obs["head_confidence"]),
            "seconds": time.perf_counter() - t0,
        }
        print(
            f"  {m}: kNN accuracy {res['knn']['accuracy']:.3f}, head accuracy {res['head_frozen']['accuracy']:.3f}",
            flush=True,
        )
        out["models"][m] = res
    return out


def merge(paths: list[str], out: Path) -> None:
    """Combine the JSON files of runs over separate datasets (e.g. run side by side) into one."""
    merged: dict = {"runs": [], "annotation": {}}
    for path in paths:
        part = json.loads(Path(path).read_text())
        merged["runs"].append({k: part.get(k) for k in ("args", "machine", "total_seconds")})
        merged["annotation"].update(part.get("annotation", {}))
        if "transfer" in part:
            merged["transfer"] = part["transfer"]
        merged.setdefault("description", part.get("description"))
    out.write_text(json.dumps(merged, indent=1, default=float) + "\n")
    print(f"wrote {out}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default="pbmc3k,pancreas")
    p.add_argument("--models", default="xtrimogene,scformer,scpalm")
    p.add_argument("--epochs-scale", type=float, default=1.0, help="scale the pre-training epochs of MODELS")
    p.add_argument("--finetune-epochs", type=int, default=3, help="epochs of full fine-tuning (0: skip)")
    p.add_argument("--scvi-epochs", type=int, default=100)
    p.add_argument("--no-transfer", action="store_true")
    p.add_argument("--reference-donor", default=None)
    p.add_argument("--precision", default="auto", help="auto: bf16 only where the CPU has bf16 units")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--seeds",
        type=int,
        nargs="*",
        default=[0, 1, 2],
        help="seeds of the split and the heads (mean and sd over them); pre-training uses --seed",
    )
    p.add_argument("--quick", action="store_true", help="1 pre-training epoch, 1 fine-tuning epoch, 5 scVI epochs")
    p.add_argument("--out", default=None)
    p.add_argument("--merge", nargs="+", default=None, help="merge result files of separate runs into --out")
    args = p.parse_args()
    if args.merge:
        merge(args.merge, Path(args.out or RESULTS / "annotation.json"))
        return
    if args.quick:
        args.epochs_scale, args.finetune_epochs, args.scvi_epochs = 0.01, 1, 5
    out_path = Path(args.out or RESULTS / ("annotation_quick.json" if args.quick else "annotation.json"))

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "scvi"):
        logging.getLogger(name).setLevel(logging.ERROR)
    os.environ["CELLFORMERS_BENCH_THREADS"] = str(args.threads)
    os.environ.setdefault("NUMBA_NUM_THREADS", str(args.threads))
    torch.set_num_threads(args.threads)
    import cellformers as cf

    cf.settings.seed = args.seed
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    result: dict = {
        "description": __doc__.splitlines()[0],
        "args": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "torch": torch.__version__,
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "bf16_units": cf.train.bf16_hardware("cpu")[1],
            "loadavg_start": os.getloadavg(),
        },
        "annotation": {},
    }
    t_all = time.perf_counter()
    for name in [d.strip() for d in args.datasets.split(",") if d.strip()]:
        result["annotation"][name] = annotation_task(name, models, args)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    if not args.no_transfer:
        result["transfer"] = transfer_task(models, args)
    result["machine"]["loadavg_end"] = os.getloadavg()
    result["total_seconds"] = time.perf_counter() - t_all
    out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
    print(f"wrote {out_path} ({result['total_seconds']:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
