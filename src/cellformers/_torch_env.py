"""What PyTorch reads from the environment once, at its first allocation: set before torch is imported.

This module imports nothing from torch (nor from the rest of the package, whose modules import torch), so that
``cellformers/__init__.py`` can run it first.
"""

from __future__ import annotations

import os
import sys

#: PyTorch's CPU allocator backs tensors of 2 MB or more with transparent huge pages (4 KiB-aligned blocks advised
#: ``MADV_HUGEPAGE``) when this variable is ``1`` at its first allocation. A fresh 225 MB block then costs ~110 page
#: faults instead of ~55,000: adding two ``(54,856, 1,024)`` float32 tensors into a fresh output took 28-30 ms instead
#: of 82-92 ms on a 2-core AMD EPYC virtual machine (docs/performance.md, "Page faults").
THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def request_huge_pages() -> None:
    """Ask PyTorch for transparent huge pages for large CPU tensors, unless the environment already says.

    Only Linux has them. A value the user set (``THP_MEM_ALLOC_ENABLE=0`` turns them off) is kept. It takes effect
    only if torch has not yet allocated a tensor in this process: :func:`cellformers._utils.huge_pages_active` tells.
    """
    if sys.platform.startswith("linux"):
        os.environ.setdefault(THP_VARIABLE, "1")
