"""Minibatch samplers that keep each minibatch within one group (e.g. one sequencing batch, for DSBN)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi import REGISTRY_KEYS
from scvi.dataloaders import AnnDataLoader, DataSplitter
from torch.utils.data import Sampler, default_convert

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from scvi.data import AnnDataManager

logger = logging.getLogger(__name__)

__all__ = ["BatchGroupedAnnDataLoader", "BatchGroupedDataSplitter", "BatchGroupedSampler"]


class BatchGroupedSampler(Sampler[list[int]]):
    """Yield minibatches of dataset positions that all share one group label.

    Positions are shuffled within each group, cut into minibatches of ``batch_size``, and the minibatches of all
    groups are shuffled together (scGPT's ``SubsetsBatchSampler`` with intra- and inter-subset shuffling). Each
    epoch draws from the torch default generator, so ``scvi.settings.seed`` makes it reproducible.

    Parameters
    ----------
    groups
        Group label of each dataset position.
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle within groups and the order of the minibatches.
    drop_last
        Drop the last, smaller minibatch of each group.

    Examples
    --------
    >>> import cellformers as cf
    >>> groups = ["a", "a", "a", "a", "a", "b", "b", "b"]
    >>> list(cf.train.BatchGroupedSampler(groups, batch_size=2, shuffle=False))
    [[0, 1], [2, 3], [4], [5, 6], [7]]
    >>> batches = list(cf.train.BatchGroupedSampler(groups, batch_size=2))  # shuffled within and across groups
    >>> all(len({groups[i] for i in batch}) == 1 for batch in batches)
    True
    """

    def __init__(self, groups: Sequence | np.ndarray, batch_size: int, shuffle: bool = True, drop_last: bool = False):
        if batch_size < 1:
            msg = f"`batch_size` must be >= 1, got {batch_size}."
            raise ValueError(msg)
        groups = np.asarray(groups).reshape(-1)
        self.batch_size = int(batch_size)
        self.shuffle = bool(shuffle)
        self.drop_last = bool(drop_last)
        _, codes = np.unique(groups, return_inverse=True)
        self._members = [np.flatnonzero(codes == g) for g in range(codes.max(initial=-1) + 1)]

    def _n_batches(self, n: int) -> int:
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def __len__(self) -> int:
        return sum(self._n_batches(m.size) for m in self._members)

    def __iter__(self) -> Iterator[list[int]]:
        chunks: list[np.ndarray] = []
        for members in self._members:
            if self.shuffle:
                members = members[torch.randperm(members.size).numpy()]
            for start in range(0, self._n_batches(members.size) * self.batch_size, self.batch_size):
                chunks.append(members[start : start + self.batch_size])
        order = torch.randperm(len(chunks)).tolist() if self.shuffle else range(len(chunks))
        for i in order:
            yield chunks[i].tolist()


def _unwrap(items: list):
    # The sampler yields whole minibatches and the DataLoader wraps each in a list of one.
    return default_convert(items[0])


class BatchGroupedAnnDataLoader(AnnDataLoader):
    """:class:`~scvi.dataloaders.AnnDataLoader` whose minibatches each come from one category of a registered field.

    Parameters
    ----------
    adata_manager
        Manager of the registered ``AnnData``.
    indices
        Cells to load.
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle within groups and the order of the minibatches.
    drop_last
        Drop the last, smaller minibatch of each group.
    group_key
        Registry key whose categories define the groups (the batch by default).
    **kwargs
        Passed to :class:`~scvi.dataloaders.AnnDataLoader`.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)  # two batches
    >>> cf.model.ScFormer.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> loader = cf.train.BatchGroupedAnnDataLoader(model.adata_manager, batch_size=16, shuffle=True)
    >>> all(minibatch["batch"].unique().numel() == 1 for minibatch in loader)
    True
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: Sequence[int] | np.ndarray | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        group_key: str = REGISTRY_KEYS.BATCH_KEY,
        **kwargs,
    ):
        if kwargs.pop("distributed_sampler", False):
            msg = "Batch-grouped minibatches cannot be combined with a distributed sampler; train on one device."
            raise ValueError(msg)
        kwargs.pop("sampler", None)
        n_obs = adata_manager.adata.n_obs
        if indices is None:
            indices = np.arange(n_obs)
        else:
            indices = np.asarray(indices)
            if indices.dtype == bool:
                indices = np.flatnonzero(indices)
        groups = np.asarray(adata_manager.get_from_registry(group_key)).reshape(n_obs, -1)[indices, 0]
        sampler = BatchGroupedSampler(groups, batch_size=batch_size, shuffle=shuffle, drop_last=drop_last)
        super().__init__(
            adata_manager,
            indices=indices,
            batch_size=batch_size,
            shuffle=False,
            sampler=sampler,
            drop_last=False,
            collate_fn=_unwrap,
            **kwargs,
        )


class BatchGroupedDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` that can keep each training minibatch within one batch.

    Parameters
    ----------
    adata_manager
        Manager of the registered ``AnnData``.
    group_by_batch
        Training minibatches each hold cells of a single batch (needed by scFormer's domain-specific batch norm as
        in scGPT). Validation and test loaders are not grouped.
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter`.

    Examples
    --------
    ``ScFormer.train(group_by_batch=True)`` uses it (the default with domain-specific batch norm):

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)  # two batches
    >>> cf.model.ScFormer.setup_anndata(adata, batch_key="batch")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> splitter = cf.train.BatchGroupedDataSplitter(model.adata_manager, group_by_batch=True, batch_size=16)
    >>> splitter.setup()
    >>> all(minibatch["batch"].unique().numel() == 1 for minibatch in splitter.train_dataloader())
    True
    """

    def __init__(self, adata_manager: AnnDataManager, *args, group_by_batch: bool = False, **kwargs):
        super().__init__(adata_manager, *args, **kwargs)
        self.group_by_batch = bool(group_by_batch)

    def train_dataloader(self):
        """Training loader, batch-grouped when ``group_by_batch``."""
        if not self.group_by_batch:
            return super().train_dataloader()
        return BatchGroupedAnnDataLoader(
            self.adata_manager,
            indices=self.train_idx,
            shuffle=True,
            drop_last=self.drop_last,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            **self.data_loader_kwargs,
        )
