"""What scFormer's cell token encodes after training from scratch: per-cell count statistics or the cell type?

Trains one configuration of ``scformer_integration.py`` (default: ``mvc_bottleneck_avg``, the cell token as the only
route to the masked values, mid-rank ties) on the pancreas and probes the ``<cls>`` embedding, trained and untrained
(same seed), with cross-validated linear models (5 folds):

* R² of ridge regressions onto per-cell statistics of the counts over the model's genes: log total count, log number
  of expressed genes, and the share of the expressed genes whose count is 1 (what sets a tied count's mid-rank bin);
* accuracy of a logistic regression onto the cell type.

Writes ``benchmarks/results/scformer_cell_token_probe.json``.

    python benchmarks/scformer_cell_token_probe.py --epochs 10 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import RESULTS, machine_info, quiet_libraries  # noqa: E402
from scformer_integration import ABLATIONS, CPU_CONFIG, load, train_scformer  # noqa: E402


def cell_statistics(adata) -> dict[str, np.ndarray]:
    """Per-cell statistics of the counts over the genes of ``adata``."""
    X = adata.X.toarray() if hasattr(adata.X, "toarray") else np.asarray(adata.X)
    expressed = (X > 0).sum(1)
    return {
        "log_total_count": np.log1p(X.sum(1)),
        "log_n_expressed": np.log1p(expressed),
        "share_of_ones": (X == 1).sum(1) / np.maximum(expressed, 1),
    }


def probe(z: np.ndarray, stats: dict[str, np.ndarray], labels: np.ndarray, seed: int) -> dict[str, float]:
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    folds = KFold(5, shuffle=True, random_state=seed)
    out = {}
    for name, y in stats.items():
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 3, 11)))
        out[f"r2_{name}"] = float(cross_val_score(model, z, y, cv=folds, scoring="r2").mean())
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    strat = StratifiedKFold(5, shuffle=True, random_state=seed)
    out["cell_type_accuracy"] = float(cross_val_score(clf, z, labels, cv=strat).mean())
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ablation", default="mvc_bottleneck_avg", choices=sorted(ABLATIONS))
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--precision", default="auto")
    p.add_argument("--out", default=str(RESULTS / "scformer_cell_token_probe.json"))
    args = p.parse_args()
    quiet_libraries()
    torch.set_num_threads(args.threads)
    adata, batch_key, label_key = load("pancreas", 1200)
    opts, train_opts = ABLATIONS[args.ablation]
    trained, untrained, info, _ = train_scformer(
        adata,
        batch_key,
        config={**CPU_CONFIG, **opts},
        train_opts=train_opts,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        precision=args.precision,
        readouts=("cls",),
    )
    stats = cell_statistics(adata)
    labels = adata.obs[label_key].astype(str).to_numpy()
    results = {
        "trained <cls>": probe(trained["cls"], stats, labels, args.seed),
        "untrained <cls>": probe(untrained["cls"], stats, labels, args.seed),
    }
    for k, v in results.items():
        print(k, {m: round(x, 3) for m, x in v.items()}, flush=True)
    out = {
        "dataset": "pancreas_baron_human.h5ad",
        "ablation": args.ablation,
        "config": {**CPU_CONFIG, **opts},
        "epochs": args.epochs,
        "seed": args.seed,
        "train_cpu_s": info["train_cpu_s"],
        "machine": machine_info("cpu"),
        "note": "5-fold cross-validated R² of ridge regressions (per-cell statistics) and logistic-regression accuracy",
        "probes": results,
    }
    Path(args.out).write_text(json.dumps(out, indent=2, default=float) + "\n")
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
