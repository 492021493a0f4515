"""``benchmarks/training_memory.py``: the synthetic cells it measures and one case end to end."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def training_memory(import_script):
    return import_script("benchmarks", "training_memory")


def test_every_cell_expresses_the_requested_number_of_genes(training_memory):
    adata = training_memory.half_expressed(50, 20, n_cells=6)
    assert adata.shape == (6, 50)
    np.testing.assert_array_equal(np.diff(adata.X.indptr), 20)
    assert adata.X.data.min() >= 1


def test_one_case_gives_an_estimate_that_grows_with_the_batch(training_memory, monkeypatch):
    monkeypatch.setattr(training_memory, "CASES", [("tiny", 40, 20, None), ("tiny", 40, 20, 2)])
    plain = training_memory.worker(0)["rows"][0]
    assert plain["activations_per_cell_mib"] > 0
    assert plain["estimate_batch128_gib"] > plain["estimate_batch32_gib"]
    assert plain["batch_for_24gib"] >= 1
    chunked = training_memory.worker(1)["rows"][0]
    assert chunked["decoder_chunk_size"] == 2


@pytest.mark.slow
def test_the_estimate_stays_above_the_measured_peak(training_memory):
    """Two real float32 training steps of XTrimoGene-10M on pbmc3k cells: the estimate must not under-predict."""
    row = training_memory.measured_peak(4)
    assert row["genes"] > 1000
    assert row["estimate_gib"] >= row["peak_rss_gib"]
