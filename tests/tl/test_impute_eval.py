from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

import cellformers as cf
from cellformers.data import synthetic_counts
from cellformers.tl import evaluate_imputation, mask_expression, train_and_impute


@pytest.fixture(scope="module")
def adata():
    return synthetic_counts(n_cells=150, n_genes=80, random_state=1)


@pytest.mark.parametrize("candidates", ["all", "nonzero"])
def test_mask_expression_hides_entries(adata, candidates):
    masked, mask = mask_expression(adata, mask_fraction=0.1, candidates=candidates, random_state=0)
    counts = sparse.csr_matrix(adata.X)
    assert masked.shape == adata.shape
    assert masked is not adata
    assert list(masked.obs_names) == list(adata.obs_names)
    # masked entries are zero in the copy, every other entry is unchanged
    assert masked.X.multiply(mask).nnz == 0
    np.testing.assert_array_equal((masked.X + counts.multiply(mask)).toarray(), counts.toarray())
    per_cell = np.asarray(mask.sum(1)).ravel()
    if candidates == "all":
        assert (per_cell == 8).all()
    else:
        nnz = np.diff(counts.indptr)
        np.testing.assert_array_equal(per_cell, np.rint(0.1 * nnz))
        assert (counts.multiply(mask) > 0).sum() == mask.sum()  # only detected genes
    # reproducible
    _, mask2 = mask_expression(adata, mask_fraction=0.1, candidates=candidates, random_state=0)
    assert (mask != mask2).nnz == 0


def test_mask_probability_decreases_with_expression(adata):
    _, mask = mask_expression(adata, mask_fraction=0.2, candidates="nonzero", random_state=0)
    x = sparse.csr_matrix(adata.X).toarray()
    lib = x.sum(1, keepdims=True)
    lognorm = np.log1p(x / lib * 1e4)
    m = mask.toarray()
    detected = x > 0
    # masked detected entries are on average lower than unmasked detected ones (weights exp(-x))
    assert lognorm[m & detected].mean() < lognorm[~m & detected].mean() - 0.2


def test_methods_only_see_masked_data(adata):
    seen = {}

    def spy(masked):
        seen["X"] = sparse.csr_matrix(masked.X).copy()
        return np.zeros(masked.shape, dtype=np.float32)

    df = evaluate_imputation(adata, {"spy": spy, "zero": "no_imputation"}, random_state=3)
    _, mask = mask_expression(adata, random_state=3)
    assert seen["X"].multiply(mask).nnz == 0
    assert (sparse.csr_matrix(seen["X"]) != sparse.csr_matrix(adata.X)).nnz > 0
    # predicting zero everywhere is what "no_imputation" does on masked entries
    np.testing.assert_allclose(df.loc["spy", ["RMSE", "MAE"]], df.loc["zero", ["RMSE", "MAE"]])
    assert df.loc["spy", "n_masked"] == mask.sum()


def test_builtins_and_metrics(adata):
    df = evaluate_imputation(
        adata,
        ["knn_smoothing", "gene_mean", "no_imputation", "scvi"],
        candidates="nonzero",
        method_kwargs={"scvi": {"max_epochs": 3}},
    )
    assert list(df.index) == ["knn_smoothing", "gene_mean", "no_imputation", "scvi"]
    assert {"RMSE", "MAE", "RMSE_nonzero", "MAE_nonzero", "n_masked", "n_evaluated", "seconds"} <= set(df.columns)
    assert (df["RMSE"] >= df["MAE"]).all()
    # on hidden *detected* entries, any smoothing beats predicting zero
    assert df.loc["knn_smoothing", "RMSE"] < df.loc["no_imputation", "RMSE"]
    assert df.loc["gene_mean", "RMSE"] < df.loc["no_imputation", "RMSE"]
    assert df.attrs["params"]["candidates"] == "nonzero"


def test_zero_and_nonzero_parts_of_the_error(adata):
    df = evaluate_imputation(adata, ["gene_mean", "no_imputation"], candidates="all", random_state=0)
    # predicting zero is exact on hidden zeros, and the overall error combines the two parts by their counts
    assert df.loc["no_imputation", "RMSE_zero"] == 0.0
    assert df.loc["gene_mean", "RMSE_zero"] > 0.0
    share = df.attrs["params"]["fraction_masked_nonzero"]
    for method in df.index:
        row = df.loc[method]
        combined = share * row["RMSE_nonzero"] ** 2 + (1 - share) * row["RMSE_zero"] ** 2
        np.testing.assert_allclose(row["RMSE"] ** 2, combined, rtol=1e-9)


def test_model_methods(adata):
    tiny = {
        "preset": "small",
        "n_hidden": 16,
        "n_layers": 1,
        "n_heads": 2,
        "n_intermediate": 32,
        "n_pathway_tokens": 8,
        "n_codes": 16,
    }
    train = {"max_epochs": 1, "stage": 1, "accelerator": "cpu", "enable_progress_bar": False}
    from cellformers.model import ScPaLM

    fit = train_and_impute(ScPaLM, model_kwargs=tiny, train_kwargs=train)
    df = evaluate_imputation(adata, {"scpalm": fit})
    assert np.isfinite(df.loc["scpalm", "RMSE"])
    assert fit.model is not None
    assert fit.model.adata.n_obs == adata.n_obs
    # a trained model applied to the masked data (zero-shot)
    df2 = evaluate_imputation(adata, {"zero_shot": fit.model})
    assert np.isfinite(df2.loc["zero_shot", "MAE"])


def test_errors(adata):
    with pytest.raises(ValueError, match="built-in"):
        evaluate_imputation(adata, {"x": "magic"})
    with pytest.raises(TypeError, match="must be"):
        evaluate_imputation(adata, {"x": 3})
    with pytest.raises(ValueError, match="method_kwargs"):
        evaluate_imputation(adata, ["gene_mean"], method_kwargs={"scvi": {}})
    with pytest.raises(ValueError, match="mask_fraction"):
        mask_expression(adata, mask_fraction=1.5)
    with pytest.raises(ValueError, match="shape"):
        evaluate_imputation(adata, {"bad": lambda a: np.zeros((2, 2))})
    bad = adata.copy()
    bad.X = bad.X.toarray() / 3.3
    with pytest.raises(cf.NotCountsError):
        evaluate_imputation(bad, ["gene_mean"])
