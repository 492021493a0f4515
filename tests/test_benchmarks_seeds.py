"""Gathering per-seed benchmark runs: ``benchmarks/_common.seed_tables`` and ``xtrimogene_recipe.merge``."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def modules(import_script):
    return import_script("benchmarks", "_common"), import_script("benchmarks", "xtrimogene_recipe")


def test_seed_tables_mean_sd_and_missing_rows(modules):
    common, _ = modules
    tables = [
        {"X_pca_hvg": {"AvgBIO": 0.8}, "X_model": {"AvgBIO": 0.5}},
        {"X_pca_hvg": {"AvgBIO": 0.6}, "X_model": {"AvgBIO": 0.7}},
        {"X_pca_hvg": {"AvgBIO": 0.7}},
    ]
    mean, sd = common.seed_tables(tables)
    assert mean["X_pca_hvg"]["AvgBIO"] == pytest.approx(0.7)
    assert sd["X_pca_hvg"]["AvgBIO"] == pytest.approx(0.1)  # sample sd (ddof=1)
    assert mean["X_pca_hvg"]["n_seeds"] == 3
    assert mean["X_model"] == pytest.approx({"AvgBIO": 0.6, "n_seeds": 2})
    assert common.mean_sd([0.3]) == (0.3, 0.0)


def test_xtrimogene_recipe_merge(modules, tmp_path):
    _, recipe = modules
    paths = []
    for seed, (ratio, f1) in enumerate([(0.9, 0.8), (0.8, 0.6)]):
        run = {
            "dataset": "d.h5ad",
            "seed": 1 - seed,  # written out of order: the merge sorts by seed
            "table": {"X_xtrimogene": {"AvgBIO": f1}},
            "learning_signal": {"ratio": ratio},
            "masked_recovery_held_out": {"pearson": 0.5},
            "train_seconds": 10.0,
            "train_cpu_seconds": 20.0,
            "annotation": {"xtrimogene_frozen": {"macro_f1": f1}, "logreg_pca": {"macro_f1": 0.9}},
        }
        path = tmp_path / f"r{seed}.json"
        path.write_text(json.dumps(run))
        paths.append(str(path))
    merged = recipe.merge(paths)
    assert merged["seeds"] == [0, 1]
    assert merged["summary"]["ratio"]["mean"] == pytest.approx(0.85)
    assert merged["table"]["X_xtrimogene"]["AvgBIO"] == pytest.approx(0.7)
    assert merged["summary"]["annotation_macro_f1_logreg_pca"] == {"mean": 0.9, "sd": 0.0}
