"""Transparent huge pages for PyTorch's large CPU tensors: requested on import, detected, and what they save."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from cellformers import _torch_env
from cellformers._utils import _heap

linux_madvise = pytest.mark.skipif(
    _heap.huge_pages_mode() != "madvise",
    reason="needs Linux with transparent huge pages on request (madvise): 'always' gives them without asking",
)


def _run(code: str, **env: str) -> dict:
    """Run ``code`` in a fresh interpreter (PyTorch reads the variable once per process) and return its JSON."""
    full_env = {k: v for k, v in os.environ.items() if k != _torch_env.THP_VARIABLE} | env
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=full_env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_request_sets_the_variable_only_when_unset(monkeypatch):
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.delenv(_torch_env.THP_VARIABLE, raising=False)
    _torch_env.request_huge_pages()
    assert os.environ[_torch_env.THP_VARIABLE] == "1"
    monkeypatch.setenv(_torch_env.THP_VARIABLE, "0")  # the user's choice is kept
    _torch_env.request_huge_pages()
    assert os.environ[_torch_env.THP_VARIABLE] == "0"


def test_request_does_nothing_off_linux(monkeypatch):
    monkeypatch.setattr(sys, "platform", "darwin")
    monkeypatch.delenv(_torch_env.THP_VARIABLE, raising=False)
    _torch_env.request_huge_pages()
    assert _torch_env.THP_VARIABLE not in os.environ


def test_mode_reads_the_bracketed_choice(tmp_path, monkeypatch):
    sysfs = tmp_path / "enabled"
    sysfs.write_text("always [madvise] never\n")
    monkeypatch.setattr(_heap, "THP_SYSFS", str(sysfs))
    assert _heap.huge_pages_mode() == "madvise"
    sysfs.write_text("[always] madvise never\n")
    assert _heap.huge_pages_mode() == "always"
    monkeypatch.setattr(_heap, "THP_SYSFS", str(tmp_path / "missing"))
    assert _heap.huge_pages_mode() is None
    assert not _heap.huge_pages_active()


_PROBE = """
    import json, logging, resource
    {first}
    import cellformers
    import torch
    from cellformers._utils._heap import huge_pages_active, retained_heap

    def faults_of_a_fresh_block():
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        block = torch.ones(256 << 18)  # 256 MiB, written once: one fault per page mapped
        after = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        del block
        return after - before

    notes = []
    handler = logging.Handler()
    handler.emit = lambda record: notes.append(record.getMessage())
    logging.getLogger("cellformers._utils._heap").addHandler(handler)
    with retained_heap(False):  # where training and the getters say when huge pages were asked for too late
        pass
    print(json.dumps({{
        "active": huge_pages_active(),
        "faults": min(faults_of_a_fresh_block() for _ in range(3)),
        "noted": any("THP_MEM_ALLOC_ENABLE=1" in note for note in notes),
    }}))
"""


@linux_madvise
def test_importing_cellformers_first_gives_large_tensors_huge_pages():
    on = _run(_PROBE.format(first=""))
    off = _run(_PROBE.format(first=""), **{_torch_env.THP_VARIABLE: "0"})
    late = _run(_PROBE.format(first="import torch; torch.ones(1 << 20)"))  # torch allocated before the request
    assert (on["active"], off["active"], late["active"]) == (True, False, False)
    assert (on["noted"], off["noted"], late["noted"]) == (False, False, True)  # the user's "0" is not nagged
    pages_4k = (256 << 20) // 4096
    assert off["faults"] >= pages_4k // 2
    # 2 MiB pages: ~128 faults; the kernel may fall back to 4 KiB pages where it finds no free huge page
    assert on["faults"] < off["faults"] // 4, (on, off)
