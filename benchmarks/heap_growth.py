"""Resident memory over a long training run, with and without freed memory kept for reuse.

``cf.settings.reuse_freed_memory`` keeps freed blocks in glibc's heap while ``train`` runs. Minibatches of different
lengths fragment that heap, and without a bound the process grew by about 90 MB a step; the step boundaries trim it
once it is 1.25x above its size after the last trim (``cellformers._utils._heap.release_fragmented_heap``). This
script trains XTrimoGene-10M on random pbmc3k cells (all 13,714 genes, batch 4, one epoch of ``--steps`` steps,
float32) in a fresh process per setting, alternately, and records after every step the resident memory (``VmRSS``)
and the step time.

Usage::

    python benchmarks/heap_growth.py                 # 50 steps, reuse on and off -> results/heap_growth_cpu.json
    python benchmarks/heap_growth.py --steps 10 --out /tmp/heap.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, machine_info, quiet_libraries, run_worker, status_mb, write_json

BATCH_SIZE = 4


def _resident_mb() -> float:
    return status_mb("VmRSS")


def worker(args: dict) -> dict:
    """Train ``args["steps"]`` steps with reuse on or off; resident memory and time after every step."""
    import numpy as np
    import torch
    from lightning.pytorch.callbacks import Callback

    quiet_libraries()
    from throughput import CONFIGS, _build, _load

    import cellformers as cf

    cf.settings.reuse_freed_memory = bool(args["reuse"])
    cfg = CONFIGS[args["config"]]
    adata = _load(cfg["genes"])
    cells = np.random.default_rng(1).permutation(adata.n_obs)[: BATCH_SIZE * int(args["steps"])]
    adata = adata[np.sort(cells)].copy()
    model = _build(cfg, adata)
    torch.set_num_threads(int(args["threads"]))  # scanpy/numba imports may have reset it

    class Record(Callback):
        def __init__(self) -> None:
            self.rss_mb: list[float] = []
            self.step_s: list[float] = []
            self._t0 = 0.0

        def on_train_batch_start(self, *_) -> None:
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, *_) -> None:
            self.step_s.append(time.perf_counter() - self._t0)
            self.rss_mb.append(_resident_mb())

    record = Record()
    model.train(
        max_epochs=1,
        batch_size=BATCH_SIZE,
        train_size=1.0,
        precision="32",
        callbacks=[record],
        enable_progress_bar=False,
    )
    return {
        "config": args["config"],
        "reuse_freed_memory": bool(args["reuse"]),
        "steps": len(record.rss_mb),
        "rss_mb": record.rss_mb,
        "step_s": record.step_s,
        "rss_after_train_mb": _resident_mb(),
    }


def _summary(run: dict) -> dict:
    rss, steps = run["rss_mb"], run["step_s"]
    half = len(rss) // 2
    return {
        "reuse_freed_memory": run["reuse_freed_memory"],
        "rss_first_step_mb": rss[0],
        "rss_max_mb": max(rss),
        "rss_last_mb": rss[-1],
        "rss_growth_second_half_mb": rss[-1] - rss[half],
        "median_step_s": sorted(steps[1:])[len(steps[1:]) // 2] if len(steps) > 1 else steps[0],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="xtrimogene-10M", help="a configuration of throughput.py")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=RESULTS / "heap_growth_cpu.json")
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_json:
        print(json.dumps(worker(json.loads(args.worker_json)), default=float))
        return
    info = machine_info("cpu")
    runs = []
    for reuse in (True, False):
        wargs = {"config": args.config, "steps": args.steps, "threads": args.threads, "reuse": reuse}
        run = run_worker(Path(__file__), wargs, timeout=3600)
        runs.append(run)
        s = _summary(run)
        print(
            f"reuse={reuse}: resident {s['rss_first_step_mb']:.0f} MB after step 1, max {s['rss_max_mb']:.0f}, "
            f"last {s['rss_last_mb']:.0f}; median step {s['median_step_s']:.2f} s",
            flush=True,
        )
    write_json(
        args.out,
        {
            "description": "resident memory (VmRSS) after every training step, freed memory kept for reuse or not",
            "machine": info,
            "config": args.config,
            "batch_size": BATCH_SIZE,
            "summary": [_summary(r) for r in runs],
            "per_step": runs,
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
