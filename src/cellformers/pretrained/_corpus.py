"""The pretraining corpus: ``.h5ad`` files read backed, gene-mapped and quality-controlled, streamed in row blocks.

Each file is opened backed (read-only); one pass over its rows maps its genes to the reference vocabulary
(:func:`cellformers.pp.map_genes`), checks that it holds raw counts and applies the quality control of xTrimoGene
App. 1 (:func:`index_file`). :class:`CorpusDataModule` then streams row blocks in a shuffled order, reindexed to the
reference genes (genes a file lacks are zeros, App. 1), as the registered tensors the modules read; every rank of a
DDP run reads its own equal share of the cells. Used by :func:`cellformers.pretrained.pretrain`.

It sits beside the recipe rather than in ``cellformers.data`` because it maps genes with ``cellformers.pp``, which
imports ``cellformers.data``.
"""

from __future__ import annotations

import glob
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from scipy import sparse
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from cellformers._constants import VAR_KEYS
from cellformers._exceptions import GeneMappingError
from cellformers._utils import (
    cell_seed,
    check_block_values,
    check_counts,
    get_matrix,
    iter_row_chunks,
    registered_cell_seeds,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

__all__ = [
    "MIN_GENES",
    "CorpusDataModule",
    "CorpusDataset",
    "CorpusFile",
    "check_files_hold_counts",
    "index_file",
    "resolve_files",
    "sample_adata",
]

#: xTrimoGene App. 1: "we only keep samples with over 200 genes expressed".
MIN_GENES = 200


# ------------------------------------------------------------------------------------------------------ corpus
@dataclass
class CorpusFile:
    """One ``.h5ad`` file of the corpus after gene mapping and quality control.

    Attributes
    ----------
    path
        The file.
    layer
        Layer holding the raw counts (``None``: ``X``).
    src, dst
        Columns of the file that map to the vocabulary, and the vocabulary gene of each.
    rows
        Kept cells (row indices, ascending).
    seeds
        Per-cell seed of each kept cell (as ``setup_anndata`` computes it from the cell name).
    validation
        Whether each kept cell is held out for validation.
    n_obs
        Cells in the file.
    """

    path: Path
    layer: str | None
    src: np.ndarray
    dst: np.ndarray
    rows: np.ndarray
    seeds: np.ndarray
    validation: np.ndarray
    n_obs: int


def resolve_files(data: Sequence[str | os.PathLike]) -> list[Path]:
    """The ``.h5ad`` files named by ``data``: files, folders (their ``*.h5ad``, sorted) or glob patterns."""
    files: list[Path] = []
    for item in data:
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(path.glob("*.h5ad"))
            if not found:
                msg = f"`--data` folder {path} holds no .h5ad file."
                raise FileNotFoundError(msg)
            files += found
        elif path.is_file():
            files.append(path)
        else:
            matches = sorted(Path(p) for p in glob.glob(str(path)))
            if not matches:
                msg = f"`--data` {item!r} is neither a file, a folder nor a glob pattern matching .h5ad files."
                raise FileNotFoundError(msg)
            files += matches
    unique = list(dict.fromkeys(p.resolve() for p in files))
    if not unique:
        msg = "`--data` names no .h5ad file."
        raise FileNotFoundError(msg)
    return unique


def _read_backed(path: Path) -> AnnData:
    import anndata

    try:
        return anndata.read_h5ad(path, backed="r")
    except (OSError, ValueError, KeyError) as err:
        msg = f"Cannot open {path} as an .h5ad file ({type(err).__name__}: {err})."
        raise ValueError(msg) from err


def check_files_hold_counts(files: Sequence[Path], layer: str | None, n_rows: int = 2048) -> None:
    """Fail fast, before any download, when the first rows of a file are not raw counts (all rows are checked later)."""
    for path in files:
        adata = _read_backed(path)
        try:
            X = get_matrix(adata, layer)
            try:
                check_counts(X[: min(n_rows, adata.n_obs)], layer=layer)
            except ValueError as err:
                msg = f"{path}: {err}"
                raise type(err)(msg) from err
        finally:
            adata.file.close()


def index_file(
    path: Path,
    vocab: GeneVocab,
    *,
    layer: str | None = None,
    gene_symbols: str | None = None,
    case_sensitive: bool = True,
    min_coverage: float = 0.0,
    min_genes: int = MIN_GENES,
    max_cells: int | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    chunk_size: int = 4096,
) -> CorpusFile:
    """Map a file's genes to ``vocab`` and apply App. 1's quality control, reading it backed in row chunks.

    A cell is kept when more than ``min_genes`` of its genes are expressed *and* in the vocabulary (QC after the
    mapping to the reference list, App. 1). ``max_cells`` keeps a seeded random subset of the kept cells.
    """
    from cellformers.pp import map_genes

    adata = _read_backed(path)
    try:
        map_genes(adata, vocab, gene_symbols=gene_symbols, case_sensitive=case_sensitive, min_coverage=min_coverage)
        ids = adata.var[VAR_KEYS.TOKEN_ID].to_numpy(dtype=np.int64)
        src = np.flatnonzero(ids >= 0)
        if src.size == 0:
            msg = (
                f"No gene of {path} is in the vocabulary {vocab.name or ''!r}; check `--gene-symbols` (the column "
                "with gene symbols) or `--vocab`."
            )
            raise GeneMappingError(msg)
        X = get_matrix(adata, layer)
        where = f"{path.name}: " + ("adata.X" if layer is None else f"adata.layers[{layer!r}]")
        in_vocab = np.zeros(adata.n_vars, dtype=bool)
        in_vocab[src] = True
        n_expr = np.zeros(adata.n_obs, dtype=np.int64)
        for start, stop, block in iter_row_chunks(X, chunk_size=chunk_size):
            csr = block if sparse.issparse(block) else sparse.csr_matrix(block)
            try:  # every chunk: a file may concatenate raw and normalized cells
                check_counts(csr, layer=layer)
            except ValueError as err:
                msg = f"{path} (rows {start}–{stop - 1}): {err}"
                raise type(err)(msg) from err
            check_block_values(csr, arg=where, row_offset=start)
            keep_entry = (csr.data != 0) & in_vocab[csr.indices]
            rows = np.repeat(np.arange(stop - start), np.diff(csr.indptr))
            n_expr[start:stop] = np.bincount(rows[keep_entry], minlength=stop - start)
        kept = np.flatnonzero(n_expr > min_genes)
        logger.info(
            f"{path.name}: {src.size} of {adata.n_vars} genes in the vocabulary; {kept.size} of {adata.n_obs} cells "
            f"with more than {min_genes} expressed vocabulary genes"
        )
        if max_cells is not None and kept.size > max_cells:
            rng = np.random.default_rng([seed, cell_seed(path.name, salt="pretrain-subsample") % (1 << 31)])
            kept = np.sort(rng.choice(kept, size=max_cells, replace=False))
        names = np.asarray(adata.obs_names)[kept]
    finally:
        if adata.file is not None:
            adata.file.close()
    seeds = registered_cell_seeds(names)  # the seed the models register for the same cell
    threshold = round(val_fraction * 10_000)
    validation = np.fromiter(
        (cell_seed(f"{path.name}/{n}", salt="pretrain-validation") % 10_000 < threshold for n in names),
        dtype=bool,
        count=len(names),
    )
    return CorpusFile(
        path=path,
        layer=layer,
        src=src,
        dst=ids[src],
        rows=kept,
        seeds=seeds,
        validation=validation,
        n_obs=int(adata.n_obs),
    )


def _read_rows(X, rows: np.ndarray, max_gap: int = 32) -> sparse.csr_matrix:
    """Rows ``rows`` (ascending) of a (backed) matrix as CSR, read in contiguous slices split at gaps > ``max_gap``.

    A slice never spans more than ``(max_gap + 1)`` times the rows it serves, so a sparse subset of a large file is
    not read whole.
    """
    parts = []
    for group in np.split(rows, np.flatnonzero(np.diff(rows) > max_gap) + 1):
        block = X[int(group[0]) : int(group[-1]) + 1]
        block = block.to_memory() if hasattr(block, "to_memory") else block
        parts.append(sparse.csr_matrix(block)[group - group[0]])
    return parts[0] if len(parts) == 1 else sparse.vstack(parts, format="csr")


def _reindexed(block, corpus: CorpusFile, n_genes: int) -> np.ndarray:
    """Dense float32 rows over the vocabulary's genes (absent genes are zeros)."""
    from cellformers.pp._align import _reindex_columns

    csr = block if sparse.issparse(block) else sparse.csr_matrix(block)
    return np.asarray(_reindex_columns(csr, corpus.src, corpus.dst, n_genes).toarray(), dtype=np.float32)


def sample_adata(corpus: list[CorpusFile], vocab: GeneVocab, n_cells: int, *, seed: int = 0) -> AnnData:
    """Up to ``n_cells`` training cells of the corpus (spread over its files) over the vocabulary's genes, in memory.

    The models are built on it (``setup_anndata``, data-fitted initializations such as scPaLM's per-gene output
    biases); it is small and is the ``adata`` of the returned model.
    """
    from anndata import AnnData

    totals = np.array([int((~c.validation).sum()) for c in corpus])
    if totals.sum() == 0:
        msg = "No training cell passed the quality control; lower `--min-genes` or check the data."
        raise ValueError(msg)
    share = np.minimum(totals, np.ceil(n_cells * totals / totals.sum()).astype(int))
    blocks, names, seeds = [], [], []
    rng = np.random.default_rng(seed)
    for c, k in zip(corpus, share, strict=True):
        if k == 0:
            continue
        pos = np.sort(rng.choice(np.flatnonzero(~c.validation), size=int(k), replace=False))
        rows = c.rows[pos]
        adata = _read_backed(c.path)
        try:
            block = _read_rows(get_matrix(adata, c.layer), rows)
            obs = np.asarray(adata.obs_names)[rows]
        finally:
            if adata.file is not None:
                adata.file.close()
        blocks.append(sparse.csr_matrix(_reindexed(block, c, vocab.n_genes)))
        names += [f"{c.path.stem}:{n}" for n in obs]
        seeds.append(c.seeds[pos])
    X = sparse.vstack(blocks).tocsr()
    var = pd.DataFrame(index=pd.Index(vocab.genes, dtype=object))
    var[VAR_KEYS.TOKEN_ID] = np.arange(vocab.n_genes, dtype=np.int64)
    obs = pd.DataFrame(index=pd.Index(names, dtype=object))
    return AnnData(X=X, obs=obs, var=var)


# ------------------------------------------------------------------------------------------------------ streaming
class CorpusDataset(IterableDataset):
    """Stream the cells of a corpus as minibatch-ready tensors over the vocabulary's genes.

    Per epoch the files' cells are cut into blocks of ``block_size`` consecutive kept rows; the blocks are shuffled
    (training), laid end to end, and split into ``world_size`` equal contiguous shares (the remainder is dropped, so
    every DDP rank runs the same number of steps); each DataLoader worker reads a contiguous part of its rank's share.
    A block is read in a few backed slices (``_read_rows``) and its rows are shuffled. Each item is a dict with the
    registry keys the modules read (``X`` counts, ``batch``, ``labels``, ``cell_seed``).

    Parameters
    ----------
    corpus
        Indexed files.
    n_genes
        Genes of the vocabulary (width of ``X``).
    split
        ``"train"`` or ``"validation"`` cells.
    shuffle
        Shuffle blocks and rows (training).
    block_size
        Rows read at once.
    seed
        Seed of the shuffles (combined with the epoch).
    """

    def __init__(
        self,
        corpus: list[CorpusFile],
        n_genes: int,
        *,
        split: Literal["train", "validation"] = "train",
        shuffle: bool = True,
        block_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.corpus = corpus
        self.n_genes = int(n_genes)
        self.split = split
        self.shuffle = shuffle
        self.block_size = int(block_size)
        self.seed = int(seed)
        self.epoch = 0
        self.rank = 0
        self.world_size = 1
        self._positions = [np.flatnonzero(c.validation == (split == "validation")) for c in corpus]
        self.n_cells = int(sum(p.size for p in self._positions))

    def __len__(self) -> int:
        return self.n_cells // self.world_size

    def _order(self) -> tuple[np.ndarray, np.ndarray]:
        """``(file index, position among the file's kept cells)`` of every cell of this epoch, in reading order."""
        blocks = []
        for f, pos in enumerate(self._positions):
            for start in range(0, pos.size, self.block_size):
                blocks.append((f, pos[start : start + self.block_size]))
        if self.shuffle:
            rng = np.random.default_rng([self.seed, self.epoch])
            blocks = [blocks[i] for i in rng.permutation(len(blocks))]
        if not blocks:
            return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        files = np.concatenate([np.full(b.size, f, dtype=np.int64) for f, b in blocks])
        cells = np.concatenate([b for _, b in blocks])
        return files, cells

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        files, cells = self._order()
        share = len(self)
        lo = self.rank * share
        files, cells = files[lo : lo + share], cells[lo : lo + share]
        info = get_worker_info()
        if info is not None:
            part = np.array_split(np.arange(files.size), info.num_workers)[info.id]
            files, cells = files[part], cells[part]
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, 0 if info is None else info.id + 1])
        handles: dict[int, Any] = {}
        try:
            start = 0
            while start < files.size:
                f = files[start]
                stop = start + 1
                while stop < files.size and files[stop] == f and stop - start < self.block_size:
                    stop += 1
                corpus = self.corpus[f]
                pos = cells[start:stop]
                if f not in handles:
                    handles[f] = _read_backed(corpus.path)
                rows = corpus.rows[pos]
                order = np.argsort(rows, kind="stable")
                rows, pos = rows[order], pos[order]
                dense = _reindexed(_read_rows(get_matrix(handles[f], corpus.layer), rows), corpus, self.n_genes)
                perm = rng.permutation(dense.shape[0]) if self.shuffle else np.arange(dense.shape[0])
                for i in perm:
                    yield {
                        "X": torch.from_numpy(dense[i]),
                        "batch": torch.zeros(1),
                        "labels": torch.zeros(1),
                        "cell_seed": torch.tensor([corpus.seeds[pos[i]]], dtype=torch.float32),
                    }
                start = stop
        finally:
            for h in handles.values():
                if h.file is not None:
                    h.file.close()


class CorpusDataModule(LightningDataModule):
    """Lightning data module over an indexed corpus (train and validation streams).

    The rank and world size are taken from the trainer in :meth:`setup`; the epoch (for the shuffles) when Lightning
    asks for the training loader, which it does every epoch (``reload_dataloaders_every_n_epochs=1``).
    """

    def __init__(
        self,
        corpus: list[CorpusFile],
        n_genes: int,
        *,
        batch_size: int = 64,
        num_workers: int = 0,
        block_size: int = 256,
        seed: int = 0,
    ):
        super().__init__()
        self.corpus = corpus
        self.n_genes = n_genes
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.block_size = int(block_size)
        self.seed = int(seed)
        self.rank, self.world_size = 0, 1

    def setup(self, stage: str | None = None) -> None:
        """Read the rank and world size of this process."""
        if self.trainer is not None:
            self.rank, self.world_size = int(self.trainer.global_rank), int(self.trainer.world_size)

    def _loader(self, split: Literal["train", "validation"]) -> DataLoader:
        ds = CorpusDataset(
            self.corpus,
            self.n_genes,
            split=split,
            shuffle=split == "train",
            block_size=self.block_size,
            seed=self.seed,
        )
        ds.rank, ds.world_size = self.rank, self.world_size
        ds.epoch = int(self.trainer.current_epoch) if self.trainer is not None else 0
        if split == "train" and len(ds) < 1:
            msg = f"{ds.n_cells} training cells cannot be shared by {self.world_size} processes."
            raise ValueError(msg)
        return DataLoader(ds, batch_size=self.batch_size, num_workers=self.num_workers, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        """The shuffled training stream of this rank."""
        return self._loader("train")

    def val_dataloader(self) -> DataLoader:
        """The validation stream of this rank."""
        return self._loader("validation")
