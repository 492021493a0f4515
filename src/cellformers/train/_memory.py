"""Memory estimate of a training step, and the default training batch size chosen from it."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import warnings
from typing import TYPE_CHECKING

import numpy as np
import torch
from scvi import REGISTRY_KEYS

from cellformers._settings import settings

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = [
    "available_memory",
    "default_train_batch_size",
    "estimate_training_memory",
    "resolve_train_batch_size",
    "warn_if_too_large",
]

#: Bytes per parameter kept by AdamW training in float32: the weight, its gradient and two moment estimates.
_BYTES_PER_PARAMETER = 16
#: Backward temporaries and allocator slack on top of the activations autograd keeps (measured: see
#: docs/performance.md, "Training memory").
_ACTIVATION_OVERHEAD = 1.25
#: Process baseline (Python, torch, the data) counted on top of the model.
_BASELINE_BYTES = 1 << 30
#: Share of the available memory a default batch size may plan to use.
_BUDGET_FRACTION = 0.6
#: Cells of the probe forward pass (those with the most expressed genes: batches are padded to the longest cell).
_N_PROBE = 4


def available_memory(device: torch.device | str | None = None) -> int:
    """Bytes a training run can use: free GPU memory on a CUDA device, else the available system memory.

    Parameters
    ----------
    device
        The training device; ``None`` or a CPU device reads the system memory (``psutil``, else ``/proc/meminfo``,
        else the physical memory from ``os.sysconf``).

    Returns
    -------
    Available bytes.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda" and torch.cuda.is_available():
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - psutil is a dependency of lightning
        pass
    try:  # pragma: no cover
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))  # pragma: no cover


def _probe_cells(model, adata: AnnData, n_probe: int) -> np.ndarray:
    """The ``n_probe`` cells with the most stored values (the longest inputs of models that encode expressed genes)."""
    from cellformers._utils import row_nnz

    x = model.get_anndata_manager(adata, required=True).get_from_registry(REGISTRY_KEYS.X_KEY)
    nnz = row_nnz(x)
    return np.sort(np.argsort(-nnz, kind="stable")[: min(n_probe, adata.n_obs)])


def _activation_bytes_per_cell(
    model, adata: AnnData | None = None, n_probe: int = _N_PROBE, *, chunked: bool = False
) -> float:
    """Bytes autograd keeps per cell for the backward pass of one training step, measured on a few real cells.

    One forward pass of the module's loss runs on the longest cells of ``adata`` with gradients enabled, in
    evaluation mode (no state such as Performer feature redraws or codebook statistics changes) and with the random
    state restored afterwards; the tensors autograd saves for backward are summed (each storage once, parameters
    excluded) and divided by the number of cells. ``chunked``: the module decodes one cell per checkpointed chunk
    (``module.chunk_probe()``), so only what is kept outside the chunks is counted.
    """
    adata = model.adata if adata is None else adata
    cells = _probe_cells(model, adata, n_probe)
    module = model.module
    params = {p.untyped_storage().data_ptr() for p in module.parameters()}
    seen: set[int] = set()
    total = 0

    kept: list[torch.Tensor] = []  # alive until the forward pass ends, so that no address is counted twice

    def pack(t: torch.Tensor) -> None:
        nonlocal total
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in params and ptr not in seen and t.device.type != "meta":
            seen.add(ptr)
            total += storage.nbytes()
        kept.append(t)
        # the graph gets no tensor back: returning ``t`` would make every operation that saves its own output (exp,
        # softmax, ...) a reference cycle that outlives the probe, and the whole graph with it (5 GB measured for
        # 4 cells x 19,264 genes)

    was_training = module.training
    devices = [model.device] if model.device.type == "cuda" else []
    layout = module.chunk_probe() if chunked else contextlib.nullcontext()
    try:
        module.eval()
        with torch.random.fork_rng(devices=devices), layout:  # the data loader draws a seed too
            dl = model._make_data_loader(adata=adata, indices=cells, batch_size=cells.size, shuffle=False)
            tensors = next(iter(dl))
            with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(pack, _no_unpack):
                module(tensors)
    finally:
        kept.clear()
        module.train(was_training)
    return total / max(1, cells.size)


def _no_unpack(_packed: None) -> torch.Tensor:  # pragma: no cover - the probe never runs backward
    msg = "the memory probe keeps no tensors for a backward pass"
    raise RuntimeError(msg)


def _activation_profile(model, adata: AnnData | None = None) -> tuple[float, float, int]:
    """``(kept, chunk, chunk_size)``: activation bytes per cell of the minibatch and of one decoder chunk.

    ``kept`` is held for every cell of the minibatch; ``chunk`` only for the cells of the one chunk whose activations
    exist at a time (modules with a ``decoder_chunk_size``; ``chunk`` 0 and ``chunk_size`` 0 otherwise).
    """
    chunk_size = getattr(model.module, "decoder_chunk_size", None)
    if not chunk_size:
        return _activation_bytes_per_cell(model, adata), 0.0, 0
    # one (the longest) cell unchunked: a chunked model is one whose full activations for several cells are large
    # (6.7 GB for the 4-cell probe over 19,264 genes)
    total = _activation_bytes_per_cell(model, adata, n_probe=1)
    kept = _activation_bytes_per_cell(model, adata, chunked=True)
    return kept, max(0.0, total - kept), int(chunk_size)


def _activation_bytes(profile: tuple[float, float, int], batch_size: int) -> float:
    kept, chunk, chunk_size = profile
    return _ACTIVATION_OVERHEAD * (kept * batch_size + chunk * min(batch_size, chunk_size))


def estimate_training_memory(model, batch_size: int, adata: AnnData | None = None) -> int:
    """Estimated peak memory, in bytes, of training ``model`` with minibatches of ``batch_size`` cells.

    The sum of the optimiser state (16 bytes per parameter: weight, gradient, two AdamW moments), the activations
    kept for backward (measured per cell on the longest cells of the data, times ``batch_size``, plus 25% for the
    backward temporaries) and 1 GiB of process baseline. With xTrimoGene's ``decoder_chunk_size`` the decoder's
    activations count for one chunk of cells, the rest for the whole minibatch. Measured on CPU and GPU, the peak stays below the estimate
    (see the table in ``docs/performance.md``).

    Parameters
    ----------
    model
        A cellformers model set up on its training data.
    batch_size
        Training minibatch size.
    adata
        Data to probe; ``None`` uses the model's.

    Returns
    -------
    Estimated peak bytes.

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata)
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> small, large = (cf.train.estimate_training_memory(model, batch_size=b) for b in (8, 64))
    >>> 2**30 < small < large  # the 1 GiB process baseline, then more per cell
    True
    """
    n_params = sum(p.numel() for p in model.module.parameters())
    profile = _activation_profile(model, adata)
    return int(_BASELINE_BYTES + _BYTES_PER_PARAMETER * n_params + _activation_bytes(profile, batch_size))


def default_train_batch_size(
    model,
    *,
    budget: int | None = None,
    max_batch_size: int = 128,
    device: torch.device | str | None = None,
) -> tuple[int, int]:
    """The largest power-of-two batch size, up to ``max_batch_size``, whose training estimate fits ``budget``.

    Parameters
    ----------
    model
        A cellformers model set up on its training data.
    budget
        Bytes the run may use; ``None``: 60% of :func:`available_memory` on ``device``.
    max_batch_size
        The batch size used when memory allows it (scvi-tools' default, 128).
    device
        The training device (for the default ``budget``).

    Returns
    -------
    ``(batch_size, estimated bytes at that batch size)``; at least 1 even when nothing fits.
    """
    if budget is None:
        budget = int(_BUDGET_FRACTION * available_memory(device))
    n_params = sum(p.numel() for p in model.module.parameters())
    profile = _activation_profile(model)
    fixed = _BASELINE_BYTES + _BYTES_PER_PARAMETER * n_params
    top = max(1, int(max_batch_size))
    candidates = [top] + [1 << k for k in range(int(math.log2(top)), -1, -1) if 1 << k < top]
    batch = next((b for b in candidates if fixed + _activation_bytes(profile, b) <= budget), 1)
    return batch, int(fixed + _activation_bytes(profile, batch))


def warn_if_too_large(model, batch_size: int, device: torch.device | str | None = None) -> None:
    """Warn, with the estimate, when training with ``batch_size`` is expected to exceed the available memory."""
    estimate = estimate_training_memory(model, batch_size)
    available = available_memory(device)
    if estimate > available:
        suggested, _ = default_train_batch_size(model, device=device)
        msg = (
            f"Training {type(model).__name__} with `batch_size={batch_size}` needs about {estimate / 2**30:.1f} GiB "
            f"(estimate), more than the {available / 2**30:.1f} GiB available: the run will likely be killed for "
            f"lack of memory. Pass `batch_size={suggested}` (or leave it out to have it chosen), a smaller preset, "
            "or fewer genes."
        )
        warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)


def resolve_train_batch_size(
    model,
    batch_size: int | None,
    *,
    accelerator: str | None = None,
    max_batch_size: int = 128,
) -> int:
    """The training batch size: ``None`` is chosen from the memory estimate, a given one is checked against it.

    ``None`` gives the largest power of two up to ``max_batch_size`` whose estimate
    (:func:`estimate_training_memory`) fits 60% of the available memory, logged with the estimate. A given batch
    size is kept, with a warning when its estimate exceeds the available memory. The estimate never stops
    training: if it cannot be computed (an unusual module), ``None`` falls back on ``max_batch_size``.

    Parameters
    ----------
    model
        A cellformers model set up on its training data.
    batch_size
        The caller's batch size, or ``None``.
    accelerator
        Lightning's ``accelerator`` argument (``"cpu"``, ``"gpu"``, ``"auto"``, …), for the memory to compare with.
    max_batch_size
        The batch size used when memory allows it.

    Returns
    -------
    The batch size to train with.
    """
    from cellformers._utils._validation import check_batch_size

    check_batch_size(batch_size)
    acc = "auto" if accelerator is None else str(accelerator)
    device = "cuda" if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()) else "cpu"
    try:
        if batch_size is not None:
            warn_if_too_large(model, int(batch_size), device)
            return int(batch_size)
        chosen, estimate = default_train_batch_size(model, max_batch_size=max_batch_size, device=device)
    except Exception as err:  # noqa: BLE001 - an estimate must never stop training
        logger.debug(f"no training memory estimate ({type(err).__name__}: {err})")
        return max_batch_size if batch_size is None else int(batch_size)
    logger.info(
        f"training batch size {chosen} (estimated peak memory {estimate / 2**30:.1f} GiB; pass `batch_size=` to "
        "choose another)"
    )
    return chosen
