from __future__ import annotations

import pytest
import torch

import cellformers as cf
from cellformers._utils import _torch, autocast_context, bf16_hardware, resolve_precision


def _cpu_units(monkeypatch, *, avx512_bf16: bool, amx: bool) -> None:
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: amx)
    monkeypatch.setattr(_torch, "_LOGGED", set())


@pytest.mark.parametrize(("avx512_bf16", "amx"), [(True, False), (False, True), (True, True)])
def test_auto_is_bf16_with_bf16_units(monkeypatch, avx512_bf16, amx):
    _cpu_units(monkeypatch, avx512_bf16=avx512_bf16, amx=amx)
    assert bf16_hardware("cpu")[0]
    assert resolve_precision("auto", "cpu") == "bf16-mixed"
    assert resolve_precision("auto", "cpu", training=False) == "bf16"


def test_auto_is_float32_without_bf16_units(monkeypatch):
    _cpu_units(monkeypatch, avx512_bf16=False, amx=False)
    fast, why = bf16_hardware("cpu")
    assert not fast
    assert "without bf16 units" in why
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("auto", "cpu", training=False) == "32"


def test_auto_choice_is_logged_once(monkeypatch):
    _cpu_units(monkeypatch, avx512_bf16=False, amx=False)
    messages = []
    monkeypatch.setattr(_torch.logger, "info", messages.append)
    for _ in range(3):
        resolve_precision("auto", "cpu")
    assert messages == [
        "precision='auto' -> 32 (CPU without bf16 units (" + torch.backends.cpu.get_cpu_capability() + "))"
    ]


def test_explicit_precision_is_kept(monkeypatch):
    _cpu_units(monkeypatch, avx512_bf16=False, amx=False)
    assert resolve_precision("bf16-mixed", "cpu") == "bf16-mixed"
    assert resolve_precision("32", "cpu") == "32"


def test_none_follows_settings(monkeypatch):
    _cpu_units(monkeypatch, avx512_bf16=True, amx=False)
    monkeypatch.setattr(cf.settings, "precision", "auto")
    assert resolve_precision(None, "cpu") == "bf16-mixed"
    monkeypatch.setattr(cf.settings, "precision", "32")
    assert resolve_precision(None, "cpu") == "32"


def test_autocast_context_auto(monkeypatch):
    _cpu_units(monkeypatch, avx512_bf16=True, amx=True)
    with autocast_context("cpu", "auto"):
        assert torch.is_autocast_enabled("cpu")
    _cpu_units(monkeypatch, avx512_bf16=False, amx=False)
    with autocast_context("cpu", "auto"):
        assert not torch.is_autocast_enabled("cpu")


def test_autocast_context_rejects_unknown():
    with pytest.raises(ValueError, match="`precision` must be one of"):
        autocast_context("cpu", "fp8")


@pytest.mark.parametrize(("units", "expected"), [(False, "32-true"), (True, "bf16-mixed")])
def test_train_default_follows_hardware(monkeypatch, units, expected):
    """`model.train()` without `precision=` trains in what the (monkeypatched) CPU runs fastest."""
    _cpu_units(monkeypatch, avx512_bf16=units, amx=False)
    monkeypatch.setattr(cf.settings, "precision", "auto")
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=20)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, n_layers=1, d_model=8, n_heads=2, d_ff=8)
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.trainer.precision == expected
