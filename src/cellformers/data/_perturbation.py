"""Perturb-seq data in GEARS' format: pinned public downloads, a reader, and a small synthetic generator."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy import sparse

from cellformers._exceptions import ChecksumError
from cellformers._settings import settings
from cellformers._utils._counts import recover_counts as _recover_counts

if TYPE_CHECKING:
    import os
    from collections.abc import Mapping, Sequence

    from anndata import AnnData

logger = logging.getLogger(__name__)

__all__ = [
    "PERTURBATION_DATASETS",
    "PerturbationDatasetCard",
    "canonical_perturbation",
    "gears_dataset",
    "gears_de_genes",
    "read_gears_h5ad",
    "synthetic_perturbation",
]

#: Control label of GEARS' ``obs['condition']``.
CONTROL = "ctrl"


@dataclass(frozen=True)
class PerturbationDatasetCard:
    """Where a GEARS-format perturb-seq archive comes from.

    Attributes
    ----------
    name
        Short name (``"norman"``, ``"adamson"``).
    url
        Public URL of the zip archive.
    known_hash
        Pinned hash in pooch's ``"<alg>:<hex>"`` form. Harvard Dataverse publishes an MD5 per file, so the public
        cards pin that MD5.
    fname
        Archive name in the cache (``settings.cache_dir / "perturbation"``).
    member
        Path of the ``.h5ad`` inside the archive.
    description
        One line on the dataset.
    citation
        Papers to cite.
    license
        Licence of the processed files.

    Examples
    --------
    >>> import cellformers as cf
    >>> card = cf.data.PERTURBATION_DATASETS["norman"]
    >>> isinstance(card, cf.data.PerturbationDatasetCard), card.member
    (True, 'norman/perturb_processed.h5ad')
    """

    name: str
    url: str
    known_hash: str
    fname: str
    member: str
    description: str = ""
    citation: str = ""
    license: str = ""


#: GEARS' processed Perturb-seq releases on Harvard Dataverse (doi:10.7910/DVN/Q2ZV3E, CC0), the datasets of
#: scFormer section 4.3. File ids as in GEARS' ``pertdata.py``; the MD5s are those of the Dataverse records,
#: each quoted by independent public projects that downloaded and checked the archives.
PERTURBATION_DATASETS: dict[str, PerturbationDatasetCard] = {
    card.name: card
    for card in (
        PerturbationDatasetCard(
            name="norman",
            url="https://dataverse.harvard.edu/api/access/datafile/6154020",
            known_hash="md5:cdc41d6050e619c37fd9dd44d440e2b4",
            fname="norman.zip",
            member="norman/perturb_processed.h5ad",
            description="Norman et al. 2019, K562 CRISPRa, 1- and 2-gene perturbations (91,205 cells x 5,045 genes).",
            citation="Norman et al. 2019 (Science); Roohani et al. 2024, GEARS (Nat Biotechnol)",
            license="CC0-1.0",
        ),
        PerturbationDatasetCard(
            name="adamson",
            url="https://dataverse.harvard.edu/api/access/datafile/6154417",
            known_hash="md5:0bde631bae60ee8c105991ff0e0d4a20",
            fname="adamson.zip",
            member="adamson/perturb_processed.h5ad",
            description="Adamson et al. 2016, K562 CRISPRi, 1-gene perturbations (68,603 cells x 5,060 genes).",
            citation="Adamson et al. 2016 (Cell); Roohani et al. 2024, GEARS (Nat Biotechnol)",
            license="CC0-1.0",
        ),
    )
}


def canonical_perturbation(condition: str) -> str:
    """GEARS condition -> sorted perturbed genes joined by ``+`` (``"ctrl+KLF1"`` and ``"KLF1+ctrl"`` -> ``"KLF1"``).

    The control condition (and any condition without genes) gives ``"ctrl"``.

    Examples
    --------
    >>> import cellformers as cf
    >>> cf.data.canonical_perturbation("KLF1+ctrl")
    'KLF1'
    >>> cf.data.canonical_perturbation("SET+CEBPE")
    'CEBPE+SET'
    >>> cf.data.canonical_perturbation("ctrl")
    'ctrl'
    """
    genes = sorted({p.strip() for p in str(condition).split("+")} - {CONTROL, ""})
    return "+".join(genes) if genes else CONTROL


def _fetch(card: PerturbationDatasetCard) -> Path:
    import pooch

    folder = Path(settings.cache_dir) / "perturbation"
    extract_dir = f"{card.name}_extracted"
    try:
        paths = pooch.retrieve(
            url=card.url,
            known_hash=card.known_hash,
            fname=card.fname,
            path=folder,
            processor=pooch.Unzip(members=[card.member], extract_dir=extract_dir),
            progressbar=settings.progress_bar,
        )
    except ValueError as err:
        if "hash" not in str(err).lower():
            raise
        msg = f"The archive downloaded for {card.name!r} from {card.url} does not match its pinned hash {card.known_hash}."
        raise ChecksumError(msg) from err
    paths = [Path(p) for p in (paths if isinstance(paths, list) else [paths])]
    for p in paths:
        if p.name == Path(card.member).name:
            return p
    msg = f"{card.member!r} is not in the archive {card.fname!r}."
    raise FileNotFoundError(msg)


def gears_dataset(
    name: str | PerturbationDatasetCard,
    *,
    recover_counts: bool = True,
) -> AnnData:
    """Download (once, hash-checked) and read a GEARS-format perturb-seq dataset.

    Parameters
    ----------
    name
        ``"norman"`` or ``"adamson"`` (:data:`~cellformers.data.PERTURBATION_DATASETS`), or a :class:`~cellformers.data.PerturbationDatasetCard` for
        another archive (e.g. a mirror).
    recover_counts
        See :func:`~cellformers.data.read_gears_h5ad`.

    Returns
    -------
    The dataset, as :func:`~cellformers.data.read_gears_h5ad` returns it.

    Examples
    --------
    >>> adata = cf.data.gears_dataset("norman")  # downloads once into settings.cache_dir  # doctest: +SKIP

    An archive already in the cache with the pinned hash is not downloaded again. Here a tiny archive in GEARS'
    layout is put into an empty cache, with a card of its own:

    >>> import hashlib, tempfile, zipfile
    >>> from pathlib import Path
    >>> import cellformers as cf
    >>> old_cache, cf.settings.cache_dir = cf.settings.cache_dir, tempfile.mkdtemp()
    >>> h5ad = Path(tempfile.mkdtemp()) / "perturb_processed.h5ad"
    >>> cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=10, n_genes=30).write_h5ad(h5ad)
    >>> archive = cf.settings.cache_dir / "perturbation" / "tiny.zip"
    >>> archive.parent.mkdir(parents=True)
    >>> with zipfile.ZipFile(archive, "w") as zf:
    ...     zf.write(h5ad, "tiny/perturb_processed.h5ad")
    >>> card = cf.data.PerturbationDatasetCard(
    ...     name="tiny",
    ...     url="https://example.invalid/tiny.zip",  # never contacted: the cached file matches the hash
    ...     known_hash="md5:" + hashlib.md5(archive.read_bytes()).hexdigest(),
    ...     fname="tiny.zip",
    ...     member="tiny/perturb_processed.h5ad",
    ... )
    >>> adata = cf.data.gears_dataset(card, recover_counts=False)  # these counts are raw already
    >>> adata.shape, adata.obs["perturbation"].nunique()
    ((70, 30), 6)
    >>> cf.settings.cache_dir = old_cache
    """
    if isinstance(name, str):
        if name not in PERTURBATION_DATASETS:
            msg = f"Unknown perturbation dataset {name!r}; known: {', '.join(sorted(PERTURBATION_DATASETS))}."
            raise ValueError(msg)
        card = PERTURBATION_DATASETS[name]
    else:
        card = name
    return read_gears_h5ad(_fetch(card), recover_counts=recover_counts)


def read_gears_h5ad(path: str | os.PathLike, *, recover_counts: bool = True) -> AnnData:
    """Read a GEARS ``perturb_processed.h5ad`` and give it the layout the perturbation model expects.

    * ``var_names`` become the gene symbols of ``var['gene_name']`` (made unique); the original names are kept in
      ``var['gears_id']``.
    * ``obs['perturbation']``: the canonical perturbation of ``obs['condition']`` (:func:`~cellformers.data.canonical_perturbation`).
    * GEARS stores ``log1p(normalize_total)`` values in ``X``. They are kept in ``layers['log1p']``; with
      ``recover_counts`` ``X`` holds counts recovered by :func:`cellformers.pp.counts_from_normalized` (the
      smallest non-zero value of a cell is one count), which the models need.

    Parameters
    ----------
    path
        The ``.h5ad`` file.
    recover_counts
        Put recovered counts in ``X`` (and ``layers['counts']``).

    Returns
    -------
    The AnnData.

    Examples
    --------
    Write a small file in GEARS' layout (log-normalized values, gene ids as ``var_names``) and read it back:

    >>> import tempfile
    >>> from pathlib import Path
    >>> import scanpy as sc
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=10, n_genes=30)
    >>> counts = adata.X.toarray()
    >>> adata.var["gene_name"] = adata.var_names
    >>> adata.var_names = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    >>> sc.pp.normalize_total(adata)
    >>> sc.pp.log1p(adata)
    >>> path = Path(tempfile.mkdtemp()) / "perturb_processed.h5ad"
    >>> adata.write_h5ad(path)
    >>> gears = cf.data.read_gears_h5ad(path)
    >>> list(gears.var_names[:3]), list(gears.var["gears_id"][:3])
    (['CD3E', 'CD3D', 'CD4'], ['ENSG00000000000', 'ENSG00000000001', 'ENSG00000000002'])
    >>> bool((gears.X.toarray() == counts).all())  # the counts are recovered
    True
    >>> sorted(gears.layers)
    ['counts', 'log1p']
    """
    import anndata as ad

    adata = ad.read_h5ad(path)
    if "condition" not in adata.obs:
        msg = f"{path} has no obs['condition']; it is not in GEARS' format."
        raise ValueError(msg)
    adata.var["gears_id"] = adata.var_names.astype(str)
    if "gene_name" in adata.var:
        adata.var_names = pd.Index(adata.var["gene_name"].astype(str).to_numpy())
        adata.var_names_make_unique()
    adata.obs["perturbation"] = pd.Categorical(adata.obs["condition"].astype(str).map(canonical_perturbation))
    if recover_counts:
        adata.layers["log1p"] = adata.X.copy()
        counts, base, n_inexact = _recover_counts(adata.X, where=f"{path} (adata.X)")
        adata.layers["counts"] = counts
        # what `cellformers.pp.counts_from_normalized` records
        params = {"log_base": base, "key_added": "counts"}
        adata.uns["counts_from_normalized"] = {"params": params, "n_inexact_cells": n_inexact}
        adata.X = counts.copy()
    return adata


def gears_de_genes(adata: AnnData, n_genes: int = 20, key: str = "top_non_dropout_de_20") -> dict[str, list[str]]:
    """Top differentially expressed genes per perturbation from GEARS' ``uns`` (used by GEARS' DE metrics).

    GEARS keys its lists by ``obs['condition_name']`` and names genes by their original ``var_names``; both are
    translated to :func:`~cellformers.data.read_gears_h5ad`'s layout (canonical perturbation, current ``var_names``).

    Returns
    -------
    Mapping perturbation -> up to ``n_genes`` gene names; empty when ``adata.uns`` has no ``key``.

    Examples
    --------
    GEARS names the lists by ``obs['condition_name']`` and the genes by their ids:

    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=10, n_genes=30)
    >>> adata.var["gears_id"] = [f"ENSG{i:011d}" for i in range(adata.n_vars)]
    >>> adata.uns["top_non_dropout_de_20"] = {"synthetic_CD4+ctrl_1+1": ["ENSG00000000002", "ENSG00000000007"]}
    >>> cf.data.gears_de_genes(adata)
    {'CD4': ['CD4', 'LEF1']}
    """
    lists = adata.uns.get(key)
    if lists is None or "condition_name" not in adata.obs:
        return {}
    id_to_name = dict(zip(adata.var.get("gears_id", adata.var_names), adata.var_names, strict=True))
    pert_of = (
        adata.obs[["condition_name", "perturbation"]].drop_duplicates().set_index("condition_name")["perturbation"]
    )
    out: dict[str, list[str]] = {}
    for cond_name, genes in lists.items():
        if cond_name not in pert_of.index:
            continue
        names = [id_to_name[g] for g in np.asarray(genes).astype(str) if g in id_to_name]
        out[str(pert_of[cond_name])] = names[:n_genes]
    return out


def synthetic_perturbation(
    n_control: int = 300,
    n_per_perturbation: int = 80,
    n_genes: int = 60,
    perturbations: Sequence[str] = ("g0", "g1", "g2", "g0+g1", "g1+g2"),
    *,
    effect: float = 2.0,
    n_targets: int = 6,
    random_state: int = 0,
    program: Mapping[str, Sequence[int]] | None = None,
) -> AnnData:
    """Small perturb-seq counts in GEARS' layout (``obs['condition']`` like ``"A+ctrl"``, ``"A+B"``, ``"ctrl"``).

    Genes are the first ``n_genes`` symbols of :func:`~cellformers.data.synthetic_gene_symbols`. Perturbation
    names ``"g<k>"`` in ``perturbations`` are replaced by the ``k``-th gene symbol. Each perturbed gene is
    activated ``exp(effect)``-fold (CRISPRa-like) and moves ``n_targets`` downstream genes up or down by
    ``exp(±effect/2)``; effects of a pair add up in log space. Counts are gamma-Poisson around these means with a
    log-normal size factor.

    Parameters
    ----------
    n_control
        Control cells.
    n_per_perturbation
        Cells per perturbation.
    n_genes
        Genes (at most 400).
    perturbations
        Perturbations, single genes or pairs joined by ``+``.
    effect
        Log fold change of a perturbed gene.
    n_targets
        Downstream genes per perturbed gene.
    random_state
        Seed.
    program
        Optional fixed downstream gene indices per perturbed gene name.

    Returns
    -------
    AnnData with raw counts in ``X``, ``obs['condition']``, ``obs['perturbation']``, ``obs['condition_name']``,
    ``obs['cell_type']`` and ``uns['true_log_effect']`` (perturbation -> log fold change per gene).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=10, n_genes=30)
    >>> adata.shape
    (70, 30)
    >>> adata.obs["perturbation"].value_counts().sort_index().to_dict()
    {'CD3D': 10, 'CD3D+CD3E': 10, 'CD3D+CD4': 10, 'CD3E': 10, 'CD4': 10, 'ctrl': 20}
    >>> adata.uns["true_log_effect"]["CD4"].shape  # log fold change of every gene
    (30,)
    """
    import anndata as ad

    from ._synthetic import synthetic_gene_symbols

    rng = np.random.default_rng(random_state)
    symbols = synthetic_gene_symbols()[:n_genes]
    index = {f"g{k}": s for k, s in enumerate(symbols)}
    perts = ["+".join(index.get(p, p) for p in str(c).split("+")) for c in perturbations]
    genes_needed = sorted({g for p in perts for g in p.split("+")})
    missing = [g for g in genes_needed if g not in symbols]
    if missing:
        msg = f"Perturbed genes {missing} are not among the {n_genes} synthetic genes."
        raise ValueError(msg)
    base = rng.lognormal(mean=0.5, sigma=1.0, size=n_genes)
    col = {g: i for i, g in enumerate(symbols)}
    log_effect: dict[str, np.ndarray] = {}
    for g in genes_needed:
        eff = np.zeros(n_genes)
        eff[col[g]] = effect
        if program is not None and g in program:
            targets = np.asarray(program[g])
        else:
            others = np.setdiff1d(np.arange(n_genes), [col[h] for h in genes_needed])
            targets = rng.choice(others, size=min(n_targets, others.size), replace=False)
        eff[targets] += rng.choice([-1.0, 1.0], size=targets.size) * effect / 2
        log_effect[g] = eff
    conditions = [CONTROL] * n_control
    pert_effects = {CONTROL: np.zeros(n_genes)}
    for p in perts:
        parts = p.split("+")
        cond = p if len(parts) > 1 else f"{p}+{CONTROL}"
        conditions += [cond] * n_per_perturbation
        pert_effects[canonical_perturbation(cond)] = sum(log_effect[g] for g in parts)
    conditions = np.asarray(conditions)
    canon = np.asarray([canonical_perturbation(c) for c in conditions])
    mu = base[None, :] * np.exp(np.stack([pert_effects[c] for c in canon]))
    size = rng.lognormal(mean=0.0, sigma=0.3, size=(len(canon), 1))
    theta = 5.0
    counts = rng.poisson(rng.gamma(theta, mu * size / theta)).astype(np.float32)
    obs = pd.DataFrame(
        {
            "condition": pd.Categorical(conditions),
            "perturbation": pd.Categorical(canon),
            "condition_name": pd.Categorical([f"synthetic_{c}_1+1" for c in conditions]),
            "cell_type": pd.Categorical(["synthetic"] * len(canon)),
        },
        index=[f"cell_{i}" for i in range(len(canon))],
    )
    adata = ad.AnnData(sparse.csr_matrix(counts), obs=obs, var=pd.DataFrame(index=symbols))
    adata.uns["true_log_effect"] = {k: v.astype(np.float32) for k, v in pert_effects.items() if k != CONTROL}
    return adata
