"""Freed memory kept for reuse during training and inference (glibc's mmap and trim thresholds); huge pages."""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from lightning.pytorch.callbacks import Callback

import cellformers as cf
from cellformers._utils import _heap
from cellformers._utils._heap import heap_retained, retained_heap

glibc = _heap._glibc()
# glibc reads MALLOC_*_ / GLIBC_TUNABLES at process start: tuned there, large blocks may never be mapped separately
_tuned_at_start = _heap._user_tuned_malloc()
needs_glibc = pytest.mark.skipif(
    glibc is None or _tuned_at_start, reason="glibc's mallopt is not available, or malloc was tuned at start-up"
)

_BLOCK = 48 << 20  # above glibc's largest dynamic mmap threshold (32 MiB): mapped afresh unless retained


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ] + [("keepcost", ctypes.c_size_t)]


def _mapped_bytes() -> int:
    """Bytes glibc holds in separately mmapped blocks (``mallinfo2().hblkhd``)."""
    glibc.mallinfo2.restype = _Mallinfo2
    return glibc.mallinfo2().hblkhd


def _mapped_while_alive() -> int:
    before = _mapped_bytes()
    block = torch.empty(_BLOCK // 4, dtype=torch.float32)
    grown = _mapped_bytes() - before
    del block
    return grown


@pytest.fixture(autouse=True)
def _no_user_malloc_settings(monkeypatch):
    for name in _heap.USER_MALLOC_SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)


@needs_glibc
def test_large_blocks_come_from_the_heap_inside_the_region():
    assert _mapped_while_alive() >= _BLOCK  # glibc's default: a separate mapping, unmapped when freed
    with retained_heap(True):
        assert heap_retained()
        assert _mapped_while_alive() == 0  # from the heap: freed into it and reused by the next allocation
    assert not heap_retained()
    assert _mapped_while_alive() >= _BLOCK  # the thresholds are restored on leaving


@needs_glibc
def test_blocks_above_the_threshold_keep_their_own_mapping():
    """The heap cannot always place a huge block in the holes smaller ones left: those are not kept."""
    size = _heap.RETAINED_MMAP_THRESHOLD + (1 << 20)
    with retained_heap(True):
        before = _mapped_bytes()
        block = torch.empty(size // 4, dtype=torch.float32)  # not touched: no resident memory
        assert _mapped_bytes() - before >= size
        del block


@needs_glibc
def test_regions_nest_and_the_outermost_restores():
    with retained_heap(True):
        with retained_heap(True):
            assert _heap._depth == 2
        assert heap_retained()
        assert _mapped_while_alive() == 0  # the inner region's exit did not restore the thresholds
    assert _heap._depth == 0
    assert _mapped_while_alive() >= _BLOCK


@needs_glibc
def test_restored_even_when_the_body_raises():
    with pytest.raises(RuntimeError, match="boom"), retained_heap(True):
        raise RuntimeError("boom")
    assert not heap_retained()
    assert _mapped_while_alive() >= _BLOCK


@needs_glibc
def test_disabled_by_setting_or_by_user_malloc_tuning(monkeypatch):
    old = cf.settings.reuse_freed_memory
    try:
        cf.settings.reuse_freed_memory = False
        with retained_heap():
            assert not heap_retained()
            assert _mapped_while_alive() >= _BLOCK
    finally:
        cf.settings.reuse_freed_memory = old
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1048576")
    with retained_heap(True):
        assert not heap_retained()  # the user's own tuning wins


def test_setting_takes_booleans_only():
    with pytest.raises(TypeError, match="reuse_freed_memory"):
        cf.settings.reuse_freed_memory = "yes"


def test_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(_heap, "_glibc", lambda: None)
    with retained_heap(True):
        assert not heap_retained()


class _Record(Callback):
    def __init__(self):
        self.seen: list[bool] = []

    def on_train_batch_start(self, *args, **kwargs):
        self.seen.append(heap_retained())


@needs_glibc
def test_training_and_getters_run_inside_the_region(toy_model_cls, monkeypatch):
    adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    record = _Record()
    model.train(max_epochs=1, batch_size=32, callbacks=[record], enable_progress_bar=False)
    assert record.seen
    assert all(record.seen)
    assert not heap_retained()

    import cellformers.model.base._inference as inference

    entered = []
    original = inference.retained_heap

    @contextlib.contextmanager
    def recording(*args, **kwargs):
        with original(*args, **kwargs):
            entered.append(heap_retained())
            yield

    monkeypatch.setattr(inference, "retained_heap", recording)
    out = model.get_latent_representation(adata, batch_size=16)
    assert out.shape[0] == adata.n_obs
    assert np.isfinite(out).all()
    assert entered == [True]  # once per call, around every minibatch
    assert not heap_retained()


class _FakeLibc:
    def __init__(self):
        self.trims = 0

    def mallopt(self, param, value):
        return 1

    def malloc_trim(self, pad):
        self.trims += 1
        return 1


def test_fragmented_heap_is_trimmed_past_its_bound(monkeypatch):
    libc, resident = _FakeLibc(), [1000]
    monkeypatch.setattr(_heap, "_glibc", lambda: libc)
    monkeypatch.setattr(_heap, "_resident_bytes", lambda: resident[0])
    assert not _heap.release_fragmented_heap()  # outside a region: nothing
    with retained_heap(True):
        assert not _heap.release_fragmented_heap()  # the first boundary sets the bound: 1.25 x 1000
        resident[0] = 1250
        assert not _heap.release_fragmented_heap()
        resident[0] = 1300  # fragmentation grew the process past it
        assert _heap.release_fragmented_heap()
        assert libc.trims == 1
        resident[0] = 1100  # the next boundary after a trim sets a new bound from what the step needed
        assert not _heap.release_fragmented_heap()
        resident[0] = 1300
        assert not _heap.release_fragmented_heap()
        resident[0] = 1400
        assert _heap.release_fragmented_heap()
    assert libc.trims == 3  # and once on leaving
    with retained_heap(True):  # a new region starts without a bound
        resident[0] = 5000
        assert not _heap.release_fragmented_heap()


def test_training_steps_and_getter_minibatches_are_boundaries(toy_model_cls, monkeypatch):
    import cellformers.model.base._inference as inference
    import cellformers.train._heap_trim as heap_trim

    calls = []
    monkeypatch.setattr(heap_trim, "release_fragmented_heap", lambda: calls.append("step"))
    monkeypatch.setattr(inference, "release_fragmented_heap", lambda: calls.append("minibatch"))
    adata = cf.data.synthetic_counts(n_cells=60, n_genes=20)
    toy_model_cls.setup_anndata(adata)
    model = toy_model_cls(adata)
    model.train(max_epochs=1, batch_size=16, train_size=1.0, enable_progress_bar=False)
    assert calls == ["step"] * 4
    calls.clear()
    model.get_latent_representation(adata, batch_size=16)
    assert calls == ["minibatch"] * 4


# ----------------------------------------------------------------------------- transparent huge pages (opt-in)
def test_huge_pages_mode_reads_the_bracketed_choice(tmp_path, monkeypatch):
    sysfs = tmp_path / "enabled"
    sysfs.write_text("always [madvise] never\n")
    monkeypatch.setattr(_heap, "THP_SYSFS", str(sysfs))
    assert _heap.huge_pages_mode() == "madvise"
    sysfs.write_text("[always] madvise never\n")
    assert _heap.huge_pages_mode() == "always"
    assert _heap.huge_pages_active()
    monkeypatch.setattr(_heap, "THP_SYSFS", str(tmp_path / "missing"))
    assert _heap.huge_pages_mode() is None
    assert not _heap.huge_pages_active()


_HUGE_PAGE_PROBE = """
import json, resource
import torch
from cellformers.train import huge_pages_active

def faults_of_a_fresh_block():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.ones(256 << 18)  # 256 MiB, written once: one fault per page mapped
    after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    del block
    return after - before

print(json.dumps({"active": huge_pages_active(), "faults": min(faults_of_a_fresh_block() for _ in range(3))}))
"""


@pytest.mark.skipif(_heap.huge_pages_mode() != "madvise", reason="needs Linux with huge pages on request (madvise)")
def test_huge_pages_follow_the_variable_pytorch_reads_at_start():
    def probe(value: str | None, **malloc: str) -> dict:
        env = {k: v for k, v in os.environ.items() if k != _heap.THP_VARIABLE} | malloc
        if value is not None:
            env[_heap.THP_VARIABLE] = value
        out = subprocess.run(
            [sys.executable, "-c", _HUGE_PAGE_PROBE], env=env, capture_output=True, text=True, check=True
        )
        return json.loads(out.stdout.strip().splitlines()[-1])

    on, off = probe("1"), probe(None)
    assert (on["active"], off["active"]) == (True, False)
    # malloc tuned to serve large blocks from its heap: their addresses are no longer those of fresh mappings
    assert not probe(None, MALLOC_MMAP_THRESHOLD_=str(1 << 30))["active"]
    assert off["faults"] >= (256 << 20) // 4096 // 2
    # 2 MiB pages: ~640 faults measured; the kernel falls back to 4 KiB pages where it finds no free huge page
    assert on["faults"] < off["faults"] // 4, (on, off)
