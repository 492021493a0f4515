"""CPU memory while cellformers trains or infers: freed memory kept for reuse (glibc), transparent huge pages (Linux).

glibc serves every allocation above its mmap threshold (128 KiB, growing to at most 32 MiB) with fresh pages from
the kernel and hands them back when the block is freed. A training step of XTrimoGene allocates and frees tensors of
hundreds of MB (the decoder's activations over every gene, their gradients), so every step pays to map and zero the
same memory again: on a 2-core AMD EPYC (AVX2) virtual machine, adding two ``(54,856, 1,024)`` float32 tensors took
95 ms with a fresh output and 17 ms with a reused one, and an XTrimoGene-10M training step 11.5-13.7 s instead of
8.7-9.9 s (``docs/performance.md``, "Page faults"). Inside :func:`retained_heap` glibc keeps such blocks in its heap
and reuses them; on leaving it, the thresholds go back to what glibc's dynamic threshold grows to and
``malloc_trim`` returns the kept memory to the system.

Blocks above the region's threshold still come fresh from the kernel. With ``THP_MEM_ALLOC_ENABLE=1`` set before
PyTorch's first allocation, PyTorch asks for transparent huge pages for its tensors of 2 MB or more, so each fault
maps 2 MiB instead of 4 KiB; :func:`huge_pages_active` says whether it does. cellformers does not set it: it paid
only where blocks above the threshold dominate (docs/performance.md, "Page faults").
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import sys
import threading
from functools import lru_cache

from cellformers._settings import settings

logger = logging.getLogger(__name__)

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

#: Inside the region: blocks up to 64 MiB come from the heap, and freed memory is never trimmed. Larger blocks keep
#: their own mappings: the heap cannot always place a large block in the holes smaller ones left, and the resident
#: memory grows with every such miss. XTrimoGene-10M, 4 cells x 13,714 genes (2-core AMD EPYC): step 10.5 s and peak
#: 3.35 GB without reuse, 8.0-9.4 s and 3.7-3.9 GB with 64 MiB, 8.0 s and 4.0 GB with 256 MiB; at 19,264 genes and
#: batch 32 (decoder chunks of 4 cells) 256 MiB raised the peak to 9.8 GB (step 127 s), 64 MiB kept it at 6.9 GB as
#: without reuse (step 228 s): the training-memory estimate (6.5 GiB) must stay a bound.
RETAINED_MMAP_THRESHOLD = 64 << 20
RETAINED_TRIM_THRESHOLD = (1 << 31) - 1
#: On leaving it: the largest mmap threshold glibc's dynamic threshold takes on 64-bit systems, and the trim threshold
#: it pairs with it (twice the mmap threshold), so the process behaves as a long-running numeric process would.
RESTORED_MMAP_THRESHOLD = 32 << 20
RESTORED_TRIM_THRESHOLD = 64 << 20

#: Environment variables by which a user tunes glibc's malloc: when one is set, the region leaves malloc alone.
USER_MALLOC_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")

#: Inside the region the kept memory fragments: minibatches of different lengths leave holes too small for the next
#: large blocks, and XTrimoGene-10M (13,714 genes, batch 4, 50 steps) grew from 2.5 to 7.0 GB resident, ~90 MB per
#: step, where it stayed at 0.9-1.6 GB without reuse. At each step boundary (:func:`release_fragmented_heap`) the
#: resident size is therefore compared with the first boundary after entering or after the last trim: above this
#: factor of it, ``malloc_trim`` hands the free memory back, and the next step maps its blocks afresh once.
HEAP_GROWTH_LIMIT = 1.25

_lock = threading.Lock()
_depth = 0
_rss_limit: float | None = None  # resident bytes above which the next boundary trims; None: set at the next one


@lru_cache(maxsize=1)
def _glibc() -> ctypes.CDLL | None:
    """The C library when it is glibc with ``mallopt`` and ``malloc_trim``, else ``None`` (musl, macOS, Windows)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION").startswith("glibc"):
            return None
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    except (OSError, ValueError, AttributeError):  # musl (no CS_GNU_LIBC_VERSION), no libc.so.6
        return None
    return libc


def _user_tuned_malloc() -> bool:
    return any(name in os.environ for name in USER_MALLOC_SETTINGS) or "glibc.malloc." in os.environ.get(
        "GLIBC_TUNABLES", ""
    )


#: PyTorch's CPU allocator aligns blocks of 2 MB or more to a page and advises ``MADV_HUGEPAGE`` for them when this
#: variable is ``1`` at its first allocation (read once per process).
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"
#: Where Linux says whether transparent huge pages are used: ``always``, ``madvise`` (only for memory advised
#: ``MADV_HUGEPAGE``, what PyTorch does with ``THP_MEM_ALLOC_ENABLE=1``) or ``never``, the current one in brackets.
THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/enabled"
#: Probe size: above every mmap threshold this module sets, so that glibc maps the block on its own and its address
#: shows the alignment PyTorch asked for (its pages are never touched, so nothing is committed).
_PROBE_BYTES = 80 << 20
_PAGE = 4096


def huge_pages_mode() -> str | None:
    """The kernel's transparent huge page mode (``"always"``, ``"madvise"``, ``"never"``), ``None`` if unknown."""
    try:
        with open(THP_SYSFS, encoding="ascii") as fh:
            text = fh.read()
    except OSError:
        return None
    start, end = text.find("["), text.find("]")
    return text[start + 1 : end] if 0 <= start < end else None


@lru_cache(maxsize=1)
def _torch_advises_huge_pages() -> bool:
    # PyTorch aligns a large block to the page only when it advises huge pages for it (c10's alloc_cpu); otherwise
    # to 64 bytes, and a block glibc maps on its own then starts 64 bytes into its first page. Three blocks held at
    # once: where malloc was tuned to serve such blocks from its heap, each is page-aligned by chance once in 64.
    import torch

    probes = [torch.empty(_PROBE_BYTES, dtype=torch.uint8) for _ in range(3)]
    return all(p.data_ptr() % _PAGE == 0 for p in probes)


def huge_pages_active() -> bool:
    """Whether PyTorch's large CPU tensors get transparent huge pages in this process (Linux).

    PyTorch asks for them, for tensors of 2 MB or more, when ``THP_MEM_ALLOC_ENABLE=1`` is in the environment at its
    first allocation (importing lightning or scvi allocates one): set it before starting Python. A fresh 256 MiB
    tensor then costs ~640 page faults instead of ~65,500. On a 2-core AMD EPYC an XTrimoGene-10M training step over
    19,264 genes at batch 32 took 160 s instead of 206 s; over 13,714 genes at batch 4, and embedding, it made no
    difference beyond the noise or was a few percent slower (``docs/performance.md``, "Page faults"), so cellformers
    leaves the choice to you. The kernel must offer them too (``always`` or ``madvise`` in
    ``/sys/kernel/mm/transparent_hugepage/enabled``).

    Returns
    -------
    ``True`` when the kernel backs all memory with huge pages (``always``), or does so on request (``madvise``) and
    PyTorch requests them; ``False`` elsewhere.

    Examples
    --------
    >>> import cellformers as cf
    >>> isinstance(cf.train.huge_pages_active(), bool)
    True
    """
    mode = huge_pages_mode()
    if mode == "always":
        return True
    return mode == "madvise" and _torch_advises_huge_pages()


def _resident_bytes() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def release_fragmented_heap() -> bool:
    """At a step boundary inside :func:`retained_heap`: trim the heap if the process grew past its bound.

    The first boundary after the region is entered (or after a trim) sets the bound to :data:`HEAP_GROWTH_LIMIT`
    times the resident size; a later boundary above it calls ``malloc_trim(0)``, which returns the free memory and
    keeps what is in use. Called between training steps (a callback ``train`` adds) and between the minibatches of
    the getters. Outside a region, or without glibc, it does nothing.

    Returns
    -------
    Whether the heap was trimmed.
    """
    global _rss_limit
    libc = _glibc()
    if _depth == 0 or libc is None:
        return False
    resident = _resident_bytes()
    if resident is None:
        return False
    with _lock:
        if _rss_limit is None:
            _rss_limit = HEAP_GROWTH_LIMIT * resident
            return False
        if resident <= _rss_limit:
            return False
        libc.malloc_trim(0)
        _rss_limit = None
    return True


def heap_retained() -> bool:
    """Whether a :func:`retained_heap` region is active (and acting) in this process."""
    return _depth > 0


@contextlib.contextmanager
def retained_heap(enabled: bool | None = None):
    """Keep freed memory in the process for reuse inside the ``with`` block (glibc; elsewhere a no-op).

    Regions nest: the outermost one sets and restores glibc's thresholds. Nothing changes where the C library is not
    glibc, where the user tuned malloc through ``MALLOC_*_`` variables or ``GLIBC_TUNABLES``, or when disabled.

    Parameters
    ----------
    enabled
        ``None``: :attr:`cellformers.settings.reuse_freed_memory`.
    """
    global _depth, _rss_limit
    if enabled is None:
        enabled = settings.reuse_freed_memory
    libc = _glibc() if enabled and not _user_tuned_malloc() else None
    if libc is None:
        yield
        return
    with _lock:
        _depth += 1
        if _depth == 1:
            _rss_limit = None
            ok = libc.mallopt(_M_MMAP_THRESHOLD, RETAINED_MMAP_THRESHOLD) and libc.mallopt(
                _M_TRIM_THRESHOLD, RETAINED_TRIM_THRESHOLD
            )
            if not ok:
                logger.debug("glibc refused the mmap/trim thresholds: freed memory is not kept")
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                libc.mallopt(_M_MMAP_THRESHOLD, RESTORED_MMAP_THRESHOLD)
                libc.mallopt(_M_TRIM_THRESHOLD, RESTORED_TRIM_THRESHOLD)
                libc.malloc_trim(0)
