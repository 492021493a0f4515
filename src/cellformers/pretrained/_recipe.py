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
import json
import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch

from cellformers._exceptions import CheckpointError
from cellformers._settings import settings

from ._corpus import MIN_GENES, CorpusDataModule, check_files_hold_counts, index_file, resolve_files, sample_adata

if TYPE_CHECKING:
    from collections.abc import Sequence

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
    The result on the main process (``None`` on the other DDP ranks): a :class:`PretrainResult` with the model, the
    checkpoint directory, its archive, the registry card and the code that registers it.

    Examples
    --------
    A corpus is any list of ``.h5ad`` files of raw counts; here two small synthetic ones and a tiny scFormer:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> folder = Path(tempfile.mkdtemp())
    >>> files = [folder / "part0.h5ad", folder / "part1.h5ad"]
    >>> for i, path in enumerate(files):
    ...     part = cf.data.synthetic_counts(n_cells=80, n_genes=40, random_state=i)
    ...     part.write_h5ad(path)
    >>> vocab = cf.data.GeneVocab(list(part.var_names), name="synthetic")
    >>> result = cf.pretrained.pretrain(
    ...     "scformer",
    ...     files,
    ...     folder / "run",
    ...     preset="tiny",
    ...     vocab=vocab,
    ...     epochs=1,
    ...     batch_size=32,
    ...     min_genes=1,
    ...     accelerator="cpu",
    ... )
    >>> result.card.model_class, result.archive.name
    ('cellformers.model.ScFormer', 'scformer-tiny.tar.gz')
    """
    from scvi.model._utils import use_distributed_sampler

    from cellformers.checkpoint import PretrainedCard, pack_checkpoint

    from ._convert import resolve_vocab

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
    check_files_hold_counts(files, layer)  # before the vocabulary is downloaded
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
