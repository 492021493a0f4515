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


#: Bits kept of a cell's :func:`cell_seed` for its registered seed: the seed travels through scvi-tools' float32
#: registry, which holds integers exactly up to ``2**24``.
CELL_SEED_BITS = 24


def registered_cell_seeds(cell_names, *, seed: int | None = None) -> np.ndarray:
    """The per-cell seeds the models register and their modules read (``float32``, exact integers below ``2**24``).

    One formula for every place that needs a cell's seed from its name: the models' seed column, the pre-training
    corpus and :func:`cellformers.data.bin_expression`, so a cell gets the same seeded draws (masks, subsamples,
    tie-breaking of its bins) whichever path it takes.

    Parameters
    ----------
    cell_names
        Cell names (``adata.obs_names``).
    seed
        Global seed; ``None`` uses ``cellformers.settings.seed``.
    """
    names = list(cell_names)
    mod = 1 << CELL_SEED_BITS
    seeds = np.fromiter(
        (cell_seed(str(n), seed=seed, salt="cell") % mod for n in names), dtype=np.int64, count=len(names)
    )
    return seeds.astype(np.float32)


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


def counter_uniform_at(cell_seeds, positions, *, salt: int = 0):
    """:func:`counter_uniform` at given positions: the numbers of ``counter_uniform(cell_seeds, n)[i, positions[i, j]]``.

    Parameters
    ----------
    cell_seeds
        Integer tensor of shape ``(batch,)``.
    positions
        Integer tensor broadcastable to ``(batch, L)``: the positions (``0 … n-1``) to draw at.
    salt
        As in :func:`counter_uniform`.

    Returns
    -------
    Float tensor of shape ``(batch, L)`` on the device of ``cell_seeds``.
    """
    import torch

    seeds = cell_seeds.to(torch.int64).reshape(-1, 1)
    pos = torch.as_tensor(positions, device=seeds.device).to(torch.int64)
    x = seeds * _GOLDEN + (pos + 1) * _MIX2 + _to_signed(int(salt) * _MIX1)
    x = x + _GOLDEN
    x = (x ^ _srl(x, 30)) * _MIX1
    x = (x ^ _srl(x, 27)) * _MIX2
    x = x ^ _srl(x, 31)
    # top 24 bits -> exactly representable float32 in [0, 1)
    return _srl(x, 40).to(torch.float32) / float(1 << 24)


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

    pos = torch.arange(n, device=cell_seeds.device, dtype=torch.int64).reshape(1, -1)
    return counter_uniform_at(cell_seeds, pos, salt=salt)
