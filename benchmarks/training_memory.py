"""xTrimoGene's training-memory estimate by preset and gene count, and the batch size it picks for a 24 GiB machine.

``cellformers.train._memory`` measures the activations autograd keeps for backward with one forward pass (no
training step) and scales them to the batch size. This script records, for the ``3M`` and ``10M`` presets over
1,000 / 2,000 / 5,000 genes (synthetic counts, every cell expressing half of the genes: the encoder's input is as
long as it gets for that vocabulary) and for ``10M`` over scFoundation's 19,264 genes (cells expressing 1,000 genes,
with and without ``decoder_chunk_size=4``): the activations per cell, the estimates at batch sizes 32 and 128, and
``default_train_batch_size`` for 60% of 24 GiB. Estimates only: nothing is trained, so it runs in a few minutes (a fresh
process per case).

``--before-src DIR`` runs the same cases on another code tree (``PYTHONPATH``) in a fresh process, for before/after
rows. ``--measure 16,32`` also trains XTrimoGene-10M for two steps (float32, ``model.train``) at each of those batch
sizes on 256 random pbmc3k cells × the genes expressed in 20 or more of them, in a fresh process each, and records
the peak RSS beside the estimate (what checks that the estimate stays above the real peak).

Usage::

    python benchmarks/training_memory.py --before-src /tmp/before/src    # -> results/training_memory_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, code_trees, machine_info, quiet_libraries, run_worker, write_json

GIB = 1024**3
BUDGET = int(0.6 * 24 * GIB)
CASES = [
    ("3M", 1000, 500, None),
    ("3M", 2000, 1000, None),
    ("3M", 5000, 2500, None),
    ("10M", 1000, 500, None),
    ("10M", 2000, 1000, None),
    ("10M", 5000, 2500, None),
    ("10M", 19264, 1000, None),
    ("10M", 19264, 1000, 4),
]


def half_expressed(n_genes: int, n_expressed: int, n_cells: int = 8, seed: int = 0):
    """Counts in which every cell expresses ``n_expressed`` random genes (1-20 counts)."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    rows = np.repeat(np.arange(n_cells), n_expressed)
    cols = np.concatenate([rng.choice(n_genes, n_expressed, replace=False) for _ in range(n_cells)])
    vals = rng.integers(1, 21, size=rows.size).astype(np.float32)
    x = sp.csr_matrix((vals, (rows, cols)), shape=(n_cells, n_genes))
    return ad.AnnData(x, var={"gene": [f"G{i}" for i in range(n_genes)]})


def worker(case: int) -> dict:
    """One case in this process (the code before the probe fix kept each probe's graph alive)."""
    import torch

    import cellformers as cf
    from cellformers.train import _memory

    torch.manual_seed(0)
    rows = []
    for preset, n_genes, n_expressed, chunk in CASES[case : case + 1]:
        adata = half_expressed(n_genes, n_expressed)
        cf.model.XTrimoGene.setup_anndata(adata)
        kwargs = {} if chunk is None else {"decoder_chunk_size": chunk}
        try:
            model = cf.model.XTrimoGene(adata, preset=preset, **kwargs)
        except TypeError:  # a code tree from before `decoder_chunk_size`
            continue
        if hasattr(_memory, "_activation_profile"):
            per_cell = _memory._activation_profile(model)[0]
        else:  # a code tree from before chunked decoding
            per_cell = _memory._activation_bytes_per_cell(model)
        batch, estimate = _memory.default_train_batch_size(model, budget=BUDGET)
        rows.append(
            {
                "preset": preset,
                "genes": n_genes,
                "expressed": n_expressed,
                "decoder_chunk_size": chunk,
                "activations_per_cell_mib": per_cell / 2**20,
                "estimate_batch32_gib": _memory.estimate_training_memory(model, 32) / GIB,
                "estimate_batch128_gib": _memory.estimate_training_memory(model, 128) / GIB,
                "batch_for_24gib": batch,
                "estimate_at_that_batch_gib": estimate / GIB,
            }
        )
    return {"rows": rows}


def measured_peak(batch_size: int) -> dict:
    """Peak RSS of two float32 training steps of XTrimoGene-10M on real cells, and the estimate for that batch."""
    import anndata as ad
    import numpy as np
    import torch
    from _common import PBMC3K, reset_peak_rss, status_mb

    import cellformers as cf
    from cellformers.train import _memory

    adata = ad.read_h5ad(PBMC3K)
    adata = adata[np.random.default_rng(0).permutation(adata.n_obs)[:256]].copy()
    adata = adata[:, np.asarray((adata.X > 0).sum(0)).ravel() >= 20].copy()
    cf.model.XTrimoGene.setup_anndata(adata)
    model = cf.model.XTrimoGene(adata, preset="10M")
    torch.manual_seed(0)
    estimate = _memory.estimate_training_memory(model, batch_size)
    reset_peak_rss()
    model.train(
        max_epochs=1, max_steps=2, batch_size=batch_size, precision="32", train_size=1.0, enable_progress_bar=False
    )
    return {
        "genes": int(adata.n_vars),
        "batch_size": batch_size,
        "estimate_gib": estimate / GIB,
        "peak_rss_gib": status_mb("VmHWM") / 1024,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", type=Path, default=None, help="src directory of the code tree to compare with")
    p.add_argument("--measure", default="", help="comma-separated batch sizes to train two steps at (peak RSS)")
    p.add_argument("--out", type=Path, default=RESULTS / "training_memory_cpu.json")
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_json is not None:
        quiet_libraries()
        task = json.loads(args.worker_json)
        print(json.dumps(measured_peak(task[1]) if task[0] == "measure" else worker(task[0])))
        return
    rows = []
    for code, env in code_trees(args.before_src, current="after"):
        for case in range(len(CASES)):
            for row in run_worker(Path(__file__), [case], env=env, timeout=1800)["rows"]:
                rows.append({"code": code, **row})
                print(json.dumps(rows[-1]), flush=True)
    measured = []
    for batch in [int(b) for b in args.measure.split(",") if b]:
        measured.append(run_worker(Path(__file__), ["measure", batch], timeout=1800))
        print(json.dumps(measured[-1]), flush=True)
    result = {
        "description": "xTrimoGene training-memory estimate (train._memory, one probe forward pass, float32, CPU) "
        "by preset and gene count; batch size picked for 60% of 24 GiB",
        "machine": machine_info("cpu"),
        "before_src": None if args.before_src is None else str(args.before_src),
        "rows": rows,
        "measured_peak_rss": measured,
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
