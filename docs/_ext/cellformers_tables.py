"""Sphinx extension: tables generated when the documentation is built, so they never go stale.

A line ``<!-- cellformers-table: NAME -->`` in a Markdown page is replaced by the table ``NAME`` (see :data:`TABLES`):

- ``benchmarks``: every result file in ``benchmarks/results/*.json``, rendered as tables, with the machine it was
  measured on and the date of the file (its last commit, or its modification time when it is not committed);
- ``benchmarks-summary``: the best model embedding of each benchmark beside the HVG-PCA, scVI and Harmony baselines;
- ``presets-xtrimogene``, ``presets-scformer``, ``presets-scpalm``: parameter counts and weight memory of the
  model presets, computed by building each network on PyTorch's ``meta`` device (no memory is allocated).

An unknown table name, or a table that cannot be built, is a Sphinx warning (so ``-W`` fails the build).

The renderers are plain functions of a results folder or a model name (``python docs/_ext/cellformers_tables.py
benchmarks`` prints a table), so they can be tested and reused outside Sphinx.
"""

from __future__ import annotations

import json
import math
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable
    from sphinx.application import Sphinx

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
MARKER = re.compile(r"^<!--\s*cellformers-table:\s*(?P<name>[\w-]+)\s*-->\s*$", re.MULTILINE)

#: Metric columns in display order; all are "higher is better" (xTrimoGene App. 4, scFormer App. A.1).
METRICS = [
    "ARI",
    "NMI",
    "HOMO",
    "CP",
    "SIL",
    "ARI_cell",
    "NMI_cell",
    "ASW_cell",
    "AvgBIO",
    "ASW_batch",
    "GraphConn",
    "AvgBATCH",
    "Overall",
]
#: Embedding keys of the baselines of :func:`cellformers.tl.baselines`.
BASELINES = {"X_pca_hvg": "HVG-PCA", "X_pca": "PCA", "X_scvi": "scVI", "X_harmony": "Harmony"}
#: Column names whose lowest value is best.
_LOWER_IS_BETTER = re.compile(r"(RMSE|MAE|mse|MSE|seconds|_s$|peak|rss|flops)", re.IGNORECASE)
#: Titles of the known result files (file stem -> title); other files are titled by their stem.
TITLES = {
    "baselines_pbmc3k": "Baselines on pbmc3k",
    "baselines_pancreas": "Baselines on the human pancreas (4 donors)",
    "xtrimogene_efficiency": "xTrimoGene: compute and memory of one training step (App. Table 1)",
    "xtrimogene_pbmc3k": "xTrimoGene trained on pbmc3k",
    "xtrimogene_pbmc3k_seed1": "xTrimoGene trained on pbmc3k (seed 1)",
    "xtrimogene_masked_reference_pbmc3k": "xTrimoGene's masked targets on pbmc3k: reference predictors",
    "xtrimogene_masked_reference_pancreas": "xTrimoGene's masked targets on the human pancreas: reference predictors",
    "scformer_integration_pancreas": "scFormer: batch integration of the human pancreas (4 donors)",
    "scformer_integration_cellbench": "scFormer: batch integration of CellBench (5 protocols/plates)",
    "scformer_perturbation_kang": "scFormer: perturbation prediction on Kang et al. (binned values, paper)",
    "scformer_perturbation_kang_log1p": "scFormer: perturbation prediction on Kang et al. (log1p values, scGPT)",
    "scpalm_pbmc3k": "scPaLM trained on pbmc3k",
    "scpalm_embedding_memory": "scPaLM: memory of the permutation-invariant embedding",
    "annotation": "Cell-type annotation (fine-tuned heads vs LR-on-PCA and kNN-on-scVI) and donor-to-donor transfer",
    "throughput_cpu": "Training and embedding throughput on the CPU (fp32 vs bf16, MFU)",
    "scaling_cpu": "Embedding from 10k to 200k cells read from backed files",
    "xtrimogene_length_scaling": "xTrimoGene: cost against the number of expressed genes, up to bulk",
    "xtrimogene_recipe_pancreas": "xTrimoGene CPU recipe on the human pancreas, over seeds",
    "xtrimogene_recipe_pbmc3k": "xTrimoGene CPU recipe on pbmc3k, over seeds",
    "scformer_targets_pancreas": "scFormer from scratch on the human pancreas: the cell token as the only route to the masked values, tie rules (10 epochs)",
    "scformer_targets_pancreas_30epochs": "scFormer from scratch on the human pancreas: the MVC bottleneck with mid-rank ties, 30 epochs",
    "scformer_cell_token_probe": "scFormer's cell token after training from scratch: linear probes of count statistics and cell type",
    "int8_inference": "Embedding with int8 transformer blocks vs float32 and bf16 (CPU)",
    "throughput_cpu_before_after": "Training and embedding throughput before and after the performance changes (CPU)",
    "profiles_cpu": "Where the time goes: profiler tables of training steps and embedding, before and after (CPU)",
    "training_memory_cpu": "xTrimoGene training-memory estimate by preset and gene count, before and after (CPU)",
    "throughput_cpu_avx2_before_after": "Throughput before and after the performance changes on an AVX2-only CPU (AMD EPYC)",
    "heap_growth_cpu": "Resident memory over 40 training steps of XTrimoGene-10M, freed memory kept for reuse or not (AMD EPYC, AVX2)",
    "throughput_cpu_avx2_before_after_run2": "Throughput before and after on an AVX2-only CPU (AMD EPYC), a second run of the default configuration",
    "throughput_cpu_avx2_before_after_reuse256": "Throughput before and after on an AVX2-only CPU (AMD EPYC), freed blocks up to 256 MiB kept",
    "throughput_cpu_avx2_19264_genes": "XTrimoGene-10M over 19,264 genes at batch 32 on an AVX2-only CPU (AMD EPYC): step time and peak RSS",
    "profiles_cpu_avx2": "Where the time goes on an AVX2-only CPU (AMD EPYC): profiler tables before and after",
    "training_memory_cpu_avx2": "xTrimoGene training-memory estimate and measured peak on an AVX2-only CPU (AMD EPYC)",
    "int8_inference_avx2": "Embedding with int8 transformer blocks vs float32 on an AVX2-only CPU (AMD EPYC)",
}


# ---------------------------------------------------------------------------------------------------------------
# formatting helpers
# ---------------------------------------------------------------------------------------------------------------


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _fmt(v: Any, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:.3g}" if abs(v) >= 10**7 else f"{v:,}"
    if isinstance(v, float):
        if v != 0 and (abs(v) >= 1e5 or abs(v) < 1e-3):
            return f"{v:.3g}"
        if abs(v) >= 100:
            return f"{v:,.0f}"
        return f"{v:.{digits}f}"
    if isinstance(v, list | tuple):
        return ", ".join(_fmt(x, digits) for x in v)
    if isinstance(v, dict):
        return ", ".join(f"{k}={_fmt(x, digits)}" for k, x in v.items())
    return str(v).replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None, *, bold_best: bool = False) -> str:
    """A Markdown table of ``rows`` (dicts); columns in the given order, or in order of appearance.

    Columns whose values are all missing are dropped. With ``bold_best``, the best number of every numeric column
    (except the first) is bold: the lowest for names matching errors, times and memory, the highest otherwise.
    """
    if columns is None:
        columns = []
        for row in rows:
            columns += [c for c in row if c not in columns]
    columns = [c for c in columns if any(row.get(c) is not None for row in rows)]
    if not rows or not columns:
        return ""
    best: dict[str, float] = {}
    if bold_best and len(rows) > 1:
        for c in columns[1:]:
            values = [r[c] for r in rows if _is_number(r.get(c)) and not math.isnan(r[c])]
            if len(values) > 1:
                best[c] = min(values) if _LOWER_IS_BETTER.search(c) else max(values)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        cells = []
        for c in columns:
            text = _fmt(row.get(c))
            if c in best and _is_number(row.get(c)) and row[c] == best[c]:
                text = f"**{text}**"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _metric_rows(table: dict[str, dict[str, Any]] | list[dict[str, Any]], key: str = "embedding") -> list[dict]:
    if isinstance(table, dict):
        return [{key: name, **values} for name, values in table.items() if isinstance(values, dict)]
    return [dict(row) for row in table if isinstance(row, dict)]


def metric_table(table: dict | list) -> str:
    """Benchmark metrics (``cellformers.tl.benchmark`` rows), one row per embedding, best values bold."""
    rows = _metric_rows(table)
    for row in rows:
        name = str(row.get("embedding", ""))
        if name in BASELINES:
            row["embedding"] = f"{name} ({BASELINES[name]})"
    present = [m for m in METRICS if any(m in r for r in rows)]
    return markdown_table(rows, ["embedding", *present], bold_best=True)


# ---------------------------------------------------------------------------------------------------------------
# provenance: machine and date
# ---------------------------------------------------------------------------------------------------------------


def describe_machine(data: dict[str, Any]) -> str:
    """One line about where a result was measured, from its ``machine`` / ``environment`` / ``device`` entries."""
    info: dict[str, Any] = {}
    for key in ("machine", "environment"):
        if isinstance(data.get(key), dict):
            info.update(data[key])
    parts = []
    plat = str(info.get("platform", ""))
    if plat:
        arch = "x86_64" if "x86_64" in plat else ("aarch64" if "aarch64" in plat else "")
        parts.append(" ".join(p for p in (plat.split("-")[0], arch) if p))
    elif info.get("cpu"):
        parts.append(str(info["cpu"]))
    cpus = info.get("cpus", info.get("cpu_count", info.get("n_cpus")))
    if cpus:
        parts.append(f"{cpus} CPU cores")
    threads = info.get("torch_threads")
    if threads:
        parts.append(f"{threads} torch thread{'s' if threads != 1 else ''}")
    if data.get("device"):
        parts.append(f"device {data['device']}")
    if info.get("torch"):
        parts.append(f"torch {info['torch']}")
    load = info.get("load_avg_at_end", info.get("loadavg_at_end", info.get("loadavg_end")))
    if isinstance(load, list) and load:
        parts.append(f"load average {load[0]:.1f} at the end (a shared machine: times are pessimistic)")
    return ", ".join(parts) if parts else "not recorded"


def file_date(path: Path) -> str:
    """``YYYY-MM-DD`` of the last commit that touched ``path``, else its modification date (marked as such)."""
    try:
        proc = subprocess.run(
            ["git", "log", "-1", "--format=%cs", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", path.name],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if proc.returncode == 0 and proc.stdout.strip() and not dirty.stdout.strip():
            return proc.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    mtime = datetime.fromtimestamp(path.stat().st_mtime, tz=UTC)
    return f"{mtime:%Y-%m-%d} (file date, not yet committed)"


def _script_of(stem: str) -> str | None:
    scripts = sorted((p.stem for p in (RESULTS.parent).glob("*.py")), key=len, reverse=True)
    for name in scripts:
        if stem == name or stem.startswith(name + "_") or name.startswith(stem):
            return f"benchmarks/{name}.py"
    return None


# ---------------------------------------------------------------------------------------------------------------
# result sections
# ---------------------------------------------------------------------------------------------------------------


def _section_lines(data: dict[str, Any]) -> list[str]:
    """Render every structure of a result file that has a known shape."""
    out: list[str] = []

    def add(title: str | None, text: str) -> None:
        if text:
            if title:
                out.extend([f"**{title}**", ""])
            out.extend([text, ""])

    rows = data.get("rows")
    if isinstance(rows, list) and rows and isinstance(rows[0], dict) and "flops_per_sample" in rows[0]:
        # xtrimogene_efficiency
        cols = [
            "model",
            "params_M",
            "paper_params_M",
            "flops_per_sample",
            "flops_vs_transformer",
            "paper_resource",
            "step_s_fp32",
            "step_s_bf16",
            "speedup_vs_transformer_bf16",
            "peak_rss_mb_bf16",
            "step_rss_increase_mb_bf16",
        ]
        add("One training step (forward + backward), batch of one cell", markdown_table(data["rows"], cols))
    if isinstance(data.get("table"), dict):
        add("Embedding quality", metric_table(data["table"]))
    comparison = data.get("comparison")
    if isinstance(comparison, dict) and isinstance(comparison.get("rows"), list):  # throughput.py --before-src
        add(f"Before and after ({comparison.get('baseline', '')}; rates per CPU second and per second)",
            markdown_table(comparison["rows"]))  # fmt: skip
    summary = data.get("summary")
    if isinstance(summary, list) and summary and isinstance(summary[0], dict) and "rss_max_mb" in summary[0]:
        add("Resident memory after each training step (heap_growth.py)", markdown_table(summary))
    if isinstance(data.get("top_ops"), list):  # profile_models.py
        add("Operators with the most self CPU time", markdown_table(data["top_ops"]))
    if isinstance(data.get("benchmark"), dict | list):
        add("Embedding quality", metric_table(data["benchmark"]))
    if isinstance(data.get("knn_accuracy_5fold"), dict):
        rows = [{"embedding": k, "15-NN accuracy (5-fold)": v} for k, v in data["knn_accuracy_5fold"].items()]
        add(None, markdown_table(rows, bold_best=True))
    if isinstance(data.get("validation_masked_mse_per_epoch"), list) and data["validation_masked_mse_per_epoch"]:
        val = data["validation_masked_mse_per_epoch"]
        add(
            None,
            f"Validation masked MSE: {_fmt(val[0], 4)} after the first epoch, {_fmt(val[-1], 4)} after epoch "
            f"{len(val)}.",
        )
    if isinstance(data.get("masked_recovery_held_out"), list):
        add("Masked-value recovery on held-out cells (Pearson on masked positions)",
            markdown_table(data["masked_recovery_held_out"]))  # fmt: skip
    if _is_annotation_run(data):  # annotation.py: the runs list only holds arguments
        for title, text in _annotation_tables(data):
            add(title, text)
    runs = data.get("runs") if not _is_annotation_run(data) else None
    if isinstance(runs, dict):  # scformer_integration: one entry per trained configuration
        rows = []
        for name, run in runs.items():
            if isinstance(run, dict) and "train_s" in run:
                rows.append(
                    {
                        "embedding": name,
                        "configuration": {**run.get("config", {}), **run.get("train_options", {})},
                        "epochs": run.get("epochs"),
                        "best epoch": run.get("best_epoch"),
                        "training (s)": run.get("train_s"),
                    }
                )
        add("Training runs", markdown_table(rows))
    elif isinstance(runs, list) and runs:
        results = [r for run in runs if isinstance(run, dict) for r in run.get("results", [])]
        if results:
            add("Pearson correlations of the mean prediction (App. A.1.2)", markdown_table(results, bold_best=True))
        else:
            add(None, markdown_table([r for r in runs if isinstance(r, dict)]))
    if "naive_estimated_peak_mib_at_batch" in data:
        add(None, f"Estimated peak of the naive embedding at batch {data.get('batch')}: "
                  f"{_fmt(data['naive_estimated_peak_mib_at_batch'])} MiB.")  # fmt: skip
    if isinstance(data.get("codebook"), dict):
        cb = data["codebook"]
        add(
            None,
            f"Codebook: {cb.get('n_used')} of {cb.get('n_codes')} codes used, perplexity {_fmt(cb.get('perplexity'), 1)}.",
        )
    imputation = data.get("imputation")
    if isinstance(imputation, dict):
        for block in imputation.values():
            if isinstance(block, dict) and isinstance(block.get("table"), list):
                params = block.get("params", {})
                what = f"{_fmt(params.get('mask_fraction'))} of the {params.get('candidates', '')} entries masked"
                add(f"Imputation ({what}; lower is better)", markdown_table(block["table"], bold_best=True))
    if not out:  # a shape not known above: every flat table in the file
        out = _generic_sections(data)
    return out


def _is_annotation_run(data: dict[str, Any]) -> bool:
    """A result of ``benchmarks/annotation.py``: one dict per dataset with its baselines and models."""
    tasks = data.get("annotation")
    return isinstance(tasks, dict) and all(
        isinstance(t, dict) and isinstance(t.get("baselines", {}), dict) and isinstance(t.get("models", {}), dict)
        for t in tasks.values()
    )


def _scores(test: dict[str, Any]) -> dict[str, Any]:
    return {k: test.get(k) for k in ("macro_f1", "macro_precision", "accuracy")}


def _annotation_tables(data: dict[str, Any]) -> list[tuple[str, str]]:
    """Test-split scores of every model and baseline per dataset, and the label-transfer accuracies."""
    out = []
    for name, task in data["annotation"].items():
        rows = [
            {"method": method, **_scores(r), "wall seconds": (r.get("embedding_seconds") or 0) + (r.get("time_s") or 0)}
            for method, r in (task.get("baselines") or {}).items()
        ]
        for model, res in (task.get("models") or {}).items():
            pre = (res.get("pretrain") or {}).get("seconds") or 0
            for mode in ("frozen", "full"):
                if isinstance(res.get(mode), dict):
                    run = res[mode]
                    rows.append(
                        {"method": f"{model} ({mode})", **_scores(run["test"]), "wall seconds": pre + run["seconds"]}
                    )
        sizes = task.get("split_sizes", {})
        title = f"Annotation on {name}: test split of {sizes.get('test', '?')} cells (train {sizes.get('train', '?')})"
        out.append((title, markdown_table(rows, bold_best=True)))
    transfer = data.get("transfer")
    if isinstance(transfer, dict):
        keys = ("accuracy", "macro_f1", "accuracy_seen_types", "mean_confidence", "accuracy_confident_0.9")
        rows = [{"method": m, **{k: r.get(k) for k in keys}} for m, r in (transfer.get("baselines") or {}).items()]
        for model, res in (transfer.get("models") or {}).items():
            for how in ("knn", "head_frozen"):
                if isinstance(res.get(how), dict):
                    rows.append({"method": f"{model} ({how})", **{k: res[how].get(k) for k in keys}})
        title = (
            f"Label transfer from donor {transfer.get('reference_donor')} ({transfer.get('n_reference')} cells) to "
            f"{transfer.get('n_query')} cells of the other donors"
        )
        out.append((title, markdown_table(rows, bold_best=True)))
    return out


def _flat(row: Any) -> bool:
    return (
        isinstance(row, dict)
        and bool(row)
        and all(not isinstance(v, dict | list) or _is_short_list(v) for v in row.values())
    )


def _is_short_list(v: Any) -> bool:
    return isinstance(v, list) and len(v) <= 8 and all(not isinstance(x, dict | list) for x in v)


def _generic_sections(data: dict[str, Any], prefix: str = "") -> list[str]:
    """Tables of the lists of flat records and the dicts of flat records found in ``data`` (two levels deep)."""
    out: list[str] = []
    for key, value in data.items():
        title = f"{prefix}{key}".replace("_", " ")
        if isinstance(value, list) and value and all(_flat(r) for r in value):
            out += [f"**{title}**", "", markdown_table(value), ""]
        elif isinstance(value, dict) and value and all(_flat(r) for r in value.values()):
            rows = [{"name": name, **r} for name, r in value.items()]
            out += [f"**{title}**", "", markdown_table(rows, bold_best=False), ""]
        elif isinstance(value, dict) and not prefix:
            out += _generic_sections(value, prefix=f"{key}: ")
    return out


def _header_lines(path: Path, data: dict[str, Any]) -> list[str]:
    facts = []
    dataset = data.get("dataset")
    if dataset:
        facts.append(f"data `{dataset}`")
    n_cells = data.get("n_cells", (data.get("shape") or [None])[0] if isinstance(data.get("shape"), list) else None)
    if n_cells:
        facts.append(f"{_fmt(n_cells)} cells")
    n_genes = data.get("n_hvgs", data.get("n_genes"))
    if n_genes:
        facts.append(f"{_fmt(n_genes)} genes")
    for key, label in (("label_key", "labels"), ("batch_key", "batches")):
        if data.get(key):
            facts.append(f"{label} `{data[key]}`")
    lines = [f"### {TITLES.get(path.stem, path.stem)}", ""]
    if data.get("description"):
        lines += [str(data["description"]), ""]
    script = _script_of(path.stem)
    source = f"`benchmarks/results/{path.name}`" + (f", written by `{script}`" if script else "")
    lines += [
        f"- **Source:** {source}",
        f"- **Date:** {file_date(path)}",
        f"- **Machine:** {describe_machine(data)}",
    ]
    if facts:
        lines.append(f"- **Setting:** {', '.join(facts)}")
    args = data.get("args")
    if isinstance(args, dict):
        shown = {k: v for k, v in args.items() if k not in {"out", "dataset"} and v is not None}
        lines.append(f"- **Arguments:** `{_fmt(shown)}`")
    for key in ("model_kwargs", "epochs", "train_kwargs"):
        if isinstance(data.get(key), dict):
            lines.append(f"- **{key.replace('_', ' ').capitalize()}:** `{_fmt(data[key])}`")
    if isinstance(data.get("train"), dict):
        t = data["train"]
        lines.append(
            f"- **Training:** {t.get('epochs')} epochs, batch {t.get('batch_size')}, {t.get('precision')}, "
            f"{_fmt(t.get('seconds'))} s"
        )
    return [*lines, ""]


def load_results(results: Path = RESULTS) -> list[tuple[Path, dict[str, Any]]]:
    """Every ``*.json`` of the results folder that holds a JSON object, sorted by name."""
    out = []
    for path in sorted(results.glob("*.json")):
        data = json.loads(path.read_text())
        if isinstance(data, dict):
            out.append((path, data))
    return out


def benchmarks_markdown(results: Path = RESULTS) -> str:
    """All benchmark result files, one section each."""
    items = load_results(results)
    if not items:
        return "No benchmark results are stored yet.\n"
    lines: list[str] = []
    for path, data in items:
        lines += _header_lines(path, data)
        body = _section_lines(data)
        lines += body or [f"(no table in this file; keys: {', '.join(data)})", ""]
    return "\n".join(lines)


def summary_markdown(results: Path = RESULTS) -> str:
    """Per benchmark with baselines, the best model embedding by AvgBIO beside each baseline."""
    rows = []
    for path, data in load_results(results):
        table = data.get("table", data.get("benchmark"))
        if not isinstance(table, dict | list):
            continue
        scores = {r.get("embedding"): r for r in _metric_rows(table)}
        models = {k: v for k, v in scores.items() if k not in BASELINES and v.get("AvgBIO") is not None}
        if not models:
            continue
        best = max(models, key=lambda k: models[k]["AvgBIO"])
        row = {
            "benchmark": TITLES.get(path.stem, path.stem),
            "best model embedding": best,
            "its AvgBIO": models[best]["AvgBIO"],
        }
        for key, name in BASELINES.items():
            if key in scores and scores[key].get("AvgBIO") is not None:
                row[f"{name} AvgBIO"] = scores[key]["AvgBIO"]
        if "X_pca_hvg" not in scores:  # the baselines of the same data may be in their own file
            for other, other_data in load_results(results):
                if other.stem.startswith("baselines_") and other_data.get("dataset") == data.get("dataset"):
                    for key, name in BASELINES.items():
                        base = other_data.get("table", {}).get(key, {})
                        if base.get("AvgBIO") is not None:
                            row.setdefault(f"{name} AvgBIO", base["AvgBIO"])
        rows.append(row)
    if not rows:
        return "No benchmark compares a model with the baselines yet.\n"
    columns = ["benchmark", "best model embedding", "its AvgBIO", *[f"{n} AvgBIO" for n in BASELINES.values()]]
    return markdown_table(rows, columns)


# ---------------------------------------------------------------------------------------------------------------
# presets
# ---------------------------------------------------------------------------------------------------------------


def _count(module) -> int:
    return sum(p.numel() for p in module.parameters())


def _mib(n_bytes: float) -> str:
    return f"{n_bytes / 2**20:,.0f} MiB" if n_bytes < 2**30 else f"{n_bytes / 2**30:,.1f} GiB"


def _memory_columns(n_params: int) -> dict[str, str]:
    # AdamW with float32 master weights: weights + gradients + two moments = 16 bytes per parameter
    return {
        "weights float32": _mib(4 * n_params),
        "weights bfloat16": _mib(2 * n_params),
        "training state (AdamW)": _mib(16 * n_params),
    }


def _vocab(n_genes: int):
    from cellformers.data import GeneVocab

    return GeneVocab([f"GENE{i}" for i in range(n_genes)], name=f"{n_genes}-genes")


def presets_xtrimogene(n_genes: int = 19264) -> str:
    """Parameter counts of :class:`~cellformers.model.XTrimoGene`'s presets (App. Table 2) with ``n_genes`` genes."""
    import numpy as np
    import torch

    from cellformers.module import XTrimoGeneModule
    from cellformers.model import XTRIMOGENE_PRESETS

    vocab = _vocab(n_genes)
    rows = []
    for name, p in XTRIMOGENE_PRESETS.items():
        with torch.device("meta"):
            m = XTrimoGeneModule(np.arange(n_genes), len(vocab), **p)
        n = _count(m)
        rows.append(
            {
                "preset": f'`"{name}"`',
                "encoder (depth × width, heads, FFN)": f"{p['encoder_layers']} × {p['encoder_dim']}, "
                f"{p['encoder_heads']}, {p['encoder_ff']}",
                "Performer decoder": f"{p['decoder_layers']} × {p['decoder_dim']}, {p['decoder_heads']}, "
                f"{p['decoder_ff']}",
                "parameters": f"{n / 1e6:.1f}M",
                "of which gene table": f"{_count(m.gene_embedding) / 1e6:.1f}M",
                **_memory_columns(n),
            }
        )
    return markdown_table(rows)


def presets_scformer() -> str:
    """Parameter counts of :class:`~cellformers.model.ScFormer` (paper §5 architecture) for a few vocabularies."""
    import numpy as np
    import torch

    from cellformers.module import ScFormerModule

    rows = []
    for n_genes, what in ((1200, "1,200 HVGs"), (5000, "5,000 HVGs"), (48292, "scGPT's vocabulary (48,292 genes)")):
        vocab = _vocab(n_genes)
        with torch.device("meta"):
            m = ScFormerModule(
                np.arange(min(n_genes, 1200)),
                len(vocab),
                pad_id=vocab.pad_id,
                cls_id=vocab.cls_id,
                n_batch=4,
                use_dar=True,
                use_dsbn=True,
            )
        n = _count(m)
        rows.append(
            {
                "gene vocabulary": what,
                "parameters (MGM, MVC, ECS, DAR, DSBN with 4 batches)": f"{n / 1e6:.2f}M",
                "of which gene table": f"{_count(m.gene_embedding) / 1e6:.2f}M",
                **_memory_columns(n),
            }
        )
    return markdown_table(rows)


def presets_scpalm(n_genes: int = 19264) -> str:
    """Parameter counts of :class:`~cellformers.model.ScPaLM`'s presets with ``n_genes`` genes."""
    import numpy as np
    import torch

    from cellformers.model import SCPALM_PRESETS
    from cellformers.module import ScPaLMModule

    vocab = _vocab(n_genes)
    rows = []
    for name, p in SCPALM_PRESETS.items():
        with torch.device("meta"):
            m = ScPaLMModule(gene_token_ids=np.arange(n_genes), n_tokens=len(vocab), n_output_genes=n_genes, **p)
        n = _count(m)
        stage2 = sum(_count(x) for x in m._stage2_modules()) + sum(x.numel() for x in m._stage2_params())
        rows.append(
            {
                "preset": f'`"{name}"`',
                "transformers (layers × width, heads, FFN)": f"4 × ({p['n_layers']} × {p['n_hidden']}, "
                f"{p['n_heads']}, {p['n_intermediate']})",
                "N tokens, K codes": f"{p['n_pathway_tokens']}, {p['n_codes']}",
                "parameters": f"{n / 1e6:.1f}M",
                "of which embedding": f"{_count(m.embedding) / 1e6:.1f}M",
                "trained in stage 2": f"{stage2 / 1e6:.1f}M",
                **_memory_columns(n),
            }
        )
    return markdown_table(rows)


#: Table name -> function returning its Markdown.
# ---------------------------------------------------------------------------------------------------------------
# Performance page: tables of benchmarks/results/throughput_cpu.json and scaling_cpu.json
# ---------------------------------------------------------------------------------------------------------------


def _result(name: str, results: Path = RESULTS) -> tuple[Path, dict[str, Any]]:
    path = results / name
    if not path.is_file():
        msg = f"{path} is missing: run the benchmark script that writes it"
        raise FileNotFoundError(msg)
    return path, json.loads(path.read_text())


def _measured_on(path: Path, data: dict[str, Any]) -> str:
    load = (data.get("machine") or {}).get("loadavg")
    # wall-clock figures depend on what else ran: say how busy the machine was
    busy = f", load average {load[0]:.1f} at the start" if load else ""
    return f"\n\n*Measured on {describe_machine(data)}{busy}; {file_date(path)} (`benchmarks/results/{path.name}`).*"


def _train_stages(row: dict[str, Any]) -> list[dict[str, Any]]:
    return row.get("training") or [{}]


def performance_memory(results: Path = RESULTS) -> str:
    """Peak RSS of embedding and of a training step, per model, preset and precision (throughput_cpu.json)."""
    path, data = _result("throughput_cpu.json", results)
    rows = []
    for r in data["rows"]:
        emb, train = r.get("embedding") or {}, _train_stages(r)[0]
        rows.append(
            {
                "model / preset": r["config"],
                "precision": r["precision"],
                "parameters (M)": r["params"] / 1e6,
                "embedding batch": emb.get("batch_size"),
                "embedding peak RSS (MB)": emb.get("peak_rss_mb"),
                "training batch": train.get("batch_size"),
                "training peak RSS (MB)": max(s.get("peak_rss_mb") or 0 for s in _train_stages(r)) or None,
            }
        )
    return markdown_table(rows) + _measured_on(path, data)


def performance_throughput(results: Path = RESULTS) -> str:
    """Embedding and training cells/s and model FLOPs utilisation (throughput_cpu.json)."""
    path, data = _result("throughput_cpu.json", results)
    rows = []
    for r in data["rows"]:
        emb = r.get("embedding") or {}
        for s in _train_stages(r):
            stage = f" (stage {s['stage']})" if s.get("stage") else ""
            rows.append(
                {
                    "model / preset": r["config"] + stage,
                    "precision": r["precision"],
                    "embedding cells/s": emb.get("cells_per_s") if not stage or s.get("stage") == 1 else None,
                    "training cells/s": s.get("cells_per_s"),
                    "training GFLOP/cell": (s.get("flops_per_cell") or 0) / 1e9 or None,
                    "MFU (wall)": s.get("mfu"),
                    "MFU (CPU time)": s.get("mfu_cpu"),
                }
            )
    peaks = data.get("matmul_peak", {})
    peak_text = ", ".join(f"{k} {v['flops_per_s'] / 1e9:.0f} GFLOP/s" for k, v in peaks.items())
    note = f"\n\nMatmul peak measured in the same run: {peak_text}." if peak_text else ""
    failed = data.get("not_measured") or []
    if failed:
        note += " Not measured: " + ", ".join(f"{f['config']} {f['precision']}" for f in failed) + "."
    return markdown_table(rows) + note + _measured_on(path, data)


def performance_scaling(results: Path = RESULTS) -> str:
    """Embedding time and peak RSS from 10k to 200k cells read from backed files (scaling_cpu.json)."""
    path, data = _result("scaling_cpu.json", results)
    rows = [
        {
            "cells": r["n_cells"],
            "embedding (s)": r.get("embed_seconds"),
            "cells/s": r.get("cells_per_s"),
            "cells per CPU-s": r.get("cells_per_cpu_s"),
            "embedding peak RSS (MB)": r.get("embed_peak_rss_mb"),
            "output (MB)": r.get("output_mb"),
        }
        for r in data["rows"]
    ]
    summary = data.get("summary", {})
    note = ""
    if "embed_peak_rss_growth" in summary:
        fit = summary.get("time_fit", {}).get("cpu", {})
        note = (
            f"\n\nPeak RSS grows by {summary['embed_peak_rss_growth']:.1%} from the smallest to the largest file "
            f"({summary.get('embed_peak_rss_growth_without_output', float('nan')):.1%} without the output matrix)"
        )
        if fit:
            note += f"; CPU time is linear in the number of cells (R² {fit['r2']:.4f})"
        note += "."
    return markdown_table(rows) + note + _measured_on(path, data)


def performance_length_scaling(results: Path = RESULTS) -> str:
    """Cost of one xTrimoGene sample against the number of expressed genes (xtrimogene_length_scaling.json)."""
    path, data = _result("xtrimogene_length_scaling.json", results)
    rows = [
        {
            "input": r["input"],
            "encoder length": r.get("encoder_length"),
            "embedding GFLOP": r.get("embed_gflop"),
            "attention share": r.get("embed_attention_share"),
            "embedding CPU-s fp32": r.get("embed_fp32_cpu_s"),
            "embedding CPU-s bf16": r.get("embed_bf16_cpu_s"),
            "embedding peak RSS (MB)": r.get("embed_fp32_peak_rss_mb"),
            "training GFLOP": r.get("train_gflop"),
            "decoder GFLOP": r.get("train_decoder_gflop"),
            "training CPU-s bf16": r.get("train_bf16_cpu_s"),
            "training CPU-s fp32": r.get("train_fp32_cpu_s"),
        }
        for r in data["summary"]
    ]
    return markdown_table(rows) + _measured_on(path, data)


TABLES: dict[str, Callable[[], str]] = {
    "benchmarks": benchmarks_markdown,
    "benchmarks-summary": summary_markdown,
    "presets-xtrimogene": presets_xtrimogene,
    "presets-scformer": presets_scformer,
    "presets-scpalm": presets_scpalm,
    "performance-memory": performance_memory,
    "performance-throughput": performance_throughput,
    "performance-scaling": performance_scaling,
    "performance-length-scaling": performance_length_scaling,
}


# ---------------------------------------------------------------------------------------------------------------
# Sphinx
# ---------------------------------------------------------------------------------------------------------------


def render_markers(text: str, warn: Callable[[str], None] | None = None) -> str:
    """Replace every ``<!-- cellformers-table: NAME -->`` line of ``text`` by its table."""

    def replace(match: re.Match) -> str:
        name = match.group("name")
        if name not in TABLES:
            if warn:
                warn(f"unknown cellformers table {name!r}; known: {sorted(TABLES)}")
            return ""
        try:
            return TABLES[name]() + "\n"
        except Exception as err:  # noqa: BLE001 - reported as a build warning
            if warn:
                warn(f"cellformers table {name!r} could not be built: {type(err).__name__}: {err}")
            return ""

    return MARKER.sub(replace, text)


def _source_read(app: Sphinx, docname: str, source: list[str]) -> None:
    if "cellformers-table:" not in source[0]:
        return
    from sphinx.util import logging as sphinx_logging

    logger = sphinx_logging.getLogger(__name__)
    source[0] = render_markers(
        source[0], warn=lambda msg: logger.warning(msg, location=docname, type="cellformers", subtype="table")
    )


def setup(app: Sphinx) -> dict[str, Any]:
    """Register the handler."""
    app.connect("source-read", _source_read)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    for table in sys.argv[1:] or ["benchmarks-summary"]:
        print(TABLES[table]())
