"""The tables the documentation generates at build time: benchmark results and model presets."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture(scope="module")
def tables(import_script):
    return import_script("docs/_ext", "cellformers_tables")


def _write(folder: Path, name: str, data: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(json.dumps(data))
    return path


def test_markdown_table_drops_empty_columns_and_bolds_the_best(tables):
    rows = [
        {"method": "a", "RMSE": 0.5, "pearson": 0.9, "empty": None},
        {"method": "b", "RMSE": 0.2, "pearson": 0.1, "empty": None},
    ]
    text = tables.markdown_table(rows, bold_best=True)
    assert text.splitlines()[0] == "| method | RMSE | pearson |"
    assert "| a | 0.500 | **0.900** |" in text  # higher is better
    assert "| b | **0.200** | 0.100 |" in text  # errors: lower is better


def test_benchmarks_page_renders_tables_machine_and_date(tables, tmp_path):
    results = tmp_path / "results"
    _write(
        results,
        "baselines_toy.json",
        {
            "dataset": "toy.h5ad",
            "n_cells": 100,
            "machine": {"platform": "Linux-6-x86_64-with-glibc", "cpus": 2, "torch_threads": 1},
            "table": {"X_pca_hvg": {"ARI": 0.8, "AvgBIO": 0.7}, "X_scvi": {"ARI": 0.6, "AvgBIO": 0.65}},
        },
    )
    _write(
        results,
        "model_toy.json",
        {
            "dataset": "toy.h5ad",
            "environment": {"n_cpus": 4, "torch": "2.0"},
            "benchmark": [{"embedding": "X_model", "ARI": 0.1, "AvgBIO": 0.3}],
        },
    )
    text = tables.benchmarks_markdown(results)
    assert "### Baselines on" not in text  # unknown stems are titled by their stem
    assert "### baselines_toy" in text
    assert "### model_toy" in text
    assert "Linux x86_64, 2 CPU cores, 1 torch thread" in text
    assert "4 CPU cores, torch 2.0" in text
    assert "(file date, not yet committed)" in text  # tmp_path is not in a git repository
    assert "| X_pca_hvg (HVG-PCA) | **0.800** | **0.700** |" in text

    summary = tables.summary_markdown(results)
    # the model file has no baselines of its own: they are taken from the baselines file of the same dataset
    assert "| model_toy | X_model | 0.300 | 0.700 | 0.650 |" in summary


def test_unknown_result_shapes_and_markers_are_reported(tables, tmp_path):
    results = tmp_path / "results"
    _write(results, "odd.json", {"something": 1})
    assert "(no table in this file; keys: something)" in tables.benchmarks_markdown(results)
    # an unknown shape with flat records still renders them as tables
    _write(results, "new.json", {"timings": [{"step": "fit", "seconds": 2.0}], "cfg": {"a": {"lr": 0.1}}})
    text = tables.benchmarks_markdown(results)
    assert "**timings**" in text
    assert "| fit | 2.000 |" in text
    assert "| name | lr |" in text
    assert tables.summary_markdown(results).startswith("No benchmark compares")
    warnings = []
    out = tables.render_markers("a\n<!-- cellformers-table: nope -->\nb\n", warn=warnings.append)
    assert out == "a\n\nb\n"
    assert "unknown cellformers table 'nope'" in warnings[0]


def test_stored_results_all_render(tables):
    text = tables.benchmarks_markdown()
    for path in sorted(tables.RESULTS.glob("*.json")):
        assert f"`benchmarks/results/{path.name}`" in text
    assert "(no table in this file" not in text, "a result file has a shape the benchmarks page cannot render"


def test_preset_tables_match_the_papers(tables):
    xtg = tables.presets_xtrimogene()
    assert '| `"10M"` | 4 × 256, 8, 1024 | 2 × 256, 4, 1024 | 9.8M |' in xtg  # xTrimoGene Table 1: 9.8M
    palm = tables.presets_scpalm()
    assert '`"paper"` | 4 × (6 × 256, 8, 1024) | 256, 128 |' in palm  # scPaLM Table 2, N = 256, K = 128
    assert "1,200 HVGs" in tables.presets_scformer()


def test_performance_tables_read_throughput_and_scaling_results(tables, tmp_path):
    machine = {"cpu": "Test CPU", "n_cpus": 2, "torch_threads": 2, "torch": "2.13.0", "loadavg": [0.5, 0.4, 0.3]}
    stage = {"stage": None, "batch_size": 4, "cells_per_s": 0.5, "flops_per_cell": 2e11, "mfu": 0.3, "mfu_cpu": 0.31}
    row = {
        "config": "xtrimogene-10M",
        "precision": "bf16",
        "params": 8.4e6,
        "embedding": {"batch_size": 64, "cells_per_s": 3.0, "peak_rss_mb": 2500.0},
        "training": [{**stage, "peak_rss_mb": 4700.0}],
    }
    _write(
        tmp_path,
        "throughput_cpu.json",
        {
            "machine": machine,
            "rows": [row],
            "matmul_peak": {"bf16": {"flops_per_s": 4e11}},
            "not_measured": [{"config": "xtrimogene-100M", "precision": "fp32", "error": "timeout"}],
        },
    )
    memory = tables.performance_memory(tmp_path)
    assert "| xtrimogene-10M | bf16 | 8.400 | 64 | 2,500 | 4 | 4,700 |" in memory
    assert "load average 0.5" in memory
    speed = tables.performance_throughput(tmp_path)
    assert "| xtrimogene-10M | bf16 | 3.000 | 0.500 | 200 | 0.300 | 0.310 |" in speed
    assert "bf16 400 GFLOP/s" in speed
    assert "Not measured: xtrimogene-100M fp32" in speed
    with pytest.raises(FileNotFoundError, match="scaling_cpu.json"):
        tables.performance_scaling(tmp_path)
    scaling_rows = [
        {"n_cells": n, "embed_seconds": n / 1e3, "cells_per_s": 1e3, "embed_peak_rss_mb": 800.0 + n / 1e4}
        for n in (10_000, 200_000)
    ]
    summary = {"embed_peak_rss_growth": 0.0237, "time_fit": {"cpu": {"r2": 0.999}}}
    _write(tmp_path, "scaling_cpu.json", {"machine": machine, "rows": scaling_rows, "summary": summary})
    scaling = tables.performance_scaling(tmp_path)
    assert "| 200,000 | 200 | 1,000 | 820 |" in scaling
    assert "grows by 2.4%" in scaling


def test_length_scaling_table(tables, tmp_path):
    row = {"input": "bulk", "encoder_length": 13713, "embed_gflop": 858.0, "train_gflop": 1682.0}
    _write(tmp_path, "xtrimogene_length_scaling.json", {"machine": {"n_cpus": 2}, "summary": [row]})
    text = tables.performance_length_scaling(tmp_path)
    assert text.splitlines()[0] == "| input | encoder length | embedding GFLOP | training GFLOP |"
    assert "| bulk | 13,713 | 858 | 1,682 |" in text


def test_annotation_results_render_scores_not_only_arguments(tables):
    data = {
        "runs": [{"args": {"datasets": "toy"}}],
        "annotation": {
            "toy": {
                "split_sizes": {"train": 8, "test": 2},
                "baselines": {"logreg_pca": {"macro_f1": 0.9, "accuracy": 0.95, "time_s": 1.0}},
                "models": {
                    "xtrimogene": {"pretrain": {"seconds": 10.0}, "frozen": {"test": {"macro_f1": 0.5}, "seconds": 2.0}}
                },
            }
        },
        "transfer": {"reference_donor": "d1", "baselines": {"knn_pca": {"accuracy": 0.8}}, "models": {}},
    }
    text = "\n".join(tables._section_lines(data))
    assert "Annotation on toy: test split of 2 cells (train 8)" in text
    row = next(line for line in text.splitlines() if line.startswith("| xtrimogene (frozen) |"))
    assert "0.500" in row
    assert "12" in row  # pre-training + head time
    assert "Label transfer from donor d1" in text
    assert "datasets=toy" not in text
