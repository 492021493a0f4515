"""Shared steps of the converters of public checkpoints (scFoundation, scGPT) into cellformers models."""

from __future__ import annotations

import gc
import logging
import tempfile
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cellformers._constants import VAR_KEYS
from cellformers._settings import settings
from cellformers.checkpoint import CheckpointError, safe_torch_load
from cellformers.model.base import load_pretrained, save_pretrained

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable

    from anndata import AnnData

    from cellformers.data import GeneVocab

logger = logging.getLogger(__name__)

_N_SHOWN = 12


def load_upstream(source: str | os.PathLike | Mapping, what: str) -> Mapping:
    """The unpickled contents of an upstream checkpoint file (``weights_only``), or ``source`` itself if a mapping."""
    if isinstance(source, Mapping):
        return source
    path = Path(source).expanduser()
    if not path.is_file():
        msg = f"{what}: {path} is not a file."
        raise CheckpointError(msg)
    data = safe_torch_load(path)
    if not isinstance(data, Mapping):
        msg = f"{what}: {path} holds a {type(data).__name__}, not a dictionary of weights."
        raise CheckpointError(msg)
    return data


def strip_prefix(state: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``state`` with ``prefix`` removed from every key, when every key carries it (``module.`` of DDP, ...)."""
    keys = list(state)
    if keys and all(isinstance(k, str) and k.startswith(prefix) for k in keys):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def tensor(state: Mapping[str, Any], key: str, what: str) -> torch.Tensor:
    """``state[key]`` as a float32 CPU tensor, or a :class:`CheckpointError` naming the missing weight."""
    if key not in state:
        msg = f"{what} has no weight {key!r}; it is not a checkpoint of the expected architecture."
        raise CheckpointError(msg)
    value = state[key]
    if not isinstance(value, torch.Tensor):
        msg = f"{what}: {key!r} is a {type(value).__name__}, not a tensor."
        raise CheckpointError(msg)
    return value.detach().to("cpu", torch.float32)


def count_layers(state: Mapping[str, Any], prefix: str) -> int:
    """Number of consecutive ``<prefix><i>.`` blocks in ``state`` (``0, 1, …``)."""
    found = set()
    for key in state:
        if isinstance(key, str) and key.startswith(prefix):
            head = key[len(prefix) :].split(".", 1)[0]
            if head.isdigit():
                found.add(int(head))
    n = 0
    while n in found:
        n += 1
    if found and n != len(found):
        msg = f"the layers under {prefix!r} are not numbered 0 … n-1 ({sorted(found)[:10]})."
        raise CheckpointError(msg)
    return n


def check_unused(
    state: Mapping[str, Any],
    used: Iterable[str],
    *,
    ignored: Callable[[str], bool],
    unsupported: Callable[[str], str | None],
    strict: bool,
    what: str,
) -> None:
    """Refuse (``strict``) or drop with a warning the upstream weights the conversion did not use.

    ``ignored(key)`` marks entries that carry no weights of the computation (step counters, unused embeddings);
    ``unsupported(key)`` names the upstream piece a key belongs to (e.g. ``"explicit zero-probability head"``).
    """
    used = set(used)
    left = [k for k in state if k not in used and not ignored(str(k))]
    if not left:
        return
    pieces: dict[str, list[str]] = {}
    for key in left:
        pieces.setdefault(unsupported(str(key)) or "unknown weights", []).append(str(key))
    described = "; ".join(
        f"{piece} ({', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}, {len(keys)} tensors)"
        for piece, keys in pieces.items()
    )
    if strict:
        msg = (
            f"{what} holds weights cellformers' model has no counterpart for: {described}. They are not part of the "
            "encoder (cell embeddings) or of the expression decoder the converter maps. Pass `strict=False` to drop "
            "them (with a warning) and convert the rest."
        )
        raise CheckpointError(msg)
    msg = f"{what}: dropped weights without a counterpart in cellformers: {described}."
    warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)


def placeholder_adata(vocab: GeneVocab) -> AnnData:
    """Two cells over the vocabulary's genes in token order: the AnnData a converted model is built on."""
    import pandas as pd
    from anndata import AnnData

    genes = vocab.genes
    X = np.ones((2, len(genes)), dtype=np.float32)
    var = pd.DataFrame(index=pd.Index(genes, dtype=object))
    var[VAR_KEYS.TOKEN_ID] = np.arange(len(genes), dtype=np.int64)
    obs = pd.DataFrame(index=["placeholder_0", "placeholder_1"])
    return AnnData(X=X, obs=obs, var=var)


def load_into_module(module: torch.nn.Module, mapped: dict[str, torch.Tensor], what: str) -> None:
    """Copy the converted weights into ``module``; every parameter must be covered and every shape must fit."""
    own = module.state_dict()
    keep = {"input_columns", "input_gene_ids"}  # the module's own gene-index buffers
    missing = sorted(k for k in own if k not in mapped and k not in keep)
    if missing:
        msg = f"{what}: the conversion gives no value to {missing[:_N_SHOWN]} of the cellformers module."
        raise CheckpointError(msg)
    extra = sorted(k for k in mapped if k not in own)
    if extra:
        msg = f"{what}: converted weights {extra[:_N_SHOWN]} do not exist in the cellformers module."
        raise CheckpointError(msg)
    bad = [f"{k}: {tuple(mapped[k].shape)} vs {tuple(own[k].shape)}" for k in mapped if mapped[k].shape != own[k].shape]
    if bad:
        msg = f"{what}: converted weights do not fit the module built from the checkpoint's config: {bad[:_N_SHOWN]}."
        raise CheckpointError(msg)
    state = {k: own[k] for k in keep if k in own}
    state.update({k: v.to(own[k].dtype) for k, v in mapped.items()})
    module.load_state_dict(state, strict=True)


def finish_conversion(
    build: Callable[[AnnData], Any],
    mapped: dict[str, torch.Tensor],
    vocab: GeneVocab,
    *,
    adata: AnnData | None,
    out: str | os.PathLike | None,
    overwrite: bool,
    what: str,
    info: dict[str, Any],
    min_gene_coverage: float = 0.5,
):
    """Build the model on a placeholder over the vocabulary, load the converted weights, save and reload it.

    The model goes through :func:`~cellformers.pretrained.save_pretrained` and
    :func:`~cellformers.pretrained.load_pretrained`, so it is attached to ``adata`` exactly like any checkpoint
    (genes aligned to the vocabulary's, or the "loaded without AnnData" state) and the written checkpoint (``out``)
    is what the registry serves.
    """
    placeholder = placeholder_adata(vocab)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*has fewer than \d+ cells", category=UserWarning)
        model = build(placeholder)
    load_into_module(model.module, mapped, what)
    model.is_trained_ = True
    model.module.eval()
    if out is None:
        tmp = tempfile.TemporaryDirectory(dir=_tmp_root(), prefix="converted-")
        path = Path(tmp.name) / "checkpoint"
    else:
        tmp, path = None, Path(out)
    try:
        save_pretrained(model, path, overwrite=overwrite)
        del model
        gc.collect()
        loaded = load_pretrained(path, adata, accelerator="cpu", min_gene_coverage=min_gene_coverage)
    finally:
        if tmp is not None:
            tmp.cleanup()
    loaded.pretrained_info_ = {
        **(loaded.pretrained_info_ or {}),
        **info,
        "directory": None if out is None else str(path),
    }
    logger.info(f"converted {what} into {type(loaded).__name__}" + ("" if out is None else f", saved to {path}"))
    return loaded


def _tmp_root() -> Path:
    root = settings.cache_dir / "pretrained" / "tmp"
    root.mkdir(parents=True, exist_ok=True)
    return root


def resolve_vocab(vocab: GeneVocab | str | os.PathLike) -> GeneVocab:
    """A :class:`~cellformers.data.GeneVocab` from a vocabulary, a reference name or a JSON file."""
    from cellformers.data import GeneVocab, available_references

    if isinstance(vocab, GeneVocab):
        return vocab
    if isinstance(vocab, str) and vocab in available_references():
        return GeneVocab.load(vocab)
    path = Path(vocab).expanduser()
    if path.is_file():
        return GeneVocab.from_json(path)
    msg = (
        f"`vocab` must be a GeneVocab, a reference name ({available_references()}) or a vocabulary JSON file; "
        f"got {vocab!r}."
    )
    raise ValueError(msg)
