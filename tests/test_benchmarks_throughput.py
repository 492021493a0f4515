"""``benchmarks/throughput.py``: before/after pairing of one run, precisions measured, table labels."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def throughput(import_script):
    return import_script("benchmarks", "throughput")


def _row(config, precision, code, embed, train):
    return {
        "config": config,
        "precision": precision,
        "code": code,
        "params": 1e6,
        "embedding": {"cells_per_cpu_s": embed, "cells_per_s": 2 * embed, "peak_rss_mb": 100.0},
        "training": [{"cells_per_cpu_s": train, "cells_per_s": 2 * train, "flops_per_cell": 1e9, "peak_rss_mb": 1.0}],
    }


def test_compare_pairs_each_configuration_and_precision_with_its_before_row(throughput):
    before = [_row("a", "fp32", "before", 2.0, 1.0), _row("a", "bf16", "before", 4.0, 2.0)]
    after = [_row("a", "bf16", "installed", 10.0, 3.0), _row("a", "fp32", "installed", 3.0, 2.0)]
    rows, table = throughput._compare(after, {"rows": before})
    by = {r["precision"]: r for r in rows}
    assert by["fp32"]["embed_speedup"] == pytest.approx(1.5)
    assert by["fp32"]["train_speedup"] == pytest.approx(2.0)
    assert by["bf16"]["embed_speedup"] == pytest.approx(2.5)
    assert by["bf16"]["train_speedup"] == pytest.approx(1.5)
    assert "(2.50x)" in table
    labels = throughput._table(before + after, "cpu")
    assert labels.count("(before)") == 2


def test_the_memory_case_is_on_request_and_has_no_before_run(throughput):
    cfg = throughput.CONFIGS["xtrimogene-10M-19264"]
    assert "xtrimogene-10M-19264" in throughput.ON_REQUEST_CONFIGS
    assert cfg["train_batch"] == 32
    assert cfg["kwargs"]["decoder_chunk_size"] == 4
    assert cfg["before"] is False
    assert cfg["embed"] is False
    assert cfg["count_flops"] is False
    assert throughput.SCFOUNDATION_GENES.name.endswith("19264.tsv")
