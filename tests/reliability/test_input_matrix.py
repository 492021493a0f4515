"""Bad and awkward inputs x public entry points: each case works correctly or raises a cellformers error whose
message names the argument and the fix, and the caller's AnnData is unchanged after an error.

The expected outcome of every (input, entry point) pair is in ``EXPECTED`` (default: works). Inputs are variants
of one small count matrix, so a case that works is also checked against the result on the plain counts.
"""

from __future__ import annotations

import re
import warnings
from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from scipy import sparse

import cellformers as cf
from cellformers._constants import CELL_SEED_OBS_COLUMN
from cellformers._exceptions import (
    CellformersError,
    GeneMappingError,
    InvalidExpressionError,
    MissingKeyError,
    NotCountsError,
    UnknownCategoryError,
)
from cellformers.data import GeneVocab, synthetic_counts

MODELS = ("toy", "XTrimoGene", "ScFormer", "ScPaLM")
GENES = list(synthetic_counts(n_cells=1, n_genes=30).var_names)
ENSEMBL = {g: f"ENSG{i + 1:011d}" for i, g in enumerate(GENES)}


def _vocab() -> GeneVocab:
    return GeneVocab(GENES, name="tiny-30").add_ensembl_ids(ENSEMBL)


def _embedding(labels: pd.Series) -> np.ndarray:
    """Three well separated clusters following the labels, plus a little noise (seeded)."""
    rng = np.random.default_rng(0)
    centers = rng.normal(scale=10.0, size=(labels.cat.categories.size, 5))
    return (centers[labels.cat.codes.to_numpy()] + rng.normal(size=(labels.size, 5))).astype(np.float32)


# ------------------------------------------------------------------------------------------------ inputs
def _with_embedding(a):
    a.obsm["X_emb"] = _embedding(a.obs["labels"])
    return a


def _base(**kw):
    return _with_embedding(synthetic_counts(n_cells=40, n_genes=30, random_state=0, **kw))


def _set_x(a, X):
    a.X = X
    return a


def _lognorm(a):
    X = a.X.toarray()
    X = np.log1p(X / np.maximum(X.sum(1, keepdims=True), 1) * 1e4)
    return _set_x(a, X.astype(np.float32))


def _cpm(a):
    X = a.X.toarray()
    return _set_x(a, sparse.csr_matrix((X / np.maximum(X.sum(1, keepdims=True), 1) * 1e6).astype(np.float32)))


def _poke(value):
    def f(a):
        X = a.X.toarray()
        X[3, 2] = value
        return _set_x(a, X)

    return f


def _empty_cells(a):
    X = a.X.toarray()
    X[:3] = 0
    return _set_x(a, sparse.csr_matrix(X))


def _rename(fn):
    def f(a):
        a.var_names = [fn(i, g) for i, g in enumerate(a.var_names)]
        return a

    return f


def _duplicated(a):
    names = list(a.var_names)
    names[1] = names[0]
    a.var_names = names
    return a


def _unused_category(a):
    a.obs["batch"] = a.obs["batch"].cat.add_categories(["batch_9"])
    return a


def _unseen_batch(a):
    batch = a.obs["batch"].astype(str).to_numpy()
    batch[::5] = "batch_2"
    a.obs["batch"] = pd.Categorical(batch)
    return a


def _drop(column):
    def f(a):
        del a.obs[column]
        return a

    return f


def _emb_nan(a):
    a.obsm["X_emb"][4, 1] = np.nan
    return a


def _del_emb(a):
    del a.obsm["X_emb"]
    return a


#: name -> builder of the object passed as ``adata`` (a fresh one per test). Cell and gene order are those of
#: ``_base()`` except for the view (cells 5..34).
INPUTS = {
    # expression values and storage
    "counts_csr": lambda: _base(),
    "counts_csc": lambda: _set_x(_base(), sparse.csc_matrix(_base().X)),
    "counts_dense_float32": lambda: _set_x(_base(), _base().X.toarray()),
    "counts_dense_float64": lambda: _set_x(_base(), _base().X.toarray().astype(np.float64)),
    "counts_int32": lambda: _set_x(_base(), _base().X.toarray().astype(np.int32)),
    "counts_int64_csr": lambda: _set_x(_base(), sparse.csr_matrix(_base().X.toarray().astype(np.int64))),
    "log_normalized": lambda: _lognorm(_base()),
    "cpm_normalized": lambda: _cpm(_base()),
    "nan_value": lambda: _poke(np.nan)(_base()),
    "inf_value": lambda: _poke(np.inf)(_base()),
    "negative_value": lambda: _poke(-1.5)(_base()),
    "empty_cells": lambda: _empty_cells(_base()),
    "view": lambda: _base()[5:35],
    "backed": None,  # built from a file in the test (needs tmp_path)
    "mudata_rna": None,  # needs mudata
    # gene identifiers
    "genes_absent_from_vocab": lambda: _rename(lambda i, g: f"NOTAGENE{i}")(_base()),
    "duplicated_gene_names": lambda: _duplicated(_base()),
    "ensembl_with_versions": lambda: _rename(lambda i, g: f"{ENSEMBL[g]}.{i % 7 + 1}")(_base()),
    "ensembl_without_versions": lambda: _rename(lambda i, g: ENSEMBL[g])(_base()),
    "mouse_symbols": lambda: _rename(lambda i, g: g.capitalize())(_base()),
    # covariates
    "batch_with_unused_category": lambda: _unused_category(_base()),
    "batch_unseen_in_training": lambda: _unseen_batch(_base()),
    "batch_column_missing": lambda: _drop("batch")(_base()),
    # embeddings (for the tl functions that read obsm)
    "embedding_with_nan": lambda: _emb_nan(_base()),
    "embedding_missing": lambda: _del_emb(_base()),
}


def _make_input(name, tmp_path):
    """``(adata, parent)``: the object to pass, and the caller's object behind a view (else ``None``)."""
    if name == "backed":
        path = tmp_path / "backed.h5ad"
        _base().write_h5ad(path)
        return ad.read_h5ad(path, backed="r"), None
    if name == "mudata_rna":
        mudata = pytest.importorskip("mudata")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return mudata.MuData({"rna": _base()}), None
    obj = INPUTS[name]()
    return obj, (obj._adata_ref if obj.is_view else None)


def _rows(name) -> np.ndarray:
    return np.arange(5, 35) if name == "view" else np.arange(40)


def _rna(a):
    return a.mod["rna"] if hasattr(a, "mod") else a


# ------------------------------------------------------------------------------------------------ entry points
def _map_genes(a, ctx):
    cf.pp.map_genes(a, _vocab())
    ids = _rna(a).var["cellformers_token_id"].to_numpy()
    expected = np.arange(30)
    if ctx.input == "duplicated_gene_names":
        expected[1] = -1
    np.testing.assert_array_equal(ids, expected)


def _bin_values(a, ctx):
    cf.pp.bin_values(a)
    got = _rna(a).layers["X_binned"]
    got = got.toarray() if sparse.issparse(got) else np.asarray(got)
    expected = ctx.ref("bins")[_rows(ctx.input)]
    if ctx.input == "empty_cells":
        expected = expected.copy()
        expected[:3] = 0
    np.testing.assert_array_equal(got, expected)


def _check_counts(a, ctx):
    assert cf.pp.check_counts(a) is None


def _counts_from_normalized(a, ctx):
    cf.pp.counts_from_normalized(a)
    got = _rna(a).layers["counts"]
    got = got.toarray() if sparse.issparse(got) else got
    np.testing.assert_array_equal(got, _base().X.toarray())


def _filter(a, ctx):
    n_genes = (_base().X.toarray() > 0).sum(1)[_rows(ctx.input)]
    if ctx.input == "empty_cells":
        n_genes[:3] = 0
    cf.pp.filter_cells_by_genes(a, min_genes=15)
    np.testing.assert_array_equal(_rna(a).obs["n_genes"].to_numpy(), n_genes[n_genes >= 15])
    assert _rna(a).n_obs == a.n_obs == int((n_genes >= 15).sum())  # a MuData is updated too


def _setup(name):
    def run(a, ctx):
        cls = ctx.rel.model_class(name)
        cls.setup_anndata(a, batch_key="batch")
        assert CELL_SEED_OBS_COLUMN in a.obs
        assert cls._get_most_recent_anndata_manager(a) is not None

    return run


def _build(name):
    def prepare(a, ctx):
        ctx.rel.model_class(name).setup_anndata(a, batch_key="batch")

    def run(a, ctx):
        model = ctx.rel.model_class(name)(a, vocab=_vocab(), **ctx.rel.TINY.get(name, {}))
        expected = 29 if ctx.input == "duplicated_gene_names" else 30
        assert model.module.n_genes == expected

    run.prepare = prepare
    return run


def _latent(name):
    def run(a, ctx):
        model, z_ref = ctx.models[name]
        z = model.get_latent_representation(a)
        if ctx.input == "empty_cells":
            assert np.isfinite(z).all()
            np.testing.assert_allclose(z[3:], z_ref[3:], atol=1e-5)
        else:
            np.testing.assert_allclose(z, z_ref[_rows(ctx.input)], atol=1e-5)

    return run


def _embed(a, ctx):
    model, z_ref = ctx.models["toy"]
    cf.tl.embed(a, model, chunk_size=16)
    z = _rna(a).obsm["X_toy"]
    if ctx.input == "empty_cells":
        assert np.isfinite(z).all()
    else:
        np.testing.assert_allclose(z, z_ref[_rows(ctx.input)], atol=1e-5)


def _impute(a, ctx):
    model, _ = ctx.models["toy"]
    cf.tl.impute(a, model, chunk_size=16)
    values = _rna(a).layers["toy_imputed"]
    assert values.shape == (_rows(ctx.input).size, 30)
    assert np.isfinite(values).all()


def _transfer(a, ctx):
    reference = _base()
    cf.tl.transfer_labels(a, reference, labels_key="labels", use_rep="X_emb", n_neighbors=5)
    got = _rna(a).obs["labels_transferred"].astype(str).to_numpy()
    truth = _rna(a).obs["labels"].astype(str).to_numpy()
    assert (got == truth).mean() == 1.0


def _leiden(a, ctx):
    cf.tl.leiden_search(a, use_rep="X_emb", n_clusters=3, n_neighbors=5, max_iter=20)
    assert _rna(a).obs["leiden_search"].nunique() == 3


def _benchmark(a, ctx):
    df = cf.tl.benchmark(
        a, embeddings="X_emb", label_key="labels", batch_key="batch", n_neighbors=5, n_resolutions=2, max_iter=10
    )
    assert df.shape[0] == 1
    assert df.loc["X_emb", "ARI"] == pytest.approx(1.0)


ENTRIES = {
    "pp.map_genes": _map_genes,
    "pp.bin_values": _bin_values,
    "pp.check_counts": _check_counts,
    "pp.counts_from_normalized": _counts_from_normalized,
    "pp.filter_cells_by_genes": _filter,
    **{f"{m}.setup_anndata": _setup(m) for m in MODELS},
    **{f"{m}(vocab)": _build(m) for m in MODELS},
    **{f"{m}.get_latent_representation": _latent(m) for m in MODELS},
    "tl.embed": _embed,
    "tl.impute": _impute,
    "tl.transfer_labels": _transfer,
    "tl.leiden_search": _leiden,
    "tl.benchmark": _benchmark,
}

# ------------------------------------------------------------------------------------------------ expectations
_READS_X = (
    "pp.bin_values",
    "pp.check_counts",
    "pp.counts_from_normalized",
    "pp.filter_cells_by_genes",
    *(f"{m}.setup_anndata" for m in MODELS),
    *(f"{m}(vocab)" for m in MODELS),
    *(f"{m}.get_latent_representation" for m in MODELS),
    "tl.embed",
    "tl.impute",
)
_SETUP = tuple(f"{m}.setup_anndata" for m in MODELS) + tuple(f"{m}(vocab)" for m in MODELS)
_QUERY = (*(f"{m}.get_latent_representation" for m in MODELS), "tl.embed", "tl.impute")
_COUNT_INPUTS = (
    "counts_csr",
    "counts_csc",
    "counts_dense_float32",
    "counts_dense_float64",
    "counts_int32",
    "counts_int64_csr",
    "empty_cells",
    "view",
    "backed",
    "mudata_rna",
    "genes_absent_from_vocab",
    "duplicated_gene_names",
    "ensembl_with_versions",
    "ensembl_without_versions",
    "mouse_symbols",
    "batch_with_unused_category",
    "batch_unseen_in_training",
    "batch_column_missing",
    "embedding_with_nan",
    "embedding_missing",
)
_GENE_INPUTS = (
    "genes_absent_from_vocab",
    "duplicated_gene_names",
    "ensembl_with_versions",
    "ensembl_without_versions",
    "mouse_symbols",
)


def _raises(exc, *patterns):
    return ("raises", exc, patterns)


def _warns(category, *patterns):
    return ("warns", category, patterns)


def _expected() -> dict[tuple[str, str], tuple]:
    table: dict[tuple[str, str], tuple] = {}
    bad_values = {
        "nan_value": r"adata\.X contains NaN values.*Remove or impute",
        "inf_value": r"adata\.X contains infinite values.*Remove or impute",
        "negative_value": r"adata\.X contains negative values.*Pass raw counts",
    }
    for entry in _READS_X:
        for name, pattern in bad_values.items():
            table[entry, name] = _raises(InvalidExpressionError, pattern)
    for name in ("log_normalized", "cpm_normalized"):
        table["pp.check_counts", name] = _raises(NotCountsError, r"adata\.X does not look like raw counts", "layer=")
        for entry in _SETUP:
            table[entry, name] = _raises(NotCountsError, r"does not look like raw counts", "`layer=", "counts_from")
        for entry in _QUERY:
            table[entry, name] = _raises(
                NotCountsError, r"`adata` does not hold raw counts in adata\.X", "counts_from_normalized"
            )
    for name in _COUNT_INPUTS:
        table["pp.counts_from_normalized", name] = _raises(
            InvalidExpressionError, r"adata\.X already holds integer counts.*Use it as the counts"
        )
    # gene identifiers
    table["pp.map_genes", "duplicated_gene_names"] = _warns(UserWarning, "repeated names")
    table["pp.map_genes", "genes_absent_from_vocab"] = _raises(GeneMappingError, "min_coverage", "gene_symbols=")
    table["pp.map_genes", "mouse_symbols"] = _raises(GeneMappingError, "min_coverage", "case_sensitive=False")
    for m in MODELS:
        for name in ("genes_absent_from_vocab", "ensembl_with_versions", "ensembl_without_versions", "mouse_symbols"):
            table[f"{m}(vocab)", name] = _raises(GeneMappingError, "None of the genes", "map_genes")
        table[f"{m}(vocab)", "duplicated_gene_names"] = _warns(UserWarning, "repeated names", "var_names_make_unique")
    for entry in _QUERY:
        for name in _GENE_INPUTS:
            table[entry, name] = _raises(GeneMappingError, "other genes than the", "align_to_reference")
    # covariates
    for entry in _SETUP:
        if entry.endswith(".setup_anndata"):
            table[entry, "batch_with_unused_category"] = _warns(
                UserWarning, "without cells", "remove_unused_categories"
            )
        table[entry, "batch_column_missing"] = _raises(MissingKeyError, r"`batch_key='batch'` is not a key")
        table[entry, "mudata_rna"] = _raises(TypeError, r"`adata` must be an AnnData.*mdata\['rna'\]")
    for entry in _QUERY:
        table[entry, "batch_unseen_in_training"] = _raises(
            UnknownCategoryError, r"\['batch_2'\]", r"batch_key='batch'", "Relabel those cells"
        )
        table[entry, "batch_column_missing"] = _raises(MissingKeyError, r"batch_key='batch'", "Add that column")
    table["tl.benchmark", "batch_column_missing"] = _raises(MissingKeyError, r"`batch_key='batch'` is not a key")
    # backed data cannot be subset in place (the message says how to do it)
    table["pp.filter_cells_by_genes", "backed"] = _raises(ValueError, r"inplace=False.*to_memory\(\)")
    # embeddings
    for entry, arg in (
        ("tl.transfer_labels", "use_rep"),
        ("tl.leiden_search", "use_rep"),
        ("tl.benchmark", "embeddings"),
    ):
        table[entry, "embedding_with_nan"] = _raises(InvalidExpressionError, "NaN or infinite", "ecompute")
        table[entry, "embedding_missing"] = _raises(MissingKeyError, f"`{arg}='X_emb'` is not a key of `adata.obsm`")
    return table


EXPECTED = _expected()


def _applies(input_name: str, entry: str) -> bool:
    """Model construction is only tried on the inputs its ``setup_anndata`` accepts (the rest is covered there)."""
    if entry.endswith("(vocab)"):
        setup = EXPECTED.get((entry.replace("(vocab)", ".setup_anndata"), input_name), ("works",))
        return setup[0] != "raises"
    return True


CASES = [pytest.param(i, e, id=f"{i}-{e}") for i in INPUTS for e in ENTRIES if _applies(i, e)]


@pytest.fixture(scope="module")
def references():
    """Results on the plain counts that the variants must reproduce."""
    a = _base()
    return {"bins": cf.pp.bin_values(a, copy=True).layers["X_binned"].toarray()}


def test_every_expectation_names_a_case():
    assert set(EXPECTED) <= {(e, i) for i in INPUTS for e in ENTRIES}


@pytest.mark.filterwarnings("ignore::anndata.ImplicitModificationWarning")
@pytest.mark.filterwarnings("ignore:Training will be faster when sparse matrix is formatted as CSR")
@pytest.mark.filterwarnings("ignore:.*pull_on_update.*:FutureWarning")
@pytest.mark.filterwarnings("ignore:Variable names are not unique")
@pytest.mark.parametrize(("input_name", "entry"), CASES)
def test_input_matrix(input_name, entry, tmp_path, rel, tiny_models, references):
    a, parent = _make_input(input_name, tmp_path)
    ctx = SimpleNamespace(input=input_name, rel=rel, models=tiny_models, ref=references.get)
    run = ENTRIES[entry]
    if hasattr(run, "prepare"):
        run.prepare(a, ctx)
    kind, *detail = EXPECTED.get((entry, input_name), ("works",))
    try:
        if kind == "raises":
            exc, patterns = detail
            before_parent = rel.snapshot(parent) if parent is not None else None
            with rel.unchanged(a), pytest.raises(exc) as info:
                run(a, ctx)
            if exc not in (TypeError, ValueError):  # the wrong-container errors are builtin types
                assert isinstance(info.value, CellformersError)
            for pattern in patterns:
                assert re.search(pattern, str(info.value), flags=re.DOTALL), (pattern, str(info.value))
            if parent is not None:
                rel.assert_same_snapshot(before_parent, rel.snapshot(parent))
        elif kind == "warns":
            category, patterns = detail
            with pytest.warns(category) as record:
                run(a, ctx)
            text = " ".join(str(w.message) for w in record)
            for pattern in patterns:
                assert pattern in text, (pattern, text)
        else:
            before_parent = rel.snapshot(parent) if parent is not None else None
            run(a, ctx)
            if parent is not None:  # writing to a view never reaches the object it views
                rel.assert_same_snapshot(before_parent, rel.snapshot(parent))
    finally:
        if getattr(a, "isbacked", False):
            a.file.close()
