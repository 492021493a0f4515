"""SIGTERM during training: stop at the next batch boundary, keep the last complete checkpoint, exit 143 (issue 21)."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch

import cellformers as cf
from cellformers.train._checkpointing import StopOnSigterm

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CHILD = textwrap.dedent(
    """
    import sys, time
    from lightning.pytorch.callbacks import Callback
    import cellformers as cf

    class SlowBatches(Callback):  # long batches: the stop must wait for the current one, not for the epoch
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            time.sleep(0.2)

    adata = cf.data.synthetic_counts(n_cells=80, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)
    try:
        model.train(max_epochs=1000, batch_size=8, accelerator="cpu", precision="32-true",
                    enable_progress_bar=False, checkpoint_dir=sys.argv[1], callbacks=[SlowBatches()])
    finally:
        print(f"UNWOUND {time.time()}", flush=True)
    print("RETURNED", flush=True)
    """
)


def test_sigterm_stops_training_promptly_and_keeps_the_last_checkpoint(tmp_path):
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    ckpt_dir = tmp_path / "ckpt"
    proc = subprocess.Popen(
        [sys.executable, str(script), str(ckpt_dir)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        deadline = time.time() + 240
        while not (ckpt_dir / "last.ckpt").exists():
            assert proc.poll() is None, proc.communicate()[0][-3000:]
            assert time.time() < deadline, "no checkpoint written"
            time.sleep(0.1)
        time.sleep(0.5)  # into the second epoch
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    # before: Lightning's SystemExit without a code, so the terminated run exited 0 as if it had completed
    assert proc.returncode == 128 + signal.SIGTERM, out[-3000:]
    assert "RETURNED" not in out
    unwound = float(out.split("UNWOUND ", 1)[1].split()[0])
    assert unwound - sent < 5.0, f"training took {unwound - sent:.1f} s to stop"  # one 0.2 s batch, then teardown
    assert "SIGTERM received: training stopped at a batch boundary" in out
    assert sorted(p.name for p in ckpt_dir.iterdir()) == ["last.ckpt"]  # no temporary file left
    ckpt = torch.load(ckpt_dir / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["epoch"] >= 0
    assert ckpt["state_dict"]


def _tiny_scformer():
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    return cf.model.ScFormer(adata, n_layers=1, d_model=16, n_heads=2, d_ff=16)


def test_training_restores_the_previous_sigterm_handler():
    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        _tiny_scformer().train(max_epochs=1, batch_size=16, accelerator="cpu", enable_progress_bar=False)
        assert signal.getsignal(signal.SIGTERM) is mine
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_sigterm_received_while_training_is_not_swallowed():
    calls = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: calls.append(signum))
    try:
        with pytest.raises(SystemExit) as info, StopOnSigterm():
            signal.raise_signal(signal.SIGTERM)  # arrives after the last batch: training returns, the exit follows
        assert info.value.code == 128 + signal.SIGTERM
        assert calls == [signal.SIGTERM]  # the previous handler is called once training has stopped
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_an_ignored_sigterm_stays_ignored():
    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with StopOnSigterm() as stop:
            signal.raise_signal(signal.SIGTERM)
        assert not stop.received
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, previous)
