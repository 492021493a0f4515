"""The data side of scFormer's perturbation model: perturbed genes of a label, DE genes, control-cell pairing."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch
from lightning.pytorch import LightningDataModule
from scvi import REGISTRY_KEYS
from torch.utils.data import DataLoader

from cellformers._constants import REGISTRY_KEYS_CF
from cellformers._utils import counter_uniform
from cellformers.module._scformer_perturbation import PERTURBATION_KEYS

if TYPE_CHECKING:
    from scvi.data import AnnDataManager

__all__ = ["PairedControlDataModule", "perturbed_genes", "top_de_genes"]

_SALT_PAIR = 21  # counter_uniform salt of the evaluation-time pairing (22 picks control cells in the model)


def perturbed_genes(label: str, control: str = "ctrl") -> list[str]:
    """Genes of a perturbation label: ``"A+B"`` -> ``["A", "B"]``; ``"A+ctrl"`` -> ``["A"]``; control -> ``[]``."""
    return [g for g in (p.strip() for p in str(label).split("+")) if g and g != control]


def top_de_genes(cells: np.ndarray, control: np.ndarray, n: int = 20) -> np.ndarray:
    """Columns of the ``n`` genes with the largest absolute Welch t statistic between two groups of rows."""
    m1, m0 = cells.mean(0), control.mean(0)
    v1, v0 = cells.var(0, ddof=1) if len(cells) > 1 else 0.0, control.var(0, ddof=1) if len(control) > 1 else 0.0
    se = np.sqrt(v1 / max(len(cells), 1) + v0 / max(len(control), 1))
    t = np.where(se > 0, (m1 - m0) / np.where(se > 0, se, 1.0), 0.0)
    return np.argsort(-np.abs(t), kind="stable")[:n]


class PairedControlDataModule(LightningDataModule):
    """Minibatches of (control cell, perturbed cell) pairs from one registered AnnData.

    Each perturbed cell of the split is paired with a control cell of its pairing group (e.g. the same cell type):
    a fresh random one in every training epoch, a fixed one drawn from the perturbed cell's seed for validation.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_idx: np.ndarray,
        val_idx: np.ndarray,
        control_pools: dict[int, np.ndarray],
        groups: np.ndarray,
        batch_size: int,
    ):
        super().__init__()
        self.adata_manager = adata_manager
        self.train_idx, self.val_idx = np.asarray(train_idx), np.asarray(val_idx)
        self.control_pools, self.groups = control_pools, groups
        self.batch_size = int(batch_size)
        self.n_obs = len(self.train_idx)
        self._dataset = adata_manager.create_torch_dataset(
            data_and_attributes=[REGISTRY_KEYS.X_KEY, REGISTRY_KEYS_CF.CELL_SEED, PERTURBATION_KEYS.PERTURBED_GENES]
        )
        seeds = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS_CF.CELL_SEED)).reshape(-1)
        self._seeds = seeds

    def _rows(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        uniq, inv = np.unique(idx, return_inverse=True)
        data = self._dataset[uniq.tolist()]
        return {k: np.asarray(v)[inv] for k, v in data.items()}

    def _controls(self, targets: np.ndarray, random: bool) -> np.ndarray:
        out = np.empty(len(targets), dtype=np.int64)
        if random:
            u = torch.rand(len(targets)).numpy()
        else:
            u = counter_uniform(torch.as_tensor(self._seeds[targets]), 1, salt=_SALT_PAIR).numpy()[:, 0]
        for i, (t, ui) in enumerate(zip(targets, u, strict=True)):
            pool = self.control_pools[int(self.groups[t])]
            out[i] = pool[min(int(ui * len(pool)), len(pool) - 1)]
        return out

    def _collate(self, positions: list[int], idx: np.ndarray, random: bool) -> dict[str, torch.Tensor]:
        targets = idx[np.asarray(positions)]
        controls = self._controls(targets, random)
        tgt, ctl = self._rows(targets), self._rows(controls)
        return {
            REGISTRY_KEYS.X_KEY: torch.as_tensor(ctl[REGISTRY_KEYS.X_KEY], dtype=torch.float32),
            REGISTRY_KEYS_CF.CELL_SEED: torch.as_tensor(ctl[REGISTRY_KEYS_CF.CELL_SEED], dtype=torch.float32),
            PERTURBATION_KEYS.TARGET_X: torch.as_tensor(tgt[REGISTRY_KEYS.X_KEY], dtype=torch.float32),
            PERTURBATION_KEYS.TARGET_SEED: torch.as_tensor(tgt[REGISTRY_KEYS_CF.CELL_SEED], dtype=torch.float32),
            PERTURBATION_KEYS.PERTURBED_GENES: torch.as_tensor(tgt[PERTURBATION_KEYS.PERTURBED_GENES]),
        }

    def train_dataloader(self):
        """Shuffled pairs, a new control partner every epoch."""
        idx = self.train_idx
        return DataLoader(
            range(len(idx)), batch_size=self.batch_size, shuffle=True, collate_fn=lambda p: self._collate(p, idx, True)
        )

    def val_dataloader(self):
        """Fixed pairs."""
        if len(self.val_idx) == 0:
            return []
        idx = self.val_idx
        return DataLoader(
            range(len(idx)), batch_size=self.batch_size, collate_fn=lambda p: self._collate(p, idx, False)
        )
