"""Helpers shared by the performance benchmarks (``throughput.py``, ``scaling.py``, ``xtrimogene_efficiency.py``).

* memory: current and peak resident set size of this process (``VmRSS`` / ``VmHWM``), resetting the peak, and the
  peak GPU memory;
* FLOPs: :class:`torch.utils.flop_counter.FlopCounterMode` with torch's SDPA formulas registered for the CPU
  flash-attention kernels (which the counter does not know);
* the machine's matmul peak (a square-matmul microbenchmark, in FLOP/s per wall second and per CPU second);
* machine details (CPU, GPU, threads, load average) for the JSON results;
* running a worker function in a fresh subprocess and reading its JSON answer.

Timings on a shared machine are noisy. Every timing is taken both as wall-clock time and as the CPU time of this
process (``time.process_time``): with ``torch.set_num_threads(1)`` the CPU time is what the work costs, whatever the
other processes on the machine do, so ratios of CPU times (speed-ups, utilisation) stay meaningful under load.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SHARED = Path(os.environ.get("CELLFORMERS_SHARED", REPO.parent / "shared"))
DATA = SHARED / "data"
PBMC3K = DATA / "pbmc3k_processed.h5ad"
RESULTS = HERE / "results"


# ----------------------------------------------------------------------------- devices
def resolve_device(device: str) -> str:
    """``"auto"`` -> ``"cuda"`` when a GPU is visible, else ``"cpu"``; other values are checked and returned."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        msg = "`--device cuda` was asked for, but torch sees no GPU; use `--device auto` or `--device cpu`."
        raise SystemExit(msg)
    if device not in ("cpu", "cuda"):
        msg = f"`--device` must be 'auto', 'cpu' or 'cuda', got {device!r}."
        raise SystemExit(msg)
    return device


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()


class Clock:
    """Wall-clock and process CPU time since construction (GPU work synchronised first)."""

    def __init__(self, device: str = "cpu"):
        self.device = device
        synchronize(device)
        self.wall0 = time.perf_counter()
        self.cpu0 = time.process_time()

    def read(self) -> tuple[float, float]:
        """``(wall seconds, CPU seconds)`` elapsed."""
        synchronize(self.device)
        return time.perf_counter() - self.wall0, time.process_time() - self.cpu0


# ----------------------------------------------------------------------------- memory
def status_mb(field: str) -> float:
    """``VmRSS`` (current) or ``VmHWM`` (peak) resident memory of this process in MB, from ``/proc/self/status``.

    ``VmHWM`` belongs to the address space, which ``exec`` replaces, so unlike ``ru_maxrss`` (kept across ``exec``
    on Linux) it does not inherit the parent's peak. Where ``/proc`` is missing (macOS), ``ru_maxrss`` stands in for
    the peak.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    if field == "VmHWM":
        scale = 1 / (1024 * 1024) if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale
    return float("nan")


def trim_heap() -> None:
    """Give freed heap memory back to the OS (glibc ``malloc_trim``), so the next peak starts from what is in use."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``); ``False`` if unsupported."""
    trim_heap()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def reset_peak_gpu(device: str) -> None:
    """Reset the CUDA allocator's peak statistics (no-op on CPU)."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak_gpu_mb(device: str) -> float | None:
    """Peak memory allocated by tensors on the GPU since the last reset, in MB (``None`` on CPU)."""
    if device != "cuda":
        return None
    return torch.cuda.max_memory_allocated() / 2**20


# ----------------------------------------------------------------------------- FLOPs
def cpu_sdpa_formulas() -> dict:
    """FLOP formulas for the CPU flash-attention kernels, which ``FlopCounterMode`` does not register.

    They are torch's own SDPA formulas (``4 · b · h · s_q · s_k · d`` forward, 2.5x that backward).
    """
    from torch.utils.flop_counter import sdpa_backward_flop_count, sdpa_flop_count

    aten = torch.ops.aten

    # arguments arrive as shapes (FlopCounterMode converts tensors)
    def fwd(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)

    def bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_backward_flop_count(grad_out, query, key, value)

    mapping = {}
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu] = fwd
    if hasattr(aten, "_scaled_dot_product_flash_attention_for_cpu_backward"):
        mapping[aten._scaled_dot_product_flash_attention_for_cpu_backward] = bwd
    return mapping


def flop_counter():
    """A silent :class:`~torch.utils.flop_counter.FlopCounterMode` that also counts the CPU attention kernels."""
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False, custom_mapping=cpu_sdpa_formulas())


def flop_summary(mode) -> dict:
    """Total FLOPs and FLOPs per aten op of a finished :func:`flop_counter`."""
    by_op = {str(k): int(v) for k, v in mode.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(mode.get_total_flops()), "flops_by_op": by_op}


# ----------------------------------------------------------------------------- matmul peak
def matmul_peak(device: str, dtype: torch.dtype, size: int | None = None, seconds: float = 1.5) -> dict:
    """Measured FLOP/s of a square ``size x size`` matmul in ``dtype`` (the machine's practical matmul peak).

    The best of three timing windows of about ``seconds / 3`` each, after one warm-up product. On the CPU the rate
    is given per wall second and per CPU second of this process.
    """
    if size is None:
        size = 8192 if device == "cuda" else 2048
    gen = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(size, size, generator=gen).to(device=device, dtype=dtype)
    flops = 2 * size**3
    torch.matmul(a, b)
    reps = 10 if device == "cuda" else 1  # synchronise every few products on a GPU
    best_wall, best_cpu = float("inf"), float("inf")
    for _ in range(3):
        clock = Clock(device)
        n = 0
        while True:
            for _ in range(reps):
                torch.matmul(a, b)
            n += reps
            wall, cpu = clock.read()
            if wall >= seconds / 3:
                break
        best_wall = min(best_wall, wall / n)
        best_cpu = min(best_cpu, cpu / n)
    out = {"size": size, "dtype": str(dtype).removeprefix("torch."), "flops_per_s": flops / best_wall}
    if device == "cpu":
        out["flops_per_cpu_s"] = flops / best_cpu
    return out


def matmul_peaks(device: str, seconds: float = 1.5, precisions: tuple[str, ...] = ("fp32", "bf16")) -> dict:
    """:func:`matmul_peak` for each of ``precisions`` (``"fp32"``, ``"bf16"``; TF32 stays off on GPUs, as in the
    models' float32 runs). Measure only those a run uses: without bf16 units one bfloat16 matmul of the probe size
    takes about a minute (0.3 GFLOP/s on an AVX2-only AMD EPYC)."""
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    return {name: matmul_peak(device, dtypes[name], seconds=seconds) for name in precisions}


# ----------------------------------------------------------------------------- machine details
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile", "fma")
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in wanted if f in flags]
    except OSError:
        pass
    return []


def _mem_total_gb() -> float | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return None


def machine_info(device: str) -> dict:
    """CPU, memory, GPU, library versions, torch threads and the current load average."""
    from importlib.metadata import PackageNotFoundError, version

    def _version(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "?"

    info = {
        "device": device,
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "n_cpus": os.cpu_count(),
        "memory_gb": _mem_total_gb(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "scvi_tools": _version("scvi-tools"),
        "anndata": _version("anndata"),
        "cellformers": _version("cellformers"),
        "loadavg": loadavg(),
    }
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        info["gpu"] = props.name
        info["gpu_memory_gb"] = props.total_memory / 2**30
        info["cuda"] = torch.version.cuda
        info["sdpa_flash"] = torch.backends.cuda.flash_sdp_enabled()
    return info


def loadavg() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where unavailable)."""
    return list(os.getloadavg()) if hasattr(os, "getloadavg") else None


# ----------------------------------------------------------------------------- subprocess workers
def code_trees(before_src: Path | None, current: str = "installed") -> list[tuple[str, dict]]:
    """``[(name, environment)]`` of the code each measurement runs on: ``before_src`` (a ``src`` directory, put on
    ``PYTHONPATH`` of the worker) as ``"before"``, then the installed code as ``current``."""
    trees = [(current, {})]
    if before_src is not None:
        if not (before_src / "cellformers" / "__init__.py").is_file():
            raise SystemExit(f"--before-src {before_src} has no cellformers package (expected DIR/cellformers)")
        trees.insert(0, ("before", {"PYTHONPATH": str(before_src.resolve())}))
    return trees


def run_worker(script: Path, args: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    """Run ``python script --worker-json ARGS`` in a fresh process and return the JSON on its last stdout line.

    A fresh process per measurement keeps peak memory per measurement. On failure the worker's stderr is raised.
    """
    cmd = [sys.executable, str(script), "--worker-json", json.dumps(args)]
    full_env = {**os.environ, **(env or {})}
    res = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout, check=False)
    if res.returncode != 0:
        msg = f"worker {args} failed (exit {res.returncode}):\n{res.stderr[-4000:]}"
        raise RuntimeError(msg)
    lines = [line for line in res.stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        msg = f"worker {args} printed no JSON:\n{res.stdout[-2000:]}\n{res.stderr[-2000:]}"
        raise RuntimeError(msg)
    return json.loads(lines[-1])


def quiet_libraries() -> None:
    """Silence progress bars and the chattiest warnings of Lightning / scvi-tools in worker processes."""
    import logging
    import warnings

    warnings.filterwarnings("ignore")
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "cellformers"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with contextlib.suppress(Exception):
        import scvi

        scvi.settings.progress_bar_style = "tqdm"
        scvi.settings.verbosity = logging.ERROR
    with contextlib.suppress(Exception):
        import cellformers

        cellformers.settings.progress_bar = False


def write_json(path: Path, obj: dict) -> None:
    """Write ``obj`` as indented JSON (creating the folder)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, default=float) + "\n")


# ----------------------------------------------------------------------------- seeds
def mean_sd(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value) of a sequence of numbers."""
    import numpy as np

    v = np.asarray(list(values), dtype=float)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0


def seed_tables(tables: list[dict]) -> tuple[dict, dict]:
    """Mean and sd over seeds of benchmark tables (``{embedding: {metric: value}}``, one per seed).

    A row missing from some seeds is averaged over the seeds that have it; ``n_seeds`` in the mean table says how
    many.
    """
    rows = sorted({k for t in tables for k in t})
    mean, sd = {}, {}
    for row in rows:
        present = [t[row] for t in tables if row in t]
        mean[row], sd[row] = {}, {}
        for col in present[0]:
            mean[row][col], sd[row][col] = mean_sd(p[col] for p in present)
        mean[row]["n_seeds"] = len(present)
    return mean, sd
