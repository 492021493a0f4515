"""Embedding with ``precision="int8"`` against float32 (and bf16 where the CPU has bf16 units), on real cells.

For each model: the cells of ``pbmc3k_processed.h5ad`` (the first ``--cells``; the tutorial's 1,838 HVGs as the
vocabulary) are embedded with ``get_latent_representation`` at each precision, in interleaved rounds in this one
process with one torch thread; the minimum CPU time (``time.process_time``) and wall time of the rounds are kept, so
the ratio holds on a shared machine. Agreement with float32: cosine similarity per cell (min and median).

Weights: the architecture's initialisation (seeded) unless ``--model-dir`` names a saved model of the first model
in ``--models``. Writes ``benchmarks/results/int8_inference.json``.

    python benchmarks/int8_inference.py
    python benchmarks/int8_inference.py --models xtrimogene --model-dir /tmp/xtg_pbmc3k
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import PBMC3K, RESULTS, machine_info, quiet_libraries, write_json  # noqa: E402

#: model -> (class name, constructor options): the 10M-class presets the throughput benchmark uses.
MODELS = {
    "xtrimogene": ("XTrimoGene", {"preset": "10M"}),
    "scformer": ("ScFormer", {"preset": "paper"}),
    "scpalm": ("ScPaLM", {"preset": "paper"}),
}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-12)


def measure(name: str, adata, model_dir: str | None, rounds: int, batch_size: int) -> dict:
    import cellformers as cf

    cls_name, kwargs = MODELS[name]
    cls = getattr(cf.model, cls_name)
    if model_dir:
        model = cls.load(model_dir, adata=adata)
        weights = f"trained ({model_dir})"
    else:
        torch.manual_seed(0)
        hvg = adata.var_names[adata.var["highly_variable"].to_numpy()]
        cls.setup_anndata(adata)
        model = cls(adata, vocab=cf.data.GeneVocab(list(hvg), name="pbmc3k-hvg"), **kwargs)
        model.is_trained_ = True  # initial weights: the arithmetic is what is compared
        if hasattr(model.module, "trained_stages"):
            model.module.trained_stages[:] = True  # scPaLM reads h_C only after stage 2
        weights = "initialisation (seed 0)"
    precisions = ["32", "int8"] + (["bf16"] if cf.train.bf16_hardware("cpu")[0] else [])
    times: dict[str, list[tuple[float, float]]] = {p: [] for p in precisions}
    out: dict[str, np.ndarray] = {}
    for _ in range(rounds):
        for p in precisions:
            torch.set_num_threads(1)
            w0, c0 = time.perf_counter(), time.process_time()
            out[p] = model.get_latent_representation(precision=p, batch_size=batch_size)
            times[p].append((time.perf_counter() - w0, time.process_time() - c0))
    n_params = int(sum(q.numel() for q in model.module.parameters()))
    row = {"class": cls_name, "options": kwargs, "weights": weights, "n_parameters": n_params, "precisions": {}}
    base = min(c for _, c in times["32"])
    for p in precisions:
        cpu = min(c for _, c in times[p])
        wall = min(w for w, _ in times[p])
        cos = cosine(out["32"], out[p])
        row["precisions"][p] = {
            "cpu_s": cpu,
            "wall_s": wall,
            "cells_per_cpu_s": adata.n_obs / cpu,
            "speedup_vs_fp32_cpu": base / cpu,
            "cosine_vs_fp32_min": float(cos.min()),
            "cosine_vs_fp32_median": float(np.median(cos)),
        }
        print(
            f"{name} {p:>5}: {cpu:6.2f} s CPU ({base / cpu:4.2f}x fp32), cosine to fp32 min {cos.min():.5f} "
            f"median {np.median(cos):.5f}",
            flush=True,
        )
    return row


def flat_rows(models: dict) -> dict:
    """One row per model and precision (what the benchmarks page renders)."""
    return {
        f"{name} {prec}": {"parameters": row["n_parameters"], **vals}
        for name, row in models.items()
        for prec, vals in row["precisions"].items()
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--model-dir", default=None, help="saved model of the first of --models")
    p.add_argument("--cells", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--out", default=str(RESULTS / "int8_inference.json"))
    args = p.parse_args()
    quiet_libraries()
    import anndata as ad

    full = ad.read_h5ad(PBMC3K)
    result = {
        "dataset": PBMC3K.name,
        "n_cells": args.cells,
        "machine": machine_info("cpu"),
        "torch_threads": 1,
        "rounds": args.rounds,
        "batch_size": args.batch_size,
        "note": "min over interleaved rounds in one process; speed-ups are CPU-time ratios",
        "models": {},
    }
    for i, name in enumerate(args.models):
        adata = full[: args.cells].copy()
        result["models"][name] = measure(name, adata, args.model_dir if i == 0 else None, args.rounds, args.batch_size)
    result["results"] = flat_rows(result["models"])
    write_json(Path(args.out), result)
    print(f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
