"""``python -m cellformers pretrain``: pretrain a model on a corpus of ``.h5ad`` files streamed from disk.

The corpus is never loaded whole. Each file is opened backed (read-only); one pass over its rows maps its genes to
the model's reference vocabulary (:func:`cellformers.pp.map_genes`), checks that it holds raw counts and applies the
quality control of xTrimoGene App. 1 (cells with more than 200 expressed reference genes are kept). Training then
streams row blocks in a shuffled order, reindexed to the reference genes (genes the file lacks are zeros, App. 1),
through a Lightning DataModule passed to the model's own ``train`` (so precision, per-epoch checkpoints and resume,
seeding, progress bar and history are those of ``model.train``); every rank of a DDP run reads its own equal share
of the cells. Lightning checkpoints are written after every epoch (``--resume`` continues from the last one), and the trained model is written with :meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`,
packed into an archive with its sha256 (:func:`~cellformers.pretrained.pack_checkpoint`) and described by a
:class:`~cellformers.pretrained.PretrainedCard` ready for :func:`~cellformers.pretrained.register_pretrained`.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import warnings
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
from cellformers._exceptions import CheckpointError, GeneMappingError
from cellformers._settings import settings
from cellformers._utils import (
    cell_seed,
    check_block_values,
    check_counts,
    get_matrix,
    iter_row_chunks,
)

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

__all__ = ["PRETRAIN_MODELS", "PRETRAIN_MODEL_DEFAULTS", "PretrainResult", "pretrain"]

#: ``--model`` choices: the model class and its default reference vocabulary.
PRETRAIN_MODELS: dict[str, tuple[str, str]] = {
    "xtrimogene": ("XTrimoGene", "scfoundation-19264"),
    "scformer": ("ScFormer", "scgpt-default"),
    "scpalm": ("ScPaLM", "scfoundation-19264"),
}
#: xTrimoGene App. 1: "we only keep samples with over 200 genes expressed".
MIN_GENES = 200
#: Model options the command uses unless ``--model-kwargs`` sets them: scFormer is pretrained like scGPT, on each
#: cell's expressed genes, at most 1,200 (every gene of a 48,000-gene vocabulary per cell would not fit).
PRETRAIN_MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"scformer": {"include_zero_genes": False, "max_length": 1200}}
_CONFIG_FILE = "pretrain_config.json"
_HISTORY_FILE = "history.json"
_CKPT_DIR = "lightning"
_CHECKPOINT_DIR = "checkpoint"
# arguments that define the model and the data; a resumed run must use the same
_RESUME_KEYS = (
    "model",
    "preset",
    "vocab",
    "model_kwargs",
    "plan_kwargs",
    "files",
    "layer",
    "gene_symbols",
    "case_sensitive",
    "min_genes",
    "max_cells",
    "val_fraction",
    "seed",
    "batch_size",
)


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


def _check_files_hold_counts(files: Sequence[Path], layer: str | None, n_rows: int = 2048) -> None:
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
    seeds = np.fromiter((cell_seed(str(n), salt="cell") % (1 << 24) for n in names), dtype=np.float64, count=len(names))
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
        seeds=seeds.astype(np.float32),
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


# ------------------------------------------------------------------------------------------------------ training
@dataclass
class PretrainResult:
    """What :func:`pretrain` produced.

    Attributes
    ----------
    model
        The trained model (its ``adata`` is the in-memory sample it was built on).
    checkpoint
        The :meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained` directory.
    archive
        The archive of the checkpoint (``<archive>.sha256`` beside it).
    card
        The registry card of the archive.
    snippet
        Python code registering the card.
    """

    model: Any
    checkpoint: Path
    archive: Path
    card: Any
    snippet: str


def _model_class(model: str):
    from cellformers import model as models

    if model not in PRETRAIN_MODELS:
        msg = f"`model` must be one of {list(PRETRAIN_MODELS)}, got {model!r}."
        raise ValueError(msg)
    return getattr(models, PRETRAIN_MODELS[model][0])


def _build_model(model: str, adata: AnnData, vocab: GeneVocab, preset: str | None, model_kwargs: dict):
    import inspect

    cls = _model_class(model)
    kwargs = dict(model_kwargs)
    if preset is not None:
        if "preset" not in inspect.signature(cls.__init__).parameters:
            msg = f"`--preset` does not apply to {model} (it has no presets); set its sizes with `--model-kwargs`."
            raise ValueError(msg)
        kwargs["preset"] = preset
    cls.setup_anndata(adata)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*has fewer than \d+ cells", category=UserWarning)
        return cls(adata, vocab=vocab, **kwargs)


def _phases(model: str) -> list[dict[str, Any]]:
    """The ``model.train`` calls of a run: one, or scPaLM's two stages (each ``epochs`` long, with its own history)."""
    if model == "scpalm":
        return [{"name": "stage1", "train": {"stage": 1}}, {"name": "stage2", "train": {"stage": 2}}]
    return [{"name": "train", "train": {}}]


def _merge_history(old: dict, new: dict) -> dict[str, pd.DataFrame]:
    out = {k: pd.DataFrame(v["values"], index=v["index"], columns=[k]) for k, v in old.items()}
    for key, frame in new.items():
        if not isinstance(frame, pd.DataFrame) or frame.empty:
            continue
        frame = frame.iloc[:, :1].set_axis([key], axis=1)
        frame = frame[pd.to_numeric(frame[key], errors="coerce").notna()].astype(float)
        if key in out:
            frame = pd.concat([out[key], frame])
            frame = frame[~frame.index.duplicated(keep="last")].sort_index()
        out[key] = frame
    return out


def _history_json(history: dict[str, pd.DataFrame]) -> dict:
    return {
        k: {"index": [float(i) for i in v.index], "values": [float(x) for x in v.iloc[:, 0]]}
        for k, v in history.items()
    }


def _card_snippet(card) -> str:
    fields = dataclasses.asdict(card)
    lines = ["import cellformers as cf", "", "cf.pretrained.register_pretrained(", "    cf.pretrained.PretrainedCard("]
    for key, value in fields.items():
        if value is None or value == "":
            continue
        lines.append(f"        {key}={value!r},")
    lines += ["    )", ")"]
    return "\n".join(lines)


def pretrain(
    model: Literal["xtrimogene", "scformer", "scpalm"],
    data: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    preset: str | None = None,
    vocab: GeneVocab | str | os.PathLike | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    max_cells: int | None = None,
    layer: str | None = None,
    gene_symbols: str | None = None,
    case_sensitive: bool = True,
    min_genes: int = MIN_GENES,
    val_fraction: float = 0.02,
    model_kwargs: dict | None = None,
    plan_kwargs: dict | None = None,
    precision: str | None = None,
    accelerator: str = "auto",
    devices: int | str = "auto",
    strategy: str = "auto",
    num_workers: int = 0,
    block_size: int = 256,
    n_setup_cells: int = 2000,
    resume: bool = False,
    name: str | None = None,
    url: str | None = None,
    license: str = "unknown",
    citation: str = "",
    seed: int | None = None,
) -> PretrainResult | None:
    """Pretrain a model on a corpus of ``.h5ad`` files and write a registry-ready checkpoint (see module docstring).

    Parameters
    ----------
    model
        ``"xtrimogene"``, ``"scformer"`` or ``"scpalm"`` (scPaLM: stage 1 then stage 2, ``epochs`` each).
    data
        ``.h5ad`` files, folders of them or glob patterns; raw counts in ``X`` or ``layer``.
    out
        Output folder: ``pretrain_config.json``, ``lightning/<phase>/`` (the per-epoch checkpoint of
        ``model.train(checkpoint_dir=...)``, phase ``train`` or scPaLM's ``stage1`` and ``stage2``), ``checkpoint/``
        (:meth:`~cellformers.pretrained.PretrainedMixin.save_pretrained`), ``<name>.tar.gz`` and its ``.sha256``,
        ``card.json`` and ``history.json``.
    preset
        Model size (xTrimoGene ``"3M"``/``"10M"``/``"100M"``, scPaLM ``"paper"``/``"small"``); ``None``: the
        model's default.
    vocab
        Reference vocabulary (a name, a vocabulary JSON file or a :class:`~cellformers.data.GeneVocab`); ``None``:
        the model's default (:data:`PRETRAIN_MODELS`).
    epochs
        Epochs (a resumed run continues up to this many).
    batch_size
        Cells per minibatch and process.
    max_cells
        Use at most this many quality-controlled cells of each file (a seeded random subset).
    layer
        Layer with raw counts (``None``: ``X``), the same in every file.
    gene_symbols
        ``var`` column with gene symbols (``None``: ``var_names``).
    case_sensitive
        Match gene symbols with case (``False`` for mouse data on a human vocabulary).
    min_genes
        Keep cells with more than this many expressed vocabulary genes (App. 1: 200).
    val_fraction
        Fraction of cells held out for validation (by a hash of file and cell name; App. 1 splits 96:2:2).
    model_kwargs
        Options of the model class (e.g. ``{"encoder_dim": 64}``).
    plan_kwargs
        Options of the training plan (``lr``, ``warmup_steps``, ...).
    precision
        Lightning precision, e.g. ``"bf16-mixed"`` or ``"32"``; ``None`` or ``"auto"``:
        :attr:`cellformers.settings.precision` (``"auto"``: bf16 where the hardware has bf16 units, else 32-bit).
    accelerator, devices, strategy
        Lightning's (``strategy="ddp"`` for several GPUs).
    num_workers
        DataLoader worker processes per rank.
    block_size
        Rows read from a file at once (and shuffled together).
    n_setup_cells
        Cells of the in-memory sample the model is built on.
    resume
        Continue the run in ``out`` from its last checkpoint.
    name
        Name of the checkpoint, archive and card (default ``<model>-<preset>``).
    url
        Where the archive will be published (the card's ``url``); ``None``: the local archive.
    license, citation
        Card fields.
    seed
        Seed of initialization, subsampling and shuffles; ``None``: ``cellformers.settings.seed``.

    Returns
    -------
    The result on the main process (``None`` on the other DDP ranks).
    """
    from scvi.model._utils import use_distributed_sampler

    from cellformers.pretrained import PretrainedCard, pack_checkpoint
    from cellformers.pretrained._convert import resolve_vocab

    cls = _model_class(model)
    if epochs < 1 or batch_size < 1:
        msg = f"`epochs` and `batch_size` must be positive, got {epochs} and {batch_size}."
        raise ValueError(msg)
    if not 0.0 <= val_fraction < 1.0:
        msg = f"`val_fraction` must be in [0, 1), got {val_fraction}."
        raise ValueError(msg)
    if max_cells is not None and max_cells < 1:
        msg = f"`max_cells` must be a positive integer or None, got {max_cells}."
        raise ValueError(msg)
    seed = settings.seed if seed is None else int(seed)
    seed = 0 if seed is None else seed
    out = Path(out).expanduser()
    files = resolve_files(data)
    _check_files_hold_counts(files, layer)  # before the vocabulary is downloaded
    gene_vocab = resolve_vocab(PRETRAIN_MODELS[model][1] if vocab is None else vocab)
    if vocab is None:
        vocab_label = PRETRAIN_MODELS[model][1]
    elif isinstance(vocab, str | os.PathLike):
        vocab_label = os.fspath(vocab)
    else:
        vocab_label = gene_vocab.name or "custom"
    config = {
        "model": model,
        "preset": preset,
        "vocab": vocab_label,
        "model_kwargs": dict(model_kwargs or {}),
        "plan_kwargs": dict(plan_kwargs or {}),
        "files": [str(p) for p in files],
        "layer": layer,
        "gene_symbols": gene_symbols,
        "case_sensitive": case_sensitive,
        "min_genes": int(min_genes),
        "max_cells": max_cells,
        "val_fraction": float(val_fraction),
        "seed": seed,
        "batch_size": int(batch_size),
        "epochs": int(epochs),
    }
    config_path = out / _CONFIG_FILE
    # processes started by Lightning's DDP launcher (or torchrun) for ranks > 0 run this function again: only the
    # first process checks and writes the output folder
    launcher = all(os.environ.get(k, "0") == "0" for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))
    if launcher and resume:
        if not config_path.is_file():
            msg = f"Nothing to resume in {out}: it has no {_CONFIG_FILE} (start a run there without `--resume`)."
            raise CheckpointError(msg)
        previous = json.loads(config_path.read_text(encoding="utf-8"))
        changed = [k for k in _RESUME_KEYS if previous.get(k) != config.get(k)]
        if changed:
            diffs = ", ".join(f"{k}: {previous.get(k)!r} -> {config.get(k)!r}" for k in changed)
            msg = f"`--resume` needs the arguments of the run in {out}; these differ: {diffs}."
            raise ValueError(msg)
    elif launcher and out.exists() and any(out.iterdir()):
        msg = f"{out} is not empty; pass `--resume` to continue the run there, or choose another `--out`."
        raise FileExistsError(msg)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(seed)
    corpus = [
        index_file(
            path,
            gene_vocab,
            layer=layer,
            gene_symbols=gene_symbols,
            case_sensitive=case_sensitive,
            min_genes=min_genes,
            max_cells=max_cells,
            val_fraction=val_fraction,
            seed=seed,
        )
        for path in files
    ]
    n_train = sum(int((~c.validation).sum()) for c in corpus)
    n_val = sum(int(c.validation.sum()) for c in corpus)
    logger.info(f"corpus: {len(files)} files, {n_train} training and {n_val} validation cells")
    setup = sample_adata(corpus, gene_vocab, n_setup_cells, seed=seed)
    net = _build_model(
        model, setup, gene_vocab, preset, {**PRETRAIN_MODEL_DEFAULTS.get(model, {}), **config["model_kwargs"]}
    )
    logger.info(net._model_summary_string)

    history_path = out / _HISTORY_FILE
    history_old = json.loads(history_path.read_text(encoding="utf-8")) if resume and history_path.is_file() else {}
    history: dict[str, pd.DataFrame] = {}
    dm = CorpusDataModule(
        corpus, gene_vocab.n_genes, batch_size=batch_size, num_workers=num_workers, block_size=block_size, seed=seed
    )
    if launcher and not resume:
        config_path.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")
    phases = _phases(model)
    for phase in phases:
        # `model.train` runs the phase: precision, per-epoch checkpoint and resume, seeding, progress bar, history
        trainer_kwargs = {
            "datamodule": dm,
            "strategy": strategy,
            "use_distributed_sampler": False,  # every rank reads its own share of the corpus (CorpusDataModule)
            "reload_dataloaders_every_n_epochs": 1,  # a new shuffle of the row blocks every epoch
            "limit_val_batches": 1.0 if n_val > 0 else 0,
            "default_root_dir": os.fspath(out),
            "log_every_n_steps": 1,
        }
        if use_distributed_sampler(strategy):
            # scvi-tools' trainer keeps a DDP run's history on disk: inside the output folder, not the working one
            trainer_kwargs["log_save_dir"] = os.fspath(out / _CKPT_DIR / phase["name"])
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*does not have many workers.*")
            warnings.filterwarnings("ignore", message=r".*IterableDataset.*__len__.*")
            warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")  # scPaLM's frozen stage-1 parts
            warnings.filterwarnings("ignore", message=r".*LeafSpec.*is deprecated.*")
            net.train(
                max_epochs=epochs,
                batch_size=batch_size,
                accelerator=accelerator,
                devices=devices,
                precision=precision,
                check_val_every_n_epoch=1 if n_val > 0 else None,
                plan_kwargs=dict(config["plan_kwargs"]),
                checkpoint_dir=out / _CKPT_DIR / phase["name"],
                resume=resume,
                **phase["train"],
                **trainer_kwargs,
            )
        prefix = f"{phase['name']}/" if len(phases) > 1 else ""
        history.update({prefix + k: v for k, v in (getattr(net.trainer.logger, "history", None) or {}).items()})
    if model == "scpalm":
        net.module.set_stage(1)  # both stages trained: the stage `ScPaLM.train()` leaves after running both
    if not net.trainer.is_global_zero:
        return None
    merged = _merge_history(history_old, history)
    net.history_ = merged
    history_path.write_text(json.dumps(_history_json(merged)) + "\n", encoding="utf-8")
    config_path.write_text(json.dumps(config, indent=1) + "\n", encoding="utf-8")  # epochs reached

    if name is None:
        name = model if preset is None else f"{model}-{preset}"
    checkpoint = net.save_pretrained(out / _CHECKPOINT_DIR, overwrite=True)
    archive = pack_checkpoint(checkpoint, out / f"{name}.tar.gz", overwrite=True)
    description = (
        f"{cls.__name__} pretrained by `python -m cellformers pretrain` on {len(files)} file(s), {n_train} cells, "
        f"{epochs} epoch(s)"
    )
    card = PretrainedCard.from_archive(
        archive, name=name, url=url, license=license, citation=citation, description=description
    )
    (out / "card.json").write_text(json.dumps(dataclasses.asdict(card), indent=1) + "\n", encoding="utf-8")
    snippet = _card_snippet(card)
    logger.info(f"wrote {checkpoint} and {archive} (sha256 {card.sha256})")
    return PretrainResult(model=net, checkpoint=checkpoint, archive=archive, card=card, snippet=snippet)


# ------------------------------------------------------------------------------------------------------ command line
def add_pretrain_parser(sub) -> None:
    """Add the ``pretrain`` sub-command to the ``python -m cellformers`` parser."""
    p = sub.add_parser(
        "pretrain",
        help="pretrain a model on a corpus of .h5ad files and write a registry-ready checkpoint",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--model", required=True, choices=list(PRETRAIN_MODELS), help="model to pretrain")
    p.add_argument("--data", required=True, nargs="+", help=".h5ad files, folders of them, or glob patterns")
    p.add_argument("--out", required=True, help="output folder (checkpoints, archive, card)")
    p.add_argument("--preset", default=None, help="model size: xtrimogene 3M/10M/100M, scpalm paper/small")
    p.add_argument("--vocab", default=None, help="reference vocabulary: a name or a vocabulary JSON file")
    p.add_argument("--epochs", type=int, default=5, help="number of epochs (default 5, as xTrimoGene-100M)")
    p.add_argument(
        "--no-progress-bar", action="store_true", help="no progress bars (for logs of batch jobs and notebooks)"
    )
    p.add_argument("--batch-size", type=int, default=64, help="cells per minibatch and process (default 64)")
    p.add_argument("--max-cells", type=int, default=None, help="use at most this many cells of each file")
    p.add_argument("--layer", default=None, help="layer with raw counts (default: X)")
    p.add_argument("--gene-symbols", default=None, help="var column with gene symbols (default: var_names)")
    p.add_argument("--case-insensitive", action="store_true", help="match gene symbols ignoring case")
    p.add_argument("--min-genes", type=int, default=MIN_GENES, help="keep cells with more expressed genes (200)")
    p.add_argument("--val-fraction", type=float, default=0.02, help="cells held out for validation (0.02)")
    p.add_argument("--model-kwargs", default="{}", help="JSON object of model options, e.g. '{\"encoder_dim\": 64}'")
    p.add_argument("--plan-kwargs", default="{}", help="JSON object of training-plan options, e.g. '{\"lr\": 1e-4}'")
    p.add_argument(
        "--precision",
        default="auto",
        help="Lightning precision: auto (default: bf16 where the CPU/GPU has bf16 units, else 32), 32 or bf16-mixed",
    )
    p.add_argument("--accelerator", default="auto", help="Lightning accelerator (auto, cpu, gpu)")
    p.add_argument("--devices", default="auto", help="number of devices or 'auto'")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp")
    p.add_argument("--num-workers", type=int, default=0, help="DataLoader workers per process")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--name", default=None, help="name of the checkpoint and card (default <model>-<preset>)")
    p.add_argument("--url", default=None, help="public URL the archive will have (for the card)")
    p.add_argument("--license", default="unknown", help="licence of the weights (for the card)")
    p.add_argument("--citation", default="", help="citation (for the card)")
    p.add_argument("--seed", type=int, default=None, help="random seed (default: cellformers.settings.seed)")


def _json_arg(text: str, flag: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as err:
        msg = f"`{flag}` must be a JSON object, got {text!r} ({err})."
        raise ValueError(msg) from err
    if not isinstance(value, dict):
        msg = f"`{flag}` must be a JSON object, got {text!r}."
        raise ValueError(msg)
    return value


def run_pretrain_command(args) -> int:
    """Run ``python -m cellformers pretrain`` with parsed arguments; print the card snippet."""
    devices = args.devices if args.devices == "auto" else int(args.devices)
    # the flag holds for this command only: the CLI also runs in-process (notebooks, tests)
    progress_bar = settings.progress_bar
    if args.no_progress_bar:
        settings.progress_bar = False
    try:
        result = pretrain(
            args.model,
            args.data,
            args.out,
            preset=args.preset,
            vocab=args.vocab,
            epochs=args.epochs,
            batch_size=args.batch_size,
            max_cells=args.max_cells,
            layer=args.layer,
            gene_symbols=args.gene_symbols,
            case_sensitive=not args.case_insensitive,
            min_genes=args.min_genes,
            val_fraction=args.val_fraction,
            model_kwargs=_json_arg(args.model_kwargs, "--model-kwargs"),
            plan_kwargs=_json_arg(args.plan_kwargs, "--plan-kwargs"),
            precision=args.precision,
            accelerator=args.accelerator,
            devices=devices,
            strategy=args.strategy,
            num_workers=args.num_workers,
            resume=args.resume,
            name=args.name,
            url=args.url,
            license=args.license,
            citation=args.citation,
            seed=args.seed,
        )
    finally:
        settings.progress_bar = progress_bar
    if result is not None:
        print(f"checkpoint: {result.checkpoint}\narchive:    {result.archive}\nsha256:     {result.card.sha256}\n")
        print("Register it with:\n")
        print(result.snippet)
    return 0
