"""Token and data preparation shared by the modules: seeded draws, ranks, packing and scattering back to genes.

Every module prepares its minibatch on the device, inside ``forward`` (``../shared/DESIGN.md``), from the same few
operations; they live here once so that the models draw, rank and pack the same way. Normalization and the
train/eval draw, which need the module's genes and mode, are methods of
:class:`~cellformers.module.GeneTokenModule` built on these functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from cellformers._utils import counter_uniform

if TYPE_CHECKING:
    from torch import Tensor


def uniform_draws(
    cell_seed: Tensor | None,
    n: int,
    salt: int,
    *,
    n_cells: int,
    device: torch.device | str,
    seeded: bool,
) -> Tensor:
    """Uniform ``[0, 1)`` numbers ``(n_cells, n)``: per-cell seeded draws, or torch's generator.

    Parameters
    ----------
    cell_seed
        Registered per-cell seeds, any shape with ``n_cells`` elements; ``None`` always uses torch's generator.
    n
        Numbers per cell.
    salt
        Stream of :func:`~cellformers._utils.counter_uniform` (independent draws for masks, subsamples, ...).
    n_cells
        Number of cells.
    device
        Device of the result.
    seeded
        Draw from the cell's seed (:func:`~cellformers._utils.counter_uniform`: the numbers of a cell do not depend on
        the minibatch), rather than from torch's generator (fresh numbers at every call, as training wants).
    """
    if not seeded or cell_seed is None:
        return torch.rand(n_cells, n, device=device)
    return counter_uniform(cell_seed.reshape(-1), n, salt=salt).to(device)


def ranks(score: Tensor) -> Tensor:
    """Rank of each entry within its row, ``0`` for the smallest (``argsort(argsort(score))``, without the second sort).

    Ties are ranked in the order of :func:`torch.argsort` (not stable), as every module did before this helper.
    """
    order = torch.argsort(score, dim=1)
    n = score.shape[1]
    return torch.empty_like(order).scatter_(1, order, torch.arange(n, device=score.device).expand_as(order))


def equal_groups(u: Tensor, n_groups: int) -> Tensor:
    """Split each row into ``n_groups`` groups of sizes that differ by at most one, by the rank of ``u``.

    Returns the group (``0 … n_groups-1``) of each entry, ``(batch, n)``; with per-cell seeded ``u`` the split of a
    cell does not depend on the minibatch.
    """
    return ranks(u) * n_groups // u.shape[1]


def pack_left(keep: Tensor) -> tuple[Tensor, Tensor]:
    """Left-pack the kept positions of each row, in their order, loop-free.

    Parameters
    ----------
    keep
        Boolean ``(batch, n)``.

    Returns
    -------
    ``index`` ``(batch, length)``: the kept positions of each row first, in increasing order, then other positions
    (padding); ``padding`` ``(batch, length)``, ``True`` at padding. ``length`` is the most kept positions of a row
    (at least one).
    """
    b, n = keep.shape
    n_keep = keep.sum(-1)
    length = min(max(int(n_keep.max()) if b else 0, 1), n)
    # a stable sort of "not kept" puts the kept positions first and keeps their order
    index = torch.sort((~keep).to(torch.int8), dim=-1, stable=True).indices[:, :length]
    padding = torch.arange(length, device=keep.device)[None, :] >= n_keep[:, None]
    return index, padding


def scatter_to_genes(genes: Tensor, index: Tensor, src: Tensor) -> Tensor:
    """Write per-position values back to their genes: ``genes[i, index[i, j]] = src[i, j]``.

    Parameters
    ----------
    genes
        ``(batch, n_genes, ...)`` values the positions are written into (returned as a new tensor).
    index
        ``(batch, L)`` gene of each position; positions outside ``0 … n_genes-1`` (padding, ``-1`` or ``n_genes``)
        are dropped.
    src
        ``(batch, L, ...)`` values of the positions.

    Returns
    -------
    ``(batch, n_genes, ...)``.
    """
    g = genes.shape[1]
    # dropped positions write into an extra dump column, so no two writes hit the same gene
    idx = torch.where((index >= 0) & (index < g), index, torch.full_like(index, g))
    idx = idx.reshape(*idx.shape, *([1] * (src.dim() - 2))).expand_as(src)
    buf = torch.cat([genes, genes[:, :1]], 1)
    return buf.scatter(1, idx, src)[:, :g]
