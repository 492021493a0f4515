"""Per-cell random generators, so that randomness does not depend on batch size, chunking or cell order."""

from __future__ import annotations

import hashlib

import numpy as np

from .._settings import settings


def cell_seed(cell_name: str, *, seed: int | None = None, salt: str = "") -> int:
    """A 64-bit seed derived from the global seed, a purpose string and the cell name."""
    base = settings.seed if seed is None else seed
    digest = hashlib.blake2b(f"{base}\x00{salt}\x00{cell_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def cell_generator(cell_name: str, *, seed: int | None = None, salt: str = "") -> np.random.Generator:
    """A NumPy generator seeded by :func:`cell_seed`."""
    return np.random.default_rng(cell_seed(cell_name, seed=seed, salt=salt))
