"""Per-cell random generators, so that randomness does not depend on batch size, chunking or cell order."""

from __future__ import annotations

import hashlib

import numpy as np

from cellformers._settings import settings


def cell_seed(cell_name: str, *, seed: int | None = None, salt: str = "") -> int:
    """A 64-bit seed derived from the global seed, a purpose string and the cell name."""
    base = settings.seed if seed is None else seed
    digest = hashlib.blake2b(f"{base}\x00{salt}\x00{cell_name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


def cell_generator(cell_name: str, *, seed: int | None = None, salt: str = "") -> np.random.Generator:
    """A NumPy generator seeded by :func:`cell_seed`."""
    return np.random.default_rng(cell_seed(cell_name, seed=seed, salt=salt))


_MASK64 = (1 << 64) - 1


def _to_signed(x: int) -> int:
    x &= _MASK64
    return x - (1 << 64) if x >= 1 << 63 else x


# splitmix64 constants as signed int64 (torch has no uint64 arithmetic); multiplication wraps modulo 2**64.
_GOLDEN = _to_signed(0x9E3779B97F4A7C15)
_MIX1 = _to_signed(0xBF58476D1CE4E5B9)
_MIX2 = _to_signed(0x94D049BB133111EB)


def _srl(x, k: int):
    """Logical right shift of int64 tensors (``>>`` is arithmetic on signed ints)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def counter_uniform(cell_seeds, n: int, *, salt: int = 0):
    """Uniform ``[0, 1)`` numbers that depend only on (cell seed, position, salt): a counter-based generator.

    Unlike a stateful generator, the numbers for a cell do not change with batch composition, batch size or cell
    order, so seeded masking and subsampling are reproducible per cell.

    Parameters
    ----------
    cell_seeds
        Integer tensor of shape ``(batch,)``, e.g. the registered per-cell seeds.
    n
        Numbers per cell.
    salt
        Distinguishes independent streams (e.g. masking vs subsampling).

    Returns
    -------
    Float tensor of shape ``(batch, n)`` on the device of ``cell_seeds``.
    """
    import torch

    seeds = cell_seeds.to(torch.int64).reshape(-1, 1)
    pos = torch.arange(n, device=seeds.device, dtype=torch.int64).reshape(1, -1)
    x = seeds * _GOLDEN + (pos + 1) * _MIX2 + _to_signed(int(salt) * _MIX1)
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _MIX1
    x = (x ^ _srl(x, 27)) * _MIX2
    x = x ^ _srl(x, 31)
    # top 24 bits -> exactly representable float32 in [0, 1)
    return _srl(x, 40).to(torch.float32) / float(1 << 24)
