"""Torch helpers: precision by hardware, precision contexts for inference."""

from __future__ import annotations

import contextlib
import logging
from typing import Literal

import torch

from cellformers._settings import settings

logger = logging.getLogger(__name__)

Precision = Literal["auto", "32", "bf16", "16"]

_LOGGED: set[tuple[str, str]] = set()


def bf16_hardware(device: torch.device | str = "cpu") -> tuple[bool, str]:
    """Whether ``device`` computes bfloat16 natively, and the reason in words.

    CUDA: :func:`torch.cuda.is_bf16_supported` (Ampere and newer). CPU: torch's own CPU-feature queries for
    AVX512_BF16 or AMX tiles; a CPU with only AVX2 (or AVX-512 without bf16 units) emulates bf16 by converting, which
    was measured at about 6x slower than float32 for xTrimoGene training on an AVX2 machine. MPS and other devices:
    ``False`` (float32 is the safe choice there).

    Examples
    --------
    >>> from cellformers.train import bf16_hardware
    >>> fast, why = bf16_hardware("cpu")
    >>> isinstance(fast, bool), why.startswith("CPU")
    (True, True)
    """
    kind = torch.device(device).type
    if kind == "cuda":
        ok = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        return ok, ("CUDA device with bf16" if ok else "CUDA device without bf16")
    if kind != "cpu":
        return False, f"{kind} device"
    cpu = getattr(torch, "cpu", None)
    avx512_bf16 = bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())
    amx = bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    capability = torch.backends.cpu.get_cpu_capability()
    if avx512_bf16 or amx:
        units = " + ".join(n for n, has in (("AVX512_BF16", avx512_bf16), ("AMX", amx)) if has)
        return True, f"CPU with {units} ({capability})"
    return False, f"CPU without bf16 units ({capability})"


def resolve_precision(precision: str | int | None, device: torch.device | str = "cpu", *, training: bool = True):
    """Turn ``precision="auto"`` into what the hardware runs fastest, leaving explicit choices alone.

    Parameters
    ----------
    precision
        ``"auto"``, ``None`` (:attr:`cellformers.settings.precision`, ``"auto"`` unless set) or an explicit value (``"32"``, ``"bf16-mixed"``, ``"16-mixed"``,
        Lightning's spellings), returned unchanged.
    device
        Device the work runs on.
    training
        ``True`` returns Lightning's spellings (``"bf16-mixed"`` / ``"32-true"``), ``False`` those of the inference
        getters (``"bf16"`` / ``"32"``).

    Returns
    -------
    The precision to use. The choice ``"auto"`` makes is logged once per device kind and result.

    Examples
    --------
    >>> from cellformers.train import bf16_hardware, resolve_precision
    >>> resolve_precision("32")  # explicit choices are kept
    '32'
    >>> resolve_precision("auto") == ("bf16-mixed" if bf16_hardware("cpu")[0] else "32-true")
    True
    >>> resolve_precision("auto", training=False) in ("bf16", "32")  # the getters' spelling
    True
    """
    if precision is None:
        precision = settings.precision
    if str(precision) != "auto":
        return precision
    fast, why = bf16_hardware(device)
    if training:
        chosen = "bf16-mixed" if fast else "32-true"
    else:
        chosen = "bf16" if fast else "32"
    key = (torch.device(device).type, chosen.split("-")[0])
    if key not in _LOGGED:
        _LOGGED.add(key)
        logger.info(f"precision='auto' -> {chosen.split('-')[0]} ({why})")
    return chosen


def autocast_context(device: torch.device | str, precision: Precision | str | None = None):
    """Autocast context for inference: ``"bf16"`` (or Lightning's ``"bf16-mixed"``) and ``"16"`` enable autocast.

    ``"auto"`` (or ``None``) resolves with :func:`resolve_precision`: bf16 where the hardware has bf16 units.
    """
    precision = resolve_precision(precision, device, training=False)
    if str(precision) in ("32", "32-true", "64", "64-true", "int8"):
        return contextlib.nullcontext()  # int8: quantized Linear layers take float32 activations
    p = str(precision)
    if p.startswith("bf16"):
        dtype = torch.bfloat16
    elif p.startswith("16"):
        dtype = torch.float16
    else:
        msg = (
            f"`precision` must be one of 'auto', '32', 'bf16', '16' (or Lightning's '*-mixed'), or 'int8' for "
            f"inference, got {precision!r}."
        )
        raise ValueError(msg)
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype)


def training_device(accelerator: str | None = None, device: int | str | list | None = None) -> torch.device:
    """The device kind Lightning will train on for scvi-tools' ``accelerator`` / ``device`` arguments."""
    acc = "auto" if accelerator is None else str(accelerator)
    if acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    if acc == "mps" or (acc == "auto" and getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        return torch.device("mps")
    return torch.device("cpu")


def int8_copy(module: torch.nn.Module, device: torch.device | str = "cpu") -> torch.nn.Module:
    """A copy of ``module`` whose transformer blocks' ``nn.Linear`` layers are dynamically quantized to int8.

    For CPU inference: weights stored as int8 (per-tensor scales), activations quantized on the fly
    (:func:`torch.ao.quantization.quantize_dynamic`). Only the attention projections and feed-forward layers of
    :class:`~cellformers.nn.TransformerBlock` and :class:`~cellformers.nn.PerformerBlock` are quantized: they hold
    almost all of the FLOPs, while the small layers elsewhere (value encoders, heads) read their weights directly.
    Attention products, embeddings and normalisations stay float32. The original module is left untouched.
    """
    import copy
    import warnings

    from cellformers.nn import PerformerBlock, TransformerBlock

    if torch.device(device).type != "cpu":
        msg = f"`precision='int8'` runs on the CPU only (dynamic int8 quantization); the model is on {device}."
        raise ValueError(msg)
    from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

    clone = copy.deepcopy(module).eval()
    names = {
        f"{block_name}.{name}"
        for block_name, block in clone.named_modules()
        if isinstance(block, TransformerBlock | PerformerBlock)
        for name, layer in block.named_modules()
        if isinstance(layer, torch.nn.Linear)
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch flags its quantized tensor creation functions as deprecated
        return quantize_dynamic(clone, dict.fromkeys(names, default_dynamic_qconfig), dtype=torch.qint8)
