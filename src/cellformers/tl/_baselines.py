"""Reference embeddings that foundation-model embeddings are compared with: HVG-PCA, scVI and Harmony."""

from __future__ import annotations

import logging
import time
import warnings
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
from scipy import sparse

from cellformers._docs import doc_dsp
from cellformers._settings import settings
from cellformers._utils import (
    check_counts,
    check_expression_values,
    check_key,
    get_matrix,
    looks_like_counts,
    resolve_adata,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

_Method = Literal["pca", "scvi", "harmony"]
#: Where each baseline is written in ``adata.obsm``.
OBSM_KEYS: dict[str, str] = {"pca": "X_pca_hvg", "scvi": "X_scvi", "harmony": "X_harmony"}
#: Upper bound of the default number of scVI epochs (CPU-friendly); see :func:`default_scvi_epochs`.
_SCVI_MAX_DEFAULT_EPOCHS = 200


def default_scvi_epochs(n_cells: int) -> int:
    """scvi-tools' heuristic ``min(round(20000 / n_cells * 400), 400)``, capped at 200 epochs for CPU runs."""
    return int(max(1, min(round(20000 / max(n_cells, 1) * 400), _SCVI_MAX_DEFAULT_EPOCHS)))


def _as_methods(methods: str | Sequence[str]) -> list[str]:
    ms = [methods] if isinstance(methods, str) else list(methods)
    if not ms:
        msg = f"`methods` is empty; choose among {sorted(OBSM_KEYS)}."
        raise ValueError(msg)
    bad = [m for m in ms if m not in OBSM_KEYS]
    if bad:
        msg = f"`methods` has unknown entries {bad!r}; choose among {sorted(OBSM_KEYS)}."
        raise ValueError(msg)
    return list(dict.fromkeys(ms))


def _have_skmisc() -> bool:
    try:
        import skmisc.loess  # noqa: F401
    except ImportError:
        return False
    return True


def _have_harmonypy() -> bool:
    try:
        import harmonypy  # noqa: F401
    except ImportError:
        return False
    return True


def _hvg_pca(
    X,
    obs: pd.DataFrame,
    var_names: pd.Index,
    *,
    is_counts: bool,
    batch_key: str | None,
    n_top_genes: int,
    n_comps: int,
    random_state: int,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Normalize + log1p (counts only) + HVG + PCA on a private AnnData; returns (PCA, HVG mask, HVG flavor)."""
    import scanpy as sc
    from anndata import AnnData

    X = sparse.csr_matrix(X, dtype=np.float32, copy=True) if sparse.issparse(X) else np.array(X, dtype=np.float32)
    ad = AnnData(X=X, obs=obs.copy(), var=pd.DataFrame(index=var_names.copy()))
    n_top = min(n_top_genes, ad.n_vars)
    if is_counts and _have_skmisc():
        flavor = "seurat_v3"
        # seurat_v3 ranks genes by the variance of their standardized counts: run it before normalizing.
        sc.pp.highly_variable_genes(ad, flavor=flavor, n_top_genes=n_top, batch_key=batch_key)
        sc.pp.normalize_total(ad, target_sum=1e4)
        sc.pp.log1p(ad)
    else:
        flavor = "seurat"
        if is_counts:
            msg = "scikit-misc is not installed, so HVGs use flavor='seurat' on log-normalized data (`pip install scikit-misc` for 'seurat_v3')."
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel + 2)
            sc.pp.normalize_total(ad, target_sum=1e4)
            sc.pp.log1p(ad)
        sc.pp.highly_variable_genes(ad, flavor=flavor, n_top_genes=n_top, batch_key=batch_key)
    hv = ad.var["highly_variable"].to_numpy(dtype=bool)
    n = int(min(n_comps, ad.n_obs - 1, int(hv.sum()) - 1))
    if n < 1:
        msg = f"too few cells ({ad.n_obs}) or highly variable genes ({int(hv.sum())}) for a PCA."
        raise ValueError(msg)
    sc.pp.pca(ad, n_comps=n, mask_var=hv, svd_solver="arpack", random_state=random_state)
    return np.asarray(ad.obsm["X_pca"], dtype=np.float32), hv, flavor


def _scvi(
    X,
    obs: pd.DataFrame,
    var_names: pd.Index,
    *,
    batch_key: str | None,
    n_latent: int,
    max_epochs: int,
    accelerator: str,
    random_state: int,
) -> np.ndarray:
    """Latent mean of scVI, trained on the raw counts of the given genes (``scvi.model.SCVI``)."""
    import scvi
    from anndata import AnnData

    X = sparse.csr_matrix(X, dtype=np.float32, copy=True) if sparse.issparse(X) else np.array(X, dtype=np.float32)
    ad = AnnData(X=X, obs=obs.copy(), var=pd.DataFrame(index=var_names.copy()))
    scvi.settings.seed = random_state
    scvi.model.SCVI.setup_anndata(ad, batch_key=batch_key)
    model = scvi.model.SCVI(ad, n_latent=n_latent)
    model.train(max_epochs=max_epochs, accelerator=accelerator, enable_progress_bar=settings.progress_bar)
    return np.asarray(model.get_latent_representation(), dtype=np.float32)


def _harmony(pca: np.ndarray, obs: pd.DataFrame, batch_key: str, *, random_state: int) -> np.ndarray:
    """Harmony-corrected PCA (``harmonypy.run_harmony``), cells × components."""
    import harmonypy

    out = harmonypy.run_harmony(pca.astype(np.float64), obs, batch_key, random_state=random_state, verbose=False)
    Z = np.asarray(out.Z_corr)
    # harmonypy >= 2 returns cells × components, older versions components × cells.
    if Z.shape != pca.shape or (pca.shape[0] == pca.shape[1] and not np.allclose(np.asarray(out.Z_orig), pca)):
        Z = Z.T
    return np.ascontiguousarray(Z, dtype=np.float32)


@doc_dsp.dedent
def baselines(
    adata: AnnData,
    *,
    methods: Sequence[_Method] = ("pca", "scvi", "harmony"),
    layer: str | None = None,
    batch_key: str | None = None,
    n_top_genes: int = 2000,
    n_comps: int = 50,
    n_latent: int = 30,
    max_epochs: int | None = None,
    accelerator: str = "auto",
    random_state: int = 0,
    key_added: str = "cellformers_baselines",
    copy: bool = False,
) -> AnnData | None:
    """Compute the baseline embeddings that a foundation model is compared with.

    Everything runs on private copies: ``adata.X``, its layers and ``adata.obsm['X_pca']`` are left untouched, and
    only the keys listed under Returns are written.

    * ``"pca"`` -- HVG-PCA. On raw counts: highly variable genes with ``flavor="seurat_v3"`` on the counts (needs
      scikit-misc; otherwise ``"seurat"`` after normalizing, with a warning), then
      ``normalize_total(target_sum=1e4)`` + ``log1p`` and PCA (``n_comps``, centred, unscaled) on the HVGs. On
      log-normalized input (non-integer values): ``flavor="seurat"`` HVGs and PCA directly. HVGs are batch-aware
      (``batch_key``) when a batch is given.
    * ``"scvi"`` -- the latent mean of ``scvi.model.SCVI`` (``n_latent``, batch as covariate) trained on the raw
      counts of those HVGs. Needs counts (:class:`~cellformers.NotCountsError` otherwise). Without
      ``max_epochs``, scvi-tools' heuristic ``min(round(20000 / n_cells * 400), 400)`` capped at 200 epochs.
    * ``"harmony"`` -- Harmony (harmonypy) on the HVG-PCA with ``batch_key``. Skipped with a warning when no
      ``batch_key`` is given or harmonypy is not installed (``pip install cellformers[benchmark]``).

    Parameters
    ----------
    adata
        Annotated data matrix with cells as observations and genes as variables; for a :class:`~mudata.MuData`,
        its ``"rna"`` modality (the embeddings are written into it).
    methods
        Baselines to compute, among ``"pca"``, ``"scvi"`` and ``"harmony"``.
    %(layer)s Log-normalized values are accepted unless ``"scvi"`` is asked for.
    %(batch_key)s
    n_top_genes
        Number of highly variable genes.
    n_comps
        Number of principal components (HVG-PCA and Harmony).
    n_latent
        Dimension of the scVI latent space.
    max_epochs
        scVI training epochs; ``None`` uses the capped heuristic above.
    accelerator
        Lightning accelerator for scVI (``"auto"``, ``"cpu"``, ``"gpu"``, …).
    %(random_state)s Seeds PCA, scVI (through ``scvi.settings.seed``, which seeds torch globally) and Harmony.
    key_added
        Key of ``adata.uns`` for the parameters, keys and runtimes.
    %(copy)s

    Returns
    -------
    Returns ``None`` if ``copy=False``, else a copy of ``adata``. Sets the following fields:

    `adata.obsm['X_pca_hvg']` : :class:`numpy.ndarray` (dtype ``float32``)
        HVG-PCA embedding (``"pca"``).
    `adata.obsm['X_scvi']` : :class:`numpy.ndarray` (dtype ``float32``)
        scVI latent mean (``"scvi"``).
    `adata.obsm['X_harmony']` : :class:`numpy.ndarray` (dtype ``float32``)
        Harmony-corrected HVG-PCA (``"harmony"``).
    `adata.uns['cellformers_baselines' | key_added]` : :class:`dict`
        ``params`` (settings, HVG flavor, scVI epochs), ``obsm_keys`` (method → key written), ``runtime_s``
        (method → seconds) and ``skipped`` (method → reason).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)  # methods=("pca", "scvi", "harmony") by default
    >>> adata.obsm["X_pca_hvg"].shape
    (100, 10)
    >>> scores = cf.tl.benchmark(adata, embeddings=["X_pca_hvg"], label_key="labels")

    See Also
    --------
    cellformers.tl.benchmark : scores these embeddings side by side.
    """
    adata = resolve_adata(adata)  # a MuData: its "rna" modality, written into
    ms = _as_methods(methods)
    X = get_matrix(adata, layer, arg="layer")
    if batch_key is not None:
        check_key(adata, "obs", batch_key, arg="batch_key")
        if adata.obs[batch_key].isna().any():
            msg = f"`batch_key={batch_key!r}`: adata.obs[{batch_key!r}] has missing values; fill or drop them first."
            raise ValueError(msg)
    for name, value in (("n_top_genes", n_top_genes), ("n_comps", n_comps), ("n_latent", n_latent)):
        if value < 1:
            msg = f"`{name}` must be a positive integer, got {value!r}."
            raise ValueError(msg)
    if max_epochs is not None and max_epochs < 1:
        msg = f"`max_epochs` must be a positive integer or None, got {max_epochs!r}."
        raise ValueError(msg)
    where = "adata.X" if layer is None else f"adata.layers[{layer!r}]"
    check_expression_values(X, arg=where)
    is_counts = looks_like_counts(X)
    if "scvi" in ms:
        check_counts(X, arg="layer", layer=layer)

    skipped: dict[str, str] = {}
    if "harmony" in ms:
        if batch_key is None:
            skipped["harmony"] = "no batch_key"
        elif not _have_harmonypy():
            skipped["harmony"] = "harmonypy is not installed (`pip install cellformers[benchmark]`)"
        if "harmony" in skipped:
            msg = f"Harmony skipped: {skipped['harmony']}."
            warnings.warn(msg, UserWarning, stacklevel=settings.warnings_stacklevel)

    obs = pd.DataFrame(index=adata.obs_names.copy())
    if batch_key is not None:
        obs[batch_key] = pd.Categorical(adata.obs[batch_key].astype(str))
    if sparse.issparse(X) or isinstance(X, np.ndarray):
        X_mem = X
    else:  # backed or other array types
        X_mem = X[:]
        X_mem = X_mem.to_memory() if hasattr(X_mem, "to_memory") else X_mem

    results: dict[str, np.ndarray] = {}
    runtime: dict[str, float] = {}
    params: dict = {
        "methods": np.asarray([m for m in ms if m not in skipped], dtype=str),
        "layer": "X" if layer is None else layer,
        "input": "counts" if is_counts else "log-normalized",
        "n_top_genes": int(n_top_genes),
        "n_comps": int(n_comps),
        "random_state": int(random_state),
    }
    if batch_key is not None:
        params["batch_key"] = batch_key

    t0 = time.perf_counter()
    logger.info("computing HVG-PCA")
    pca, hv, flavor = _hvg_pca(
        X_mem,
        obs,
        adata.var_names,
        is_counts=is_counts,
        batch_key=batch_key,
        n_top_genes=n_top_genes,
        n_comps=n_comps,
        random_state=random_state,
    )
    params["hvg_flavor"] = flavor
    params["n_hvg"] = int(hv.sum())
    if "pca" in ms:
        results["pca"] = pca
        runtime["pca"] = time.perf_counter() - t0

    if "scvi" in ms:
        epochs = default_scvi_epochs(adata.n_obs) if max_epochs is None else int(max_epochs)
        params["n_latent"] = int(n_latent)
        params["scvi_max_epochs"] = epochs
        logger.info(f"training scVI ({epochs} epochs)")
        t0 = time.perf_counter()
        results["scvi"] = _scvi(
            X_mem[:, np.flatnonzero(hv)],
            obs,
            adata.var_names[hv],
            batch_key=batch_key,
            n_latent=n_latent,
            max_epochs=epochs,
            accelerator=accelerator,
            random_state=random_state,
        )
        runtime["scvi"] = time.perf_counter() - t0

    if "harmony" in ms and "harmony" not in skipped:
        logger.info("running Harmony on the HVG-PCA")
        t0 = time.perf_counter()
        results["harmony"] = _harmony(pca, obs, batch_key, random_state=random_state)
        runtime["harmony"] = time.perf_counter() - t0

    adata = adata.copy() if copy else adata
    for m, emb in results.items():
        adata.obsm[OBSM_KEYS[m]] = emb
    entry: dict = {
        "params": params,
        "obsm_keys": {m: OBSM_KEYS[m] for m in results},
        "runtime_s": {m: float(s) for m, s in runtime.items()},
    }
    if skipped:
        entry["skipped"] = skipped
    adata.uns[key_added] = entry
    added = "".join(f"\n    {OBSM_KEYS[m]!r}, {m} embedding (adata.obsm)" for m in results)
    logger.info(f"added{added}\n    {key_added!r}, parameters and runtimes (adata.uns)")
    return adata if copy else None
