"""Data-parallel training across two CPU processes (Lightning DDP, gloo) through scvi-tools' ``train``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).with_name("_ddp_train.py")
MODELS = ("xtrimogene", "scformer")


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, shared_data_dir):
    env = {**os.environ, "CELLFORMERS_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(SCRIPT), str(tmp_path), str(shared_data_dir / "pbmc3k_processed.h5ad"), ",".join(MODELS)]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1800, check=False)
    assert res.returncode == 0, res.stderr[-5000:]
    for name in MODELS:
        ranks = [json.loads((tmp_path / f"{name}_rank{r}.json").read_text()) for r in (0, 1)]
        r0, r1 = ranks
        assert r0["world_size"] == r1["world_size"] == 2
        # the distributed sampler splits the training cells between the two processes
        for r in ranks:
            assert all(abs(c - r0["n_train"] / 2) <= 1 for c in r["cells_per_epoch"]), r["cells_per_epoch"]
        # gradients are averaged, so both replicas end with the same weights and the same embeddings
        assert r0["param_checksum"] == r1["param_checksum"]
        assert r0["embedding_checksum"] == r1["embedding_checksum"]
        assert r0["embedding_shape"] == [64, 32]
        assert r0["embedding_finite"]
        loss = np.asarray(r0["history"]["train_loss"])
        assert len(loss) == 4
        assert loss[-1] < loss[0], loss
        assert np.isfinite(r0["history"]["validation_loss"]).all()
