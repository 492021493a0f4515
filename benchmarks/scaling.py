"""Embedding time and peak memory from 10k to 200k cells read from backed ``.h5ad`` files.

Data: the 2,638 real pbmc3k cells (raw counts, 13,714 genes) replicated into one ``.h5ad`` file per size in a
temporary folder, written in chunks of the original CSR matrix (the matrix of 200k cells, about 1.4 GB on disk, is
never built in memory). Each file is opened with ``anndata.read_h5ad(path, backed="r")``, so cells are read from disk
minibatch by minibatch.

Model: xTrimoGene (``--preset``, default a deliberately small encoder on top of ``"3M"``: 1 layer of width 32,
``max_encoder_length=128``, 10 value bins) with untrained weights: the embedding compute does not depend on the weight values, and a
small encoder keeps the whole sweep (about 380,000 cells) within minutes on a laptop CPU, so the measurement is
dominated by what grows with the number of cells, the data path (``setup_anndata``, the scvi-tools data loader on
backed data, ``_predict_batches``), not by transformer FLOPs. ``--preset 3M`` measures the full 3M encoder.

Each size runs in a fresh subprocess and reports (peak RSS = ``VmHWM`` from ``/proc/self/status``):

* ``setup_anndata`` + model construction: time and peak RSS (the counts check streams over the file);
* ``get_latent_representation()`` of every cell: time, cells/s and peak RSS (the peak is reset after setup), and
  the size of the returned embedding matrix (``n_cells x dim`` float32, which necessarily grows with the cells).

Goal: time linear in cells (a linear fit is reported), embedding peak RSS flat (within 10% from the smallest to the
largest size).

Memory accounting: glibc adapts its mmap threshold to the sizes freed so far, so with its default behaviour the
peak RSS of two identical runs differed by up to 150 MB, more than the 10% to be resolved. The workers therefore run
with ``--malloc kept`` by default (``MALLOC_MMAP_THRESHOLD_=2**30``, ``MALLOC_TRIM_THRESHOLD_=2**31-1``: freed memory
is kept for reuse, so the peak RSS is the high-water mark of the heap and does not depend on when blocks were
returned); ``--malloc pinned`` returns every large block when it is freed (the peak follows the live memory, at
about half the speed: page faults), ``--malloc default`` leaves glibc alone.

Usage::

    python benchmarks/scaling.py                       # 10k, 20k, 50k, 100k, 200k -> results/scaling_<device>.json
    python benchmarks/scaling.py --quick               # 5k, 10k, 20k
    python benchmarks/scaling.py --sizes 10000,200000 --preset 3M --keep-files /tmp/cells
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    PBMC3K,
    RESULTS,
    Clock,
    loadavg,
    machine_info,
    peak_gpu_mb,
    quiet_libraries,
    reset_peak_gpu,
    reset_peak_rss,
    resolve_device,
    run_worker,
    status_mb,
    trim_heap,
    write_json,
)

#: The default encoder: small, so that the data path, not the transformer, is what is measured.
SMALL = {
    "preset": "3M",
    "encoder_layers": 1,
    "encoder_dim": 32,
    "encoder_heads": 2,
    "encoder_ff": 64,
    "decoder_layers": 1,
    "decoder_dim": 16,
    "decoder_heads": 1,
    "decoder_ff": 16,
    "max_encoder_length": 128,
    "n_bins": 10,
}
MODEL_CONFIGS = {"small": SMALL, "3M": {"preset": "3M"}, "10M": {"preset": "10M"}}
#: Allocator settings of the workers (see the module docstring).
MALLOC_ENV = {
    "kept": {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)},
    "pinned": {"MALLOC_MMAP_THRESHOLD_": str(128 * 1024)},
    "default": {},
}


# ----------------------------------------------------------------------------- data
def write_replicated(path: Path, n_cells: int, chunk_cells: int | None = None) -> dict:
    """Write ``n_cells`` pbmc3k cells (the 2,638 cells repeated) to a backed-readable ``.h5ad`` in chunks."""
    import anndata as ad
    import h5py
    import pandas as pd
    from anndata.io import sparse_dataset, write_elem
    from scipy import sparse

    base = ad.read_h5ad(PBMC3K)
    x = sparse.csr_matrix(base.X, dtype=np.float32)
    n_base = x.shape[0]
    chunk_cells = chunk_cells or n_base
    obs = pd.DataFrame(
        {"source_cell": pd.Categorical(np.asarray(base.obs_names)[np.arange(n_cells) % n_base])},
        index=pd.Index([f"cell{i}" for i in range(n_cells)]),
    )
    var = pd.DataFrame(index=base.var_names.copy())
    clock = time.perf_counter()
    with h5py.File(path, "w") as f:
        f.attrs["encoding-type"] = "anndata"
        f.attrs["encoding-version"] = "0.1.0"
        write_elem(f, "obs", obs)
        write_elem(f, "var", var)
        for key in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
            write_elem(f, key, {})
        start = 0
        x_ds = None
        while start < n_cells:
            stop = min(start + chunk_cells, n_cells)
            rows = np.arange(start, stop) % n_base
            block = x[rows]
            if x_ds is None:
                write_elem(f, "X", block)
                x_ds = sparse_dataset(f["X"])
            else:
                x_ds.append(block)
            start = stop
    return {"n_cells": n_cells, "seconds": time.perf_counter() - clock, "bytes": path.stat().st_size}


# ----------------------------------------------------------------------------- worker
def worker(args: dict) -> dict:
    import torch

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    quiet_libraries()
    import anndata as ad

    from cellformers.model import XTrimoGene

    device = args["device"]
    rss_start = status_mb("VmRSS")
    clock = Clock(device)
    adata = ad.read_h5ad(args["path"], backed="r")
    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(adata, **MODEL_CONFIGS[args["model"]])
    model.to_device("cuda:0" if device == "cuda" else "cpu")
    model.is_trained_ = True  # untrained weights: the compute does not depend on them
    setup_wall, setup_cpu = clock.read()
    setup_peak = status_mb("VmHWM")
    trim_heap()
    reset_peak_rss()
    reset_peak_gpu(device)
    rss_before = status_mb("VmRSS")
    prec = None if args["precision"] == "fp32" else "bf16"
    clock = Clock(device)
    z = model.get_latent_representation(batch_size=args["batch_size"], precision=prec)
    wall, cpu = clock.read()
    return {
        "n_cells": int(adata.n_obs),
        "backed": bool(adata.isbacked),
        "setup_seconds": setup_wall,
        "setup_cpu_seconds": setup_cpu,
        "setup_peak_rss_mb": setup_peak,
        "rss_at_start_mb": rss_start,
        "rss_before_embedding_mb": rss_before,
        "embed_seconds": wall,
        "embed_cpu_seconds": cpu,
        "cells_per_s": adata.n_obs / wall,
        "cells_per_cpu_s": adata.n_obs / cpu if cpu > 0 else None,
        "embed_peak_rss_mb": status_mb("VmHWM"),
        "embed_peak_gpu_mb": peak_gpu_mb(device),
        "output_mb": z.nbytes / 2**20,
        "embedding_dim": int(z.shape[1]),
        "finite": bool(np.isfinite(z).all()),
        "first_rows_equal_across_replicas": bool(np.allclose(z[0], z[2638], atol=1e-4)) if z.shape[0] > 2638 else None,
        "loadavg_end": loadavg(),
    }


# ----------------------------------------------------------------------------- main
def _fit(ns: np.ndarray, ts: np.ndarray) -> dict:
    slope, intercept = np.polyfit(ns, ts, 1)
    pred = slope * ns + intercept
    ss_res = float(((ts - pred) ** 2).sum())
    ss_tot = float(((ts - ts.mean()) ** 2).sum())
    return {
        "seconds_per_1k_cells": float(slope * 1000),
        "intercept_seconds": float(intercept),
        "r2": 1 - ss_res / ss_tot if ss_tot > 0 else 1.0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="'auto' (GPU when available), 'cpu' or 'cuda'")
    p.add_argument("--sizes", default=None, help="comma-separated numbers of cells (default 10k,20k,50k,100k,200k)")
    p.add_argument("--model", choices=list(MODEL_CONFIGS), default="small", help="xTrimoGene configuration")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument(
        "--malloc",
        choices=tuple(MALLOC_ENV),
        default="kept",
        help="glibc allocator of the workers: 'kept' (default) keeps freed memory for reuse, 'pinned' returns every "
        "large block, 'default' is glibc's adaptive behaviour (see the description)",
    )
    p.add_argument("--quick", action="store_true", help="5k, 10k, 20k cells")
    p.add_argument("--keep-files", type=Path, default=None, help="write (and keep) the .h5ad files here")
    p.add_argument("--label", default=None)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_json:
        print(json.dumps(worker(json.loads(args.worker_json)), default=float))
        return

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.sizes:
        sizes = [int(s) for s in args.sizes.split(",")]
    else:
        sizes = [5_000, 10_000, 20_000] if args.quick else [10_000, 20_000, 50_000, 100_000, 200_000]
    t_start = time.time()
    info = machine_info(device)
    print(f"{info['cpu']} ({info['n_cpus']} CPUs); load average {info['loadavg']}", flush=True)
    folder = args.keep_files or Path(tempfile.mkdtemp(prefix="cellformers_scaling_"))
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    try:
        for n in sizes:
            path = folder / f"pbmc3k_x{n}.h5ad"
            written = write_replicated(path, n) if not path.exists() else {"n_cells": n, "reused": True}
            wargs = {
                "path": str(path),
                "model": args.model,
                "batch_size": args.batch_size,
                "precision": args.precision,
                "device": device,
                "threads": args.threads or torch.get_num_threads(),
            }
            res = run_worker(Path(__file__), wargs, env=MALLOC_ENV[args.malloc])
            res["file"] = written
            rows.append(res)
            print(
                f"{n:>8} cells: setup {res['setup_seconds']:6.1f} s, embed {res['embed_seconds']:7.1f} s "
                f"({res['cells_per_s']:.0f} cells/s, {res['cells_per_cpu_s'] or 0:.0f}/CPU-s), embedding peak RSS "
                f"{res['embed_peak_rss_mb']:.0f} MB (output {res['output_mb']:.0f} MB), setup peak "
                f"{res['setup_peak_rss_mb']:.0f} MB",
                flush=True,
            )
            if args.keep_files is None:
                path.unlink()
    finally:
        if args.keep_files is None:
            shutil.rmtree(folder, ignore_errors=True)

    ns = np.array([r["n_cells"] for r in rows], dtype=float)
    peaks = np.array([r["embed_peak_rss_mb"] for r in rows])
    fits = {}
    if len(rows) >= 2:
        fits["wall"] = _fit(ns, np.array([r["embed_seconds"] for r in rows]))
        fits["cpu"] = _fit(ns, np.array([r["embed_cpu_seconds"] for r in rows]))
    growth = float(peaks[-1] / peaks[0] - 1) if len(rows) >= 2 else 0.0
    peaks_wo_output = peaks - np.array([r["output_mb"] for r in rows])
    summary = {
        "embed_peak_rss_growth": growth,
        "embed_peak_rss_growth_without_output": float(peaks_wo_output[-1] / peaks_wo_output[0] - 1)
        if len(rows) >= 2
        else 0.0,
        "memory_flat_within_10_percent": bool(abs(growth) <= 0.10),
        "time_fit": fits,
    }
    head = f"{'cells':>8}{'setup s':>9}{'embed s':>9}{'cells/s':>9}{'cells/CPU-s':>12}{'peak MB':>9}{'output MB':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(
            f"{r['n_cells']:>8}{r['setup_seconds']:>9.1f}{r['embed_seconds']:>9.1f}{r['cells_per_s']:>9.0f}"
            f"{r['cells_per_cpu_s'] or 0:>12.0f}{r['embed_peak_rss_mb']:>9.0f}{r['output_mb']:>10.1f}"
        )
    table = "\n".join(lines)
    print(table)
    if fits:
        print(
            f"time: {fits['wall']['seconds_per_1k_cells']:.2f} s per 1k cells (R² {fits['wall']['r2']:.4f}; "
            f"CPU time R² {fits['cpu']['r2']:.4f}); embedding peak RSS {growth:+.1%} from {int(ns[0])} to "
            f"{int(ns[-1])} cells ({summary['embed_peak_rss_growth_without_output']:+.1%} without the output)"
        )
    out = {
        "description": "embedding time and peak RSS vs number of cells, replicated pbmc3k cells in backed .h5ad files",
        "label": args.label,
        "model": {"class": "XTrimoGene", "config": args.model, "kwargs": MODEL_CONFIGS[args.model]},
        "batch_size": args.batch_size,
        "precision": args.precision,
        "malloc": args.malloc,
        "malloc_env": MALLOC_ENV[args.malloc],
        "machine": info,
        "rows": rows,
        "summary": summary,
        "table": table,
        "loadavg_end": loadavg(),
        "wall_seconds": time.time() - t_start,
    }
    path = args.out or RESULTS / f"scaling_{device}{'_quick' if args.quick and args.out is None else ''}.json"
    write_json(path, out)
    print(f"wrote {path} in {out['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
