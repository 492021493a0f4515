from __future__ import annotations

import pytest

import cellformers as cf
from cellformers.model.base._presets import preset_config

TABLES = {
    cf.model.XTrimoGene: cf.model.XTRIMOGENE_PRESETS,
    cf.model.ScFormer: cf.model.SCFORMER_PRESETS,
    cf.model.ScFormerPerturbation: cf.model.SCFORMER_PRESETS,
    cf.model.ScPaLM: cf.model.SCPALM_PRESETS,
}


def test_preset_config_takes_explicit_values_over_the_preset_and_ignores_none():
    table = {"a": {"x": 1, "y": 2}}
    assert preset_config("M", table, "a", {"x": 5, "y": None}) == {"x": 5, "y": 2}
    with pytest.raises(ValueError, match=r"`preset` of M must be one of \['a'\], got 'b'"):
        preset_config("M", table, "b")


@pytest.mark.parametrize("cls", list(TABLES), ids=lambda c: c.__name__)
def test_every_model_has_a_tiny_preset_that_is_its_smallest(cls):
    table = TABLES[cls]
    assert "tiny" in table
    sizes = {name: max(v for k, v in cfg.items() if isinstance(v, int)) for name, cfg in table.items()}
    assert sizes["tiny"] == min(sizes.values())


@pytest.mark.parametrize("cls", [cf.model.XTrimoGene, cf.model.ScFormer, cf.model.ScPaLM], ids=lambda c: c.__name__)
def test_the_tiny_preset_builds_a_small_model_and_explicit_arguments_win(cls):
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cls.setup_anndata(adata)
    tiny = cls(adata, preset="tiny")
    n_tiny = sum(p.numel() for p in tiny.module.parameters())
    assert n_tiny < 60_000
    with pytest.raises(ValueError, match="`preset` of"):
        cls(adata, preset="huge")


def test_scformer_explicit_width_overrides_its_preset():
    adata = cf.data.synthetic_counts(n_cells=40, n_genes=30)
    cf.model.ScFormer.setup_anndata(adata)
    model = cf.model.ScFormer(adata, preset="tiny", d_model=8, n_heads=2)
    assert model.module.d_model == 8
    assert "tiny preset" in model._model_summary_string
