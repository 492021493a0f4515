"""scFormer perturbation-response prediction (section 4.3, App. A.1.2) on real data, beside mean/additive baselines.

``--dataset kang`` (default, offline): Kang et al. 2018 PBMCs, 1,000 control and 1,000 IFN-beta-stimulated cells
(``../shared/data/pbmc_kang2018_ctrl_stim_2000.h5ad``). The stimulation is framed as a perturb-seq condition: IFN-beta
acts through its receptor, so stimulated cells get the perturbation ``"IFNAR1+IFNAR2"`` (perturbation tokens on the
two receptor genes) and control cells ``"ctrl"``. A coarse cell type is assigned from marker genes, and one cell
type is held out: the model trains on (control, stimulated) pairs of the other cell types and predicts the
stimulated expression of the held-out type from its control cells (an out-of-distribution test as in scGen/CPA; the
perturbation itself is seen, in other cell types). Metrics: Pearson corr and corr(delta) on all genes and on the
top-20 DE genes, for scFormer, the train-mean baseline and the additive (control + training shift) baseline.

``--dataset synthetic``: ``cellformers.data.synthetic_perturbation`` with an unseen pair.
``--dataset norman|adamson``: GEARS' releases through ``cellformers.data.gears_dataset`` (needs the internet; a few
unseen single-gene perturbations are held out).

    python benchmarks/scformer_perturbation.py --dataset kang --held-out Mono --epochs 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scanpy as sc
import torch

import cellformers as cf
import cellformers.model

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
MARKERS = {
    "T": ["CD3D", "CD3E", "CD2", "IL7R", "LTB"],
    "NK": ["NKG7", "GNLY", "KLRD1", "PRF1"],
    "B": ["MS4A1", "CD79A", "CD79B", "CD19"],
    "Mono": ["CD14", "LYZ", "FCGR3A", "S100A8", "S100A9", "CST3"],
}
RECEPTOR = "IFNAR1+IFNAR2"


def kang(n_top_genes: int):
    adata = sc.read_h5ad(SHARED / "data" / "pbmc_kang2018_ctrl_stim_2000.h5ad")
    sc.pp.filter_genes(adata, min_cells=5)
    norm = adata.copy()
    sc.pp.normalize_total(norm, target_sum=1e4)
    sc.pp.log1p(norm)
    for name, genes in MARKERS.items():
        sc.tl.score_genes(norm, [g for g in genes if g in norm.var_names], score_name=f"score_{name}", random_state=0)
    scores = norm.obs[[f"score_{n}" for n in MARKERS]].to_numpy()
    adata.obs["cell_type"] = pd.Categorical(np.asarray(list(MARKERS))[scores.argmax(1)])
    sc.pp.highly_variable_genes(norm, n_top_genes=n_top_genes, batch_key="stim")
    keep = norm.var["highly_variable"].to_numpy() | adata.var_names.isin(RECEPTOR.split("+"))
    adata = adata[:, keep].copy()
    adata.obs["condition"] = np.where(adata.obs["stim"].astype(str) == "ctrl", "ctrl", RECEPTOR)
    return adata


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--dataset", default="kang", choices=["kang", "synthetic", "norman", "adamson"])
    p.add_argument("--held-out", nargs="*", default=["Mono"], help="kang: cell types to hold out (one run each)")
    p.add_argument("--n-top-genes", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--value-mode", default="binned", choices=["binned", "log1p"])
    p.add_argument("--n-control-cells", type=int, default=300)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    import scvi

    scvi.settings.seed = args.seed
    t_all = time.perf_counter()
    runs = []
    if args.dataset == "kang":
        adata = kang(args.n_top_genes)
        counts = adata.obs.groupby(["cell_type", "condition"], observed=True).size().unstack().to_dict()
        for held in args.held_out:
            ad = adata.copy()
            cf.model.ScFormerPerturbation.setup_anndata(ad, perturbation_key="condition", cell_type_key="cell_type")
            model = cf.model.ScFormerPerturbation(ad, max_length=args.max_length, value_mode=args.value_mode)
            train_idx = np.flatnonzero(
                (ad.obs["condition"] != "ctrl").to_numpy() & (ad.obs["cell_type"] != held).to_numpy()
            )
            t0 = time.perf_counter()
            model.train(
                max_epochs=args.epochs,
                batch_size=args.batch_size,
                train_indices=train_idx,
                accelerator="cpu",
                enable_progress_bar=False,
            )
            train_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            res = model.evaluate([RECEPTOR], cell_type=held, n_control_cells=args.n_control_cells)
            eval_s = time.perf_counter() - t0
            res.insert(0, "held_out_cell_type", held)
            print(res.round(3).to_string(), flush=True)
            runs.append(
                {
                    "held_out": held,
                    "train_s": train_s,
                    "eval_s": eval_s,
                    "best_epoch": getattr(model, "best_epoch_", None),
                    "history": {k: [float(v) for v in model.history_[k].to_numpy().ravel()] for k in model.history_},
                    "results": res.to_dict(orient="records"),
                }
            )
        meta = {
            "cells_per_type_and_condition": counts,
            "n_genes": int(adata.n_vars),
            "framing": __doc__.split("\n\n")[1],
        }
    else:
        if args.dataset == "synthetic":
            adata = cf.data.synthetic_perturbation(n_genes=60, random_state=args.seed)
            test = ["CD3D+CD4"]
            de = None
        else:
            adata = cf.data.gears_dataset(args.dataset)
            de = cf.data.gears_de_genes(adata)
            perts = [q for q in adata.obs["perturbation"].cat.categories if q != "ctrl"]
            rng = np.random.default_rng(args.seed)
            test = sorted(rng.choice([q for q in perts if "+" not in q], size=5, replace=False).tolist())
        train = [q for q in adata.obs["perturbation"].cat.categories if q not in test and q != "ctrl"]
        cf.model.ScFormerPerturbation.setup_anndata(adata, perturbation_key="perturbation")
        model = cf.model.ScFormerPerturbation(adata, max_length=args.max_length, value_mode=args.value_mode)
        t0 = time.perf_counter()
        model.train(
            max_epochs=args.epochs,
            batch_size=args.batch_size,
            train_perturbations=train,
            accelerator="cpu",
            enable_progress_bar=False,
        )
        train_s = time.perf_counter() - t0
        res = model.evaluate(test, de_genes=de, n_control_cells=args.n_control_cells)
        print(res.round(3).to_string(), flush=True)
        runs.append({"test": test, "train_s": train_s, "results": res.to_dict(orient="records")})
        meta = {"n_genes": int(adata.n_vars)}
    out = Path(args.out) if args.out else REPO / "benchmarks" / "results" / f"scformer_perturbation_{args.dataset}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "dataset": args.dataset,
        "args": vars(args),
        **meta,
        "runs": runs,
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg()},
        "total_s": time.perf_counter() - t_all,
    }
    out.write_text(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
