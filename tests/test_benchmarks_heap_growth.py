"""``benchmarks/heap_growth.py``: the summary it reports of a run's resident memory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="module")
def heap_growth(import_script):
    return import_script("benchmarks", "heap_growth")


def test_summary_reads_growth_and_the_median_step(heap_growth):
    run = {"reuse_freed_memory": True, "rss_mb": [100, 150, 200, 180, 260], "step_s": [9.0, 1.0, 3.0, 2.0, 5.0]}
    s = heap_growth._summary(run)
    assert (s["rss_first_step_mb"], s["rss_max_mb"], s["rss_last_mb"]) == (100, 260, 260)
    assert s["rss_growth_second_half_mb"] == 60  # from step 3 (200) to the last (260)
    assert s["median_step_s"] == 3.0  # the first step (warm-up) left out


def test_resident_memory_is_read_from_proc(heap_growth):
    resident = heap_growth._resident_mb()
    assert resident > 10  # this test process
