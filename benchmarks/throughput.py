"""Training and embedding throughput of every model and preset on real cells, float32 vs bf16 autocast.

Data: ``../shared/data/pbmc3k_processed.h5ad`` (2,638 PBMCs, raw counts of 13,714 genes). xTrimoGene and scPaLM read
all 13,714 genes (vocabulary built from the data); scFormer reads the tutorial's 1,838 highly variable genes, every
one a token of every cell (the paper's input, section 4.1).

Models and presets: xTrimoGene ``3M``, ``10M``, ``100M`` (App. Table 2); scFormer ``paper`` (4 x 128, section 5) and
``10M`` (12 x 256, 8 heads, feed-forward 1,024: about 10M parameters); scPaLM ``small`` and ``paper`` (Table 2).
``xtrimogene-10M-19264`` is the memory case: the cells aligned to scFoundation's 19,264 genes (the decoder runs over
all of them), batch size 32, ``decoder_chunk_size=4``; it is not part of the default run (one step takes minutes).

``--before-src DIR`` measures every (config, precision) twice in the same run, alternately: on the code tree whose
``src`` directory is ``DIR`` (``PYTHONPATH``; e.g. ``git worktree add /tmp/before <commit>``) and on the installed
code, and adds the before/after table (CPU-time rates) to the JSON.

For each (model, preset, precision), in a fresh worker process (so that peak memory is per measurement):

* **embedding**: ``get_latent_representation`` on a random subset of cells sized to take about
  ``--embed-seconds`` (after one warm-up minibatch), in cells/s; peak RSS (``VmHWM``) and its increase over the
  memory held before, and the peak GPU memory;
* **training**: ``model.train(...)`` through scvi-tools and Lightning (``precision="32-true"`` or ``"bf16-mixed"``,
  no validation set). A callback times every optimiser step (forward, backward, AdamW) from
  ``on_train_batch_start`` to ``on_train_batch_end``, and the data-loading gap between steps; the first step is
  a warm-up and is run under :class:`torch.utils.flop_counter.FlopCounterMode`, which gives the FLOPs per cell of
  a step (matmuls and attention, as the FLOP counter counts). Steps run until ``--train-seconds`` have passed
  (at least ``--min-steps``). scPaLM trains stage 1 and then stage 2 (both reported).

The machine's matmul peak (square 2,048 x 2,048 matmul on CPU, 8,192 on GPU) is measured in the same run, in
float32 and bfloat16; **MFU** is the achieved FLOP/s of the training step over the peak of its precision.

Every time is taken as wall-clock time and as the CPU time of the worker (``time.process_time``). On a machine shared
with other work the wall times (and the wall-clock MFU) are inflated by waiting for a core; with ``--threads 1`` the
CPU-time figures (``*_cpu``) are what the work costs and stay comparable. On a quiet machine both agree.

Usage::

    python benchmarks/throughput.py                      # every model and preset -> results/throughput_<device>.json
    python benchmarks/throughput.py --quick              # smallest presets, short budgets (about a minute)
    python benchmarks/throughput.py --threads 1 --configs xtrimogene-10M,scformer-10M --precisions bf16
    python benchmarks/throughput.py --baseline results/throughput_cpu_before.json   # adds a before/after table
    python benchmarks/throughput.py --before-src /tmp/before/src   # each config also on that code tree, same run
    python benchmarks/throughput.py --configs xtrimogene-10M-19264 --precisions fp32 --no-embedding --min-steps 1
    python benchmarks/throughput.py --configs xtrimogene-10M-19264 --precisions fp32 --no-embedding --huge-pages
    python benchmarks/throughput.py --device cuda --compile   # optional torch.compile of the training module
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    DATA,
    PBMC3K,
    RESULTS,
    Clock,
    code_trees,
    flop_counter,
    flop_summary,
    loadavg,
    machine_info,
    matmul_peaks,
    peak_gpu_mb,
    quiet_libraries,
    reset_peak_gpu,
    reset_peak_rss,
    resolve_device,
    run_worker,
    status_mb,
    write_json,
)

#: One entry per (model, preset): the model class, its arguments, the genes it reads (``"all"`` or the ``"hvg"``
#: subset) and the training minibatch size (chosen so that a step takes seconds, not minutes, on a laptop CPU).
CONFIGS: dict[str, dict] = {
    "xtrimogene-3M": {"model": "XTrimoGene", "kwargs": {"preset": "3M"}, "genes": "all", "train_batch": 8},
    "xtrimogene-10M": {"model": "XTrimoGene", "kwargs": {"preset": "10M"}, "genes": "all", "train_batch": 4},
    "xtrimogene-100M": {"model": "XTrimoGene", "kwargs": {"preset": "100M"}, "genes": "all", "train_batch": 1},
    "scformer-paper": {"model": "ScFormer", "kwargs": {}, "genes": "hvg", "train_batch": 16},
    "scformer-10M": {
        "model": "ScFormer",
        "kwargs": {"d_model": 256, "n_layers": 12, "n_heads": 8, "d_ff": 1024},
        "genes": "hvg",
        "train_batch": 4,
    },
    "scpalm-small": {"model": "ScPaLM", "kwargs": {"preset": "small"}, "genes": "all", "train_batch": 64},
    "scpalm-paper": {"model": "ScPaLM", "kwargs": {"preset": "paper"}, "genes": "all", "train_batch": 32},
    # the memory case of the performance issue: 19,264 decoder genes at batch 32 within 24 GiB
    "xtrimogene-10M-19264": {
        "model": "XTrimoGene",
        "kwargs": {"preset": "10M", "decoder_chunk_size": 4},
        "genes": "scfoundation",
        "train_batch": 32,
        "embed": False,
        "before": False,  # the code before decoder_chunk_size: batch 32 needs ~48 GB (1.5 GB per cell measured)
        # FlopCounterMode keeps what the checkpointed chunks would free (the counted step ran out of 24 GiB)
        "count_flops": False,
    },
}
#: The 10M-class preset of each model (the issue's utilisation target).
TEN_M = {"XTrimoGene": "xtrimogene-10M", "ScFormer": "scformer-10M", "ScPaLM": "scpalm-paper"}
QUICK_CONFIGS = ("xtrimogene-3M", "scformer-paper", "scpalm-small")
#: Left out of the default run on a CPU: one 100M training step over 13,714 genes takes minutes there.
GPU_ONLY_CONFIGS = ("xtrimogene-100M",)
#: Run only when named in ``--configs``.
ON_REQUEST_CONFIGS = ("xtrimogene-10M-19264",)
SCFOUNDATION_GENES = DATA / "genes" / "scfoundation_OS_scRNA_gene_index.19264.tsv"
LIGHTNING_PRECISION = {"fp32": "32-true", "bf16": "bf16-mixed"}


# ----------------------------------------------------------------------------- worker
def _load(genes: str):
    import anndata as ad

    adata = ad.read_h5ad(PBMC3K)
    adata.obsm.clear()
    adata.varm.clear()
    adata.uns.clear()
    if genes == "hvg":
        adata = adata[:, adata.var["highly_variable"].to_numpy()].copy()
    elif genes == "scfoundation":
        import pandas as pd

        import cellformers as cf

        names = pd.read_csv(SCFOUNDATION_GENES, sep="\t")["gene_name"].tolist()
        adata = cf.pp.align_to_reference(adata, names)  # absent genes become zero columns
    return adata


def _build(cfg: dict, adata):
    import cellformers.model as cfm

    cls = getattr(cfm, cfg["model"])
    cls.setup_anndata(adata)
    return cls(adata, **cfg["kwargs"])


def _mark_trained(model) -> None:
    """Let the getters run on the untrained weights (the compute does not depend on the values)."""
    model.is_trained_ = True
    stages = getattr(model.module, "trained_stages", None)
    if stages is not None:
        stages[:] = True


def _timed_embedding(
    model, precision: str, device: str, budget: float, n_cells: int | None = None, seed: int = 0
) -> dict:
    prec = "32" if precision == "fp32" else "bf16"  # explicit: None would be "auto", bf16 on a bf16 CPU
    n_obs = model.adata.n_obs
    batch = model._batch_size(None)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n_obs)
    reset_peak_rss()
    reset_peak_gpu(device)
    rss0 = status_mb("VmRSS")
    warm = perm[: min(batch, n_obs)]
    clock = Clock(device)
    model.get_latent_representation(indices=warm, precision=prec)
    wall, _ = clock.read()
    per_cell = wall / len(warm)
    n_batches = max(2, int(budget / max(per_cell * batch, 1e-9)))
    n = int(min(n_obs, n_batches * batch if n_cells is None else n_cells))
    idx = perm[:n]
    clock = Clock(device)
    z = model.get_latent_representation(indices=idx, precision=prec)
    wall, cpu = clock.read()
    return {
        "n_cells": n,
        "batch_size": batch,
        "seconds": wall,
        "cpu_seconds": cpu,
        "cells_per_s": n / wall,
        "cells_per_cpu_s": n / cpu if cpu > 0 else None,
        "embedding_dim": int(z.shape[1]),
        "finite": bool(np.isfinite(z).all()),
        "peak_rss_mb": status_mb("VmHWM"),
        "rss_before_mb": rss0,
        "peak_gpu_mb": peak_gpu_mb(device),
    }


def _step_timer(budget: float, min_steps: int, max_steps: int, device: str, count_flops: bool = True):
    """A Lightning callback timing each optimiser step; the first (warm-up) step counts FLOPs (``count_flops``)."""
    from lightning.pytorch.callbacks import Callback

    class StepTimer(Callback):
        def __init__(self):
            self.steps: list[tuple[float, float]] = []
            self.data_wait: list[float] = []
            self.batch_sizes: list[int] = []
            self.flops: dict | None = None
            self.warmup_cells = 0
            self._mode = None
            self._clock: Clock | None = None
            self._last_end: float | None = None
            self._t0: float | None = None

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.perf_counter()
            if self._last_end is not None:
                self.data_wait.append(now - self._last_end)
            n = int(next(iter(batch.values())).shape[0])
            if self.flops is None and self._mode is None and self._t0 is None:
                self.warmup_cells = n
                self._mode = flop_counter() if count_flops else contextlib.nullcontext()
                self._mode.__enter__()
            else:
                self.batch_sizes.append(n)
            self._clock = Clock(device)

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            wall, cpu = self._clock.read()
            if self._mode is not None:
                self._mode.__exit__(None, None, None)
                self.flops = flop_summary(self._mode) if count_flops else None
                self._mode = None
                self._t0 = time.perf_counter()
            else:
                self.steps.append((wall, cpu))
            self._last_end = time.perf_counter()
            done_budget = self._t0 is not None and time.perf_counter() - self._t0 >= budget
            if (len(self.steps) >= min_steps and done_budget) or len(self.steps) >= max_steps:
                trainer.should_stop = True

    return StepTimer()


def _timed_training(model, cfg: dict, precision: str, device: str, args: dict, stage: int | None) -> dict:
    batch = int(cfg["train_batch"])
    timer = _step_timer(
        args["train_seconds"],
        args["min_steps"],
        args["max_steps"],
        device,
        # torch.compile does not compile under FlopCounterMode: the (uncounted) warm-up step compiles instead
        count_flops=cfg.get("count_flops", True) and not args.get("compile"),
    )
    plan_kwargs = {}
    if args.get("compile"):
        plan_kwargs = {"compile": True, "compile_kwargs": {"dynamic": True}}
    kwargs = {
        "max_epochs": 1000,
        "max_steps": args["max_steps"] + 1,
        "batch_size": batch,
        "train_size": 1.0,
        "limit_val_batches": 0,
        "precision": LIGHTNING_PRECISION[precision],
        "accelerator": "gpu" if device == "cuda" else "cpu",
        "devices": 1,
        "callbacks": [timer],
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "plan_kwargs": plan_kwargs,
    }
    if stage is not None:
        kwargs["stage"] = stage
    reset_peak_rss()
    reset_peak_gpu(device)
    rss0 = status_mb("VmRSS")
    clock = Clock(device)
    model.train(**kwargs)
    total_wall, _ = clock.read()
    walls = np.array([w for w, _ in timer.steps])
    cpus = np.array([c for _, c in timer.steps])
    cells = np.array(timer.batch_sizes[: len(walls)], dtype=float)
    flops = timer.flops or {"flops": 0, "flops_by_op": {}}
    flops_per_cell = flops["flops"] / max(timer.warmup_cells, 1)
    out = {
        "stage": stage,
        "batch_size": batch,
        "timed_steps": len(walls),
        "step_seconds": float(np.median(walls)) if len(walls) else None,
        "step_cpu_seconds": float(np.median(cpus)) if len(cpus) else None,
        "step_seconds_all": walls.round(4).tolist(),
        "step_cpu_seconds_all": cpus.round(4).tolist(),
        "data_wait_seconds": float(np.median(timer.data_wait)) if timer.data_wait else None,
        "cells_per_s": float(cells.sum() / walls.sum()) if len(walls) else None,
        "cells_per_cpu_s": float(cells.sum() / cpus.sum()) if len(cpus) and cpus.sum() > 0 else None,
        "flops_per_cell": flops_per_cell,
        "flops_by_op_warmup": flops["flops_by_op"],
        "train_call_seconds": total_wall,
        "peak_rss_mb": status_mb("VmHWM"),
        "rss_before_mb": rss0,
        "peak_gpu_mb": peak_gpu_mb(device),
    }
    if out["cells_per_s"]:
        out["achieved_flops_per_s"] = flops_per_cell * out["cells_per_s"]
    if out["cells_per_cpu_s"]:
        out["achieved_flops_per_cpu_s"] = flops_per_cell * out["cells_per_cpu_s"]
    return out


def _huge_pages() -> bool | None:
    """Whether PyTorch gives this worker's large tensors transparent huge pages (``THP_MEM_ALLOC_ENABLE=1`` in the
    environment of the run); ``None`` for code from before cellformers could tell."""
    try:
        from cellformers._utils._heap import huge_pages_active
    except ImportError:
        return None
    return huge_pages_active()


def worker(args: dict) -> dict:
    import torch

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    quiet_libraries()
    import scvi

    scvi.settings.seed = 0
    cfg = dict(CONFIGS[args["config"]])
    cfg["kwargs"] = {**cfg["kwargs"], **args.get("model_kwargs", {})}
    device, precision = args["device"], args["precision"]
    adata = _load(cfg["genes"])
    model = _build(cfg, adata)
    n_params = sum(p.numel() for p in model.module.parameters())
    model.to_device("cuda:0" if device == "cuda" else "cpu")
    import cellformers

    res = {
        "config": args["config"],
        "code": args.get("code", "installed"),
        "cellformers_path": str(Path(cellformers.__file__).parent),
        "model": cfg["model"],
        "model_kwargs": cfg["kwargs"],
        "precision": precision,
        "params": int(n_params),
        "n_cells": int(adata.n_obs),
        "n_genes": int(adata.n_vars),
        "torch_threads": torch.get_num_threads(),
        "huge_pages": _huge_pages(),
        "thp_mem_alloc_enable": os.environ.get("THP_MEM_ALLOC_ENABLE"),
    }
    if not args.get("skip_embedding") and cfg.get("embed", True):
        _mark_trained(model)
        res["embedding"] = _timed_embedding(model, precision, device, args["embed_seconds"], args.get("embed_cells"))
        model.is_trained_ = False
    stages = (1, 2) if cfg["model"] == "ScPaLM" else (None,)
    res["training"] = []
    if not args.get("no_train"):
        res["training"] = [_timed_training(model, cfg, precision, device, args, s) for s in stages]
    res["loadavg_end"] = loadavg()
    return res


# ----------------------------------------------------------------------------- report
def _train0(row: dict) -> dict:
    """The (first-stage) training measurement of a result row, ``{}`` when training was not measured."""
    return row["training"][0] if row.get("training") else {}


def _mfu(train: dict, peaks: dict, precision: str) -> dict:
    peak = peaks[precision]
    out = {}
    if train.get("achieved_flops_per_s"):
        out["mfu"] = train["achieved_flops_per_s"] / peak["flops_per_s"]
    if train.get("achieved_flops_per_cpu_s") and peak.get("flops_per_cpu_s"):
        out["mfu_cpu"] = train["achieved_flops_per_cpu_s"] / peak["flops_per_cpu_s"]
    return out


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def _table(rows: list[dict], device: str) -> str:
    head = (
        f"{'config':<17}{'prec':<5}{'params':>8}{'embed c/s':>10}{'embed cpu':>10}{'emb MB':>8}"
        f"{'train c/s':>10}{'train cpu':>10}{'GFLOP/cell':>11}{'MFU':>7}{'MFUcpu':>7}{'train MB':>9}"
    )
    if device == "cuda":
        head += f"{'GPU MB emb':>11}{'GPU MB trn':>11}"
    lines = [head, "-" * len(head)]
    for r in rows:
        e, t = r.get("embedding") or {}, _train0(r)
        label = r["config"] + (" (before)" if r.get("code") == "before" else "")
        line = (
            f"{label:<17}{r['precision']:<5}{r['params'] / 1e6:>7.1f}M"
            f"{_fmt(e.get('cells_per_s'), '.1f'):>10}{_fmt(e.get('cells_per_cpu_s'), '.1f'):>10}"
            f"{_fmt(e.get('peak_rss_mb'), '.0f'):>8}"
            f"{_fmt(t.get('cells_per_s'), '.2f'):>10}{_fmt(t.get('cells_per_cpu_s'), '.2f'):>10}"
            f"{_fmt(t['flops_per_cell'] / 1e9 if t else None, '.1f'):>11}"
            f"{_fmt(t.get('mfu'), '.1%'):>7}{_fmt(t.get('mfu_cpu'), '.1%'):>7}"
            f"{_fmt(max((x['peak_rss_mb'] for x in r['training']), default=None), '.0f'):>9}"
        )
        if device == "cuda":
            line += f"{_fmt(e.get('peak_gpu_mb'), '.0f'):>11}{_fmt(t.get('peak_gpu_mb'), '.0f'):>11}"
        lines.append(line)
        for extra in r["training"][1:]:
            lines.append(
                f"{'  stage ' + str(extra['stage']):<22}{'':>8}{'':>10}{'':>10}{'':>8}"
                f"{_fmt(extra.get('cells_per_s'), '.2f'):>10}{_fmt(extra.get('cells_per_cpu_s'), '.2f'):>10}"
                f"{extra['flops_per_cell'] / 1e9:>11.1f}{_fmt(extra.get('mfu'), '.1%'):>7}"
                f"{_fmt(extra.get('mfu_cpu'), '.1%'):>7}"
            )
    return "\n".join(lines)


def _compare(rows: list[dict], baseline: dict) -> tuple[list[dict], str]:
    """Before/after rows against an earlier results file (CPU-time rates, robust to machine load)."""
    base = {(r["config"], r["precision"]): r for r in baseline.get("rows", [])}
    out = []
    for r in rows:
        b = base.get((r["config"], r["precision"]))
        if b is None:
            continue
        item = {"config": r["config"], "precision": r["precision"]}
        for what, get in (
            ("embed", lambda x: (x.get("embedding") or {}).get("cells_per_cpu_s")),
            ("train", lambda x: _train0(x).get("cells_per_cpu_s")),
            ("embed_wall", lambda x: (x.get("embedding") or {}).get("cells_per_s")),
            ("train_wall", lambda x: _train0(x).get("cells_per_s")),
        ):
            before, after = get(b), get(r)
            item[f"{what}_before"], item[f"{what}_after"] = before, after
            item[f"{what}_speedup"] = after / before if before and after else None
        item["embed_peak_rss_before"] = (b.get("embedding") or {}).get("peak_rss_mb")
        item["embed_peak_rss_after"] = (r.get("embedding") or {}).get("peak_rss_mb")
        out.append(item)
    head = f"{'config':<17}{'prec':<5}{'embed cells/cpu-s':>26}{'train cells/cpu-s':>26}"
    lines = [head, "-" * len(head)]
    for i in out:
        emb = (
            f"{_fmt(i['embed_before'], '.1f')} -> {_fmt(i['embed_after'], '.1f')} ({_fmt(i['embed_speedup'], '.2f')}x)"
        )
        trn = (
            f"{_fmt(i['train_before'], '.2f')} -> {_fmt(i['train_after'], '.2f')} ({_fmt(i['train_speedup'], '.2f')}x)"
        )
        lines.append(f"{i['config']:<17}{i['precision']:<5}{emb:>26}{trn:>26}")
    return out, "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _precisions(spec: str, device: str) -> list[str]:
    """``"auto"``: fp32, and bf16 only where the hardware has bf16 units (emulated bf16 is ~6x slower)."""
    if spec != "auto":
        return spec.split(",")
    from cellformers.train import bf16_hardware

    return ["fp32", "bf16"] if bf16_hardware(device)[0] else ["fp32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="'auto' (GPU when available), 'cpu' or 'cuda'")
    p.add_argument("--configs", default=None, help=f"comma-separated subset of {', '.join(CONFIGS)}")
    p.add_argument(
        "--precisions",
        default="auto",
        help="comma-separated fp32,bf16; auto: fp32, plus bf16 where the hardware has bf16 units",
    )
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's, all cores)")
    p.add_argument("--train-seconds", type=float, default=None, help="timed training per measurement (default 10)")
    p.add_argument("--embed-seconds", type=float, default=None, help="timed embedding per measurement (default 5)")
    p.add_argument(
        "--embed-cells",
        type=int,
        default=None,
        help="embed this many (random) cells instead of what fits in --embed-seconds (all: 2638)",
    )
    p.add_argument("--no-train", action="store_true", help="measure the embedding only")
    p.add_argument("--no-embedding", action="store_true", help="measure training only")
    p.add_argument(
        "--before-src",
        type=Path,
        default=None,
        help="a code tree's src directory: every measurement also runs on it (PYTHONPATH), alternately, same run",
    )
    p.add_argument("--min-steps", type=int, default=None, help="timed training steps at least (default 2)")
    p.add_argument("--max-steps", type=int, default=30)
    p.add_argument(
        "--worker-timeout", type=float, default=1200, help="seconds per (config, precision) before it is skipped"
    )
    p.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_CONFIGS)}, short budgets")
    p.add_argument("--compile", action="store_true", help="torch.compile the module for training (optional)")
    p.add_argument(
        "--model-kwargs",
        type=json.loads,
        default=None,
        help="JSON of extra model arguments for every config, e.g. '{\"gradient_checkpointing\": true}'",
    )
    p.add_argument(
        "--malloc",
        choices=("default", "tuned"),
        default="default",
        help="'tuned': glibc keeps freed memory for reuse (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_), "
        "which saves the kernel time of page faults on every large CPU tensor",
    )
    p.add_argument(
        "--huge-pages",
        action="store_true",
        help="THP_MEM_ALLOC_ENABLE=1 for the workers: PyTorch asks for transparent huge pages for tensors of 2 MB or "
        "more (each worker records whether it got them)",
    )
    p.add_argument("--baseline", type=Path, default=None, help="earlier results JSON: add a before/after table")
    p.add_argument("--label", default=None, help="free text stored in the JSON (e.g. the code state measured)")
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
    if args.configs:
        names = args.configs.split(",")
    elif args.quick:
        names = list(QUICK_CONFIGS)
    else:
        names = [n for n in CONFIGS if (device == "cuda" or n not in GPU_ONLY_CONFIGS) and n not in ON_REQUEST_CONFIGS]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        raise SystemExit(f"unknown configs {unknown}; choose from {list(CONFIGS)}")
    precisions = _precisions(args.precisions, device)
    budgets = {
        "train_seconds": args.train_seconds if args.train_seconds is not None else (3.0 if args.quick else 10.0),
        "embed_seconds": args.embed_seconds if args.embed_seconds is not None else (2.0 if args.quick else 5.0),
        "min_steps": args.min_steps if args.min_steps is not None else (1 if args.quick else 2),
        "max_steps": args.max_steps,
    }
    env = {}
    if args.malloc == "tuned":
        env = {"MALLOC_MMAP_THRESHOLD_": str(2**30), "MALLOC_TRIM_THRESHOLD_": str(2**31 - 1)}
    if args.huge_pages:
        env["THP_MEM_ALLOC_ENABLE"] = "1"
    t_start = time.time()
    info = machine_info(device)
    peaks = matmul_peaks(device, precisions=tuple(precisions))
    print(
        f"{info['cpu']} ({info['n_cpus']} CPUs, {info['torch_threads']} torch threads)"
        + (f", {info.get('gpu')}" if device == "cuda" else "")
        + f"; load average {info['loadavg']}",
        flush=True,
    )
    for k, v in peaks.items():
        extra = f", {v['flops_per_cpu_s'] / 1e9:.0f} per CPU-s" if "flops_per_cpu_s" in v else ""
        print(f"matmul peak {k}: {v['flops_per_s'] / 1e9:.0f} GFLOP/s{extra}", flush=True)

    codes = code_trees(args.before_src)
    rows, failed = [], []
    for name, prec, (code, code_env) in ((n, p, c) for n in names for p in precisions for c in codes):
        if code == "before" and CONFIGS[name].get("before", True) is False:
            continue
        wargs = {
            "config": name,
            "precision": prec,
            "code": code,
            "device": device,
            "threads": args.threads or torch.get_num_threads(),
            "compile": args.compile,
            "model_kwargs": args.model_kwargs or {},
            "embed_cells": args.embed_cells,
            "no_train": args.no_train,
            "skip_embedding": args.no_embedding,
            **budgets,
        }
        t0 = time.time()
        try:
            res = run_worker(Path(__file__), wargs, env={**env, **code_env}, timeout=args.worker_timeout)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            # one configuration that fails or runs too long must not lose the others' measurements
            failed.append({"config": name, "precision": prec, "code": code, "error": str(err)[-2000:]})
            print(f"{name} {prec} ({code}): not measured ({type(err).__name__})", flush=True)
            continue
        res["worker_seconds"] = time.time() - t0
        for tr in res["training"]:
            tr.update(_mfu(tr, peaks, prec))
        rows.append(res)
        e, t = res.get("embedding") or {}, _train0(res)
        print(
            f"{name} {prec} ({code}): embed {_fmt(e.get('cells_per_s'), '.1f')} cells/s "
            f"({_fmt(e.get('cells_per_cpu_s'), '.1f')}/CPU-s), train {_fmt(t.get('cells_per_s'), '.2f')} cells/s "
            f"({_fmt(t.get('cells_per_cpu_s'), '.2f')}/CPU-s), MFU {_fmt(t.get('mfu'), '.1%')} "
            f"(CPU-time {_fmt(t.get('mfu_cpu'), '.1%')}), {res['worker_seconds']:.0f} s",
            flush=True,
        )
    table = _table(rows, device)
    print(table)
    targets = {}
    for model_name, cfg_name in TEN_M.items():
        r = next(
            (x for x in rows if x["config"] == cfg_name and x["precision"] == "bf16" and x.get("code") != "before"),
            None,
        )
        if r is not None:
            t = _train0(r)
            if not t:
                continue
            targets[model_name] = {
                "config": cfg_name,
                "mfu_bf16": t.get("mfu"),
                "mfu_bf16_cpu_time": t.get("mfu_cpu"),
                "meets_25_percent": bool((t.get("mfu_cpu") or t.get("mfu") or 0) >= 0.25),
            }
    out = {
        "description": "training and embedding throughput per model and preset on pbmc3k, fp32 vs bf16 autocast",
        "label": args.label,
        "data": str(PBMC3K.name),
        "machine": info,
        "matmul_peak": peaks,
        "budgets": budgets,
        "malloc": args.malloc,
        "huge_pages_requested": args.huge_pages,
        "compile": args.compile,
        "model_kwargs": args.model_kwargs,
        "rows": rows,
        "not_measured": failed,
        "ten_m_targets": targets,
        "table": table,
        "loadavg_end": loadavg(),
        "wall_seconds": time.time() - t_start,
        "notes": [
            "cells/s: wall clock; cells/CPU-s: per CPU second of the worker process (robust to other load when "
            "threads=1). MFU: FLOPs per cell of the warm-up step (FlopCounterMode: matmuls and attention) times "
            "cells/s, over the matmul peak of the same precision measured in this run (mfu: wall, mfu_cpu: CPU time).",
            "Embedding uses untrained weights (the compute does not depend on them); peak RSS is VmHWM of the "
            "worker, reset (clear_refs) before each phase; the worker's RSS before the phase is rss_before_mb.",
        ],
    }
    if args.before_src is not None:
        after = [r for r in rows if r.get("code") != "before"]
        comparison, ctable = _compare(after, {"rows": [r for r in rows if r.get("code") == "before"]})
        out["comparison"] = {"baseline": f"--before-src {args.before_src}", "rows": comparison, "table": ctable}
        print(ctable)
    elif args.baseline is not None:
        baseline = json.loads(args.baseline.read_text())
        comparison, ctable = _compare(rows, baseline)
        out["comparison"] = {
            "baseline": str(args.baseline),
            "baseline_label": baseline.get("label"),
            "rows": comparison,
        }
        out["comparison"]["table"] = ctable
        print(ctable)
    suffix = "_quick" if args.quick and args.out is None else ""
    path = args.out or RESULTS / f"throughput_{device}{suffix}.json"
    write_json(path, out)
    print(f"wrote {path} in {out['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
