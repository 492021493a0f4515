"""GEARS with context embeddings (xTrimoGene App. 8.2): the co-expression branch reads the control cell's context.

GEARS :cite:p:`Roohani23` predicts a perturbed cell from a control cell. Its co-expression branch starts from a
learned embedding per gene (``emb_pos``, the same for every cell) and smooths it over the co-expression graph. The
xTrimoGene paper feeds the control cell's *context embedding* (the per-gene outputs of the pretrained model) into
that branch instead, "all the other parts unchanged". :func:`use_context_embedding` does exactly that to a GEARS
object: ``emb_pos`` becomes a linear map of the paired control cell's context embedding, everything else of GEARS
(graphs, perturbation branch, decoder, loss, training loop, split, metrics) is GEARS' own code.

GEARS is an optional dependency: ``pip install cellformers[gears]`` (``cell-gears`` and ``torch-geometric``).
:mod:`cellformers.downstream._gears_data` prepares GEARS' data.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellformers._exceptions import GeneMappingError
from cellformers._utils._anndata import to_dense_rows

from ._gears_data import _import_gears, fix_gears_indexing

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from anndata import AnnData
    from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["ControlContextInput", "gears_benchmark", "use_context_embedding"]


def _row_key(row: np.ndarray) -> bytes:
    return hashlib.blake2b(np.ascontiguousarray(row, dtype=np.float32).tobytes(), digest_size=16).digest()


class ControlContextInput(nn.Module):
    """GEARS' ``emb_pos`` replaced by a linear map of each paired control cell's context embedding.

    GEARS calls ``emb_pos`` with the gene indices repeated once per cell of the minibatch; this module returns, in
    that layout, ``Linear(context[control cell, gene])``: genes without a context (not in the model) get the
    bias alone. The control cell of each minibatch row is found from the row's expression (GEARS' ``data.x`` is a
    copy of the control cell's profile), which :meth:`set_batch` receives before each forward.

    Parameters
    ----------
    control_profiles
        GEARS' control cells ``(n_control, n_genes)`` (``gears.ctrl_adata.X``), to recognise the paired cell.
    fetch
        Maps control-cell indices ``(b,)`` to their context embeddings ``(b, n_context_genes, d)``.
    positions
        For each of GEARS' genes, its column in the context embedding, or ``-1``.
    n_context
        Width ``d`` of the context embedding.
    hidden_size
        GEARS' ``hidden_size``.

    Examples
    --------
    Two control cells of three genes; the context (``d = 4``) covers the first two genes:

    >>> import numpy as np
    >>> import torch
    >>> import cellformers as cf
    >>> profiles = np.array([[0.0, 1.0, 2.0], [3.0, 0.0, 1.0]], dtype=np.float32)
    >>> context = torch.randn(2, 2, 4)
    >>> layer = cf.downstream.ControlContextInput(profiles, lambda idx: context[idx], np.array([0, 1, -1]), 4, 8)
    >>> x = torch.from_numpy(profiles[[1, 0, 1]].reshape(-1, 1))  # GEARS' data.x of a minibatch of three
    >>> layer.control_indices(x).tolist()
    [1, 0, 1]
    >>> layer.set_batch(x)
    >>> layer(torch.arange(3).repeat(3)).shape  # what GEARS' co-expression branch receives
    torch.Size([9, 8])
    """

    def __init__(
        self,
        control_profiles,
        fetch: Callable[[np.ndarray], Tensor],
        positions: np.ndarray,
        n_context: int,
        hidden_size: int,
    ):
        super().__init__()
        profiles = to_dense_rows(control_profiles)
        self._lookup = {}
        for i, row in enumerate(profiles):
            self._lookup.setdefault(_row_key(row), i)
        self._fetch = fetch
        self.register_buffer("positions", torch.as_tensor(np.asarray(positions, dtype=np.int64)), persistent=False)
        self.proj = nn.Linear(n_context, hidden_size)
        self._batch_x: Tensor | None = None

    @property
    def n_genes(self) -> int:
        return int(self.positions.numel())

    def set_batch(self, x: Tensor | None) -> None:
        """Remember GEARS' ``data.x`` (``(n_cells * n_genes, 1)``) of the minibatch about to be run."""
        self._batch_x = x

    def control_indices(self, x: Tensor) -> np.ndarray:
        """Index among the control cells of each row of ``x`` (``(n_cells * n_genes, 1)``)."""
        rows = x.detach().float().cpu().numpy().reshape(-1, self.n_genes)
        idx = np.array([self._lookup.get(_row_key(r), -1) for r in rows], dtype=np.int64)
        if (idx < 0).any():
            msg = (
                f"{int((idx < 0).sum())} of {idx.size} input profiles of this GEARS minibatch are not control cells "
                "of the data the context was set up with. GEARS pairs each perturbed cell with a control cell of "
                "`pert_data.ctrl_adata`; call `use_context_embedding` on the GEARS object built from the same "
                "`pert_data`."
            )
            raise ValueError(msg)
        return idx

    def context(self, x: Tensor) -> Tensor:
        """Context embeddings ``(n_cells, n_genes, d)`` in GEARS' gene order (zeros where a gene has none)."""
        idx = self.control_indices(x)
        ctx = self._fetch(idx).to(device=self.proj.weight.device, dtype=self.proj.weight.dtype)
        out = ctx.new_zeros(idx.size, self.n_genes, ctx.shape[-1])
        have = self.positions >= 0
        out[:, have] = ctx[:, self.positions[have]]
        return out

    def forward(self, index: Tensor) -> Tensor:
        if self._batch_x is None:
            msg = "ControlContextInput runs inside the GEARS model's forward, which passes it the minibatch."
            raise RuntimeError(msg)
        out = self.proj(self.context(self._batch_x))
        return out.reshape(-1, out.shape[-1])[: index.numel()]


@functools.cache
def _context_model_class():
    """``gears.model.GEARS_Model`` whose forward hands the minibatch to its :class:`ControlContextInput`."""
    gears = _import_gears()

    class ContextGEARSModel(gears.model.GEARS_Model):
        """GEARS' model with the co-expression branch fed by context embeddings (xTrimoGene App. 8.2)."""

        def __init__(self, args: dict, context_input: ControlContextInput):
            super().__init__(args)
            self.emb_pos = context_input

        def forward(self, data):
            self.emb_pos.set_batch(data.x)
            try:
                return super().forward(data)
            finally:
                self.emb_pos.set_batch(None)

    return ContextGEARSModel


def _model_fetch(model, control: AnnData, genes: list[str], batch_size: int | None, precision, layer: str):
    from cellformers._utils._progress import progress_bar_override

    def fetch(idx: np.ndarray) -> Tensor:
        with progress_bar_override(False):  # one call per GEARS minibatch: no bar each time
            out = model.get_context_embedding(
                control,
                indices=idx,
                genes=genes,
                batch_size=batch_size or max(len(idx), 1),
                precision=precision,
                layer=layer,
            )
        return torch.from_numpy(out)

    return fetch


def _array_fetch(array) -> Callable[[np.ndarray], Tensor]:
    def fetch(idx: np.ndarray) -> Tensor:
        order = np.argsort(idx, kind="stable")  # sorted reads are cheaper on a memory-mapped file
        rows = np.empty((idx.size, *array.shape[1:]), dtype=np.float32)
        rows[order] = np.asarray(array[idx[order]], dtype=np.float32)
        return torch.from_numpy(rows)

    return fetch


def _model_input(model, aligned: AnnData) -> AnnData:
    """``aligned`` (counts in ``X``, the model's genes) laid out as the model was set up: its counts layer, its labels.

    Labels do not enter a context embedding, so every cell gets the model's first label (the control cells may have
    none, or others); a batch key changes the model's output, so it must be there.
    """
    from cellformers._exceptions import MissingKeyError

    setup = model.adata_manager.registry["setup_args"]
    if setup.get("layer"):
        aligned.layers[setup["layer"]] = aligned.X
    batch_key, labels_key = setup.get("batch_key"), setup.get("labels_key")
    if batch_key and batch_key not in aligned.obs:
        msg = (
            f"The {type(model).__name__} model was set up with `batch_key={batch_key!r}`, which `control.obs` lacks: "
            "pass the control cells' counts with that column (a batch changes the model's output)."
        )
        raise MissingKeyError(msg)
    if labels_key:  # whatever the control cells' labels are (or are not), the model's first one
        known = model.adata_manager.get_state_registry("labels").categorical_mapping
        aligned.obs[labels_key] = pd.Categorical([known[0]] * aligned.n_obs, categories=list(known))
    return aligned


def _in_gears_order(control: AnnData, gears_model) -> AnnData:
    """``control`` with its cells in the order of GEARS' control cells (by name when the names are GEARS')."""
    ctrl_names = pd.Index(gears_model.ctrl_adata.obs_names.astype(str))
    names = pd.Index(control.obs_names.astype(str))
    if control.n_obs != ctrl_names.size:
        msg = (
            f"`control` has {control.n_obs} cells but GEARS has {ctrl_names.size} control cells; pass the raw counts "
            "of `gears_model.ctrl_adata`'s cells (or `control=None` to recover them)."
        )
        raise ValueError(msg)
    shared = names.isin(ctrl_names)
    if shared.all() and not names.has_duplicates:
        return control if names.equals(ctrl_names) else control[names.get_indexer(ctrl_names)]
    if shared.any():
        msg = (
            f"{int((~shared).sum())} of the {names.size} cells of `control` are not among GEARS' control cells "
            f"(e.g. {names[~shared][:3].tolist()}); pass the raw counts of `gears_model.ctrl_adata`'s cells."
        )
        raise ValueError(msg)
    logger.info("`control` has other cell names than GEARS' control cells: taken to be in the same order.")
    return control


def _control_counts(gears_model) -> AnnData:
    """Raw counts of GEARS' control cells, recovered from its log-normalized ``ctrl_adata`` (genes: ``gene_name``)."""
    import anndata as ad

    from cellformers._utils._counts import recover_counts

    ctrl = gears_model.ctrl_adata
    counts, _, _ = recover_counts(ctrl.X, where="gears.ctrl_adata.X")
    names = ctrl.var["gene_name"].astype(str).to_numpy() if "gene_name" in ctrl.var else ctrl.var_names.to_numpy()
    out = ad.AnnData(counts, obs=pd.DataFrame(index=ctrl.obs_names.astype(str)))
    out.var_names = pd.Index(names).astype(str)
    out.var_names_make_unique()
    return out


def use_context_embedding(
    gears_model: Any,
    context: Any,
    *,
    control: AnnData | None = None,
    genes: Sequence[str] | None = None,
    min_gene_fraction: float = 0.5,
    batch_size: int | None = None,
    precision: str | None = None,
    layer: str = "decoder",
) -> Any:
    """Feed GEARS' co-expression branch the control cell's context embedding (xTrimoGene App. 8.2).

    Replaces ``gears_model.model`` (built by ``gears_model.model_initialize``) by the same GEARS network whose
    per-gene input embedding ``emb_pos`` is ``Linear(context embedding of the paired control cell)``; the
    perturbation branch, graphs, decoder, loss, ``train`` and evaluation stay GEARS' own. The context source is
    kept frozen (it is not trained with GEARS).

    Parameters
    ----------
    gears_model
        A ``gears.GEARS`` after ``model_initialize(...)``.
    context
        Either a trained cellformers model with ``get_context_embedding``
        (:class:`~cellformers.model.XTrimoGene`, :class:`~cellformers.model.ScFormer`), run on each minibatch's
        control cells, or a precomputed array-like ``(n_control, len(genes), d)`` whose rows are GEARS' control
        cells in the order of ``gears_model.ctrl_adata`` (e.g. ``np.load(path, mmap_mode="r")`` of
        :func:`cellformers.tl.context_embedding`).
    control
        With a model: raw counts of GEARS' control cells, with gene names as ``var_names``: matched to
        ``gears_model.ctrl_adata`` by cell name when they carry its names, else taken in its order; best with every gene the model was set up with, since its normalization sums over them
        (genes it lacks are zero-filled by :func:`cellformers.pp.align_to_reference`). ``None``: recovered from
        GEARS' log-normalized ``ctrl_adata`` (each cell's smallest non-zero value taken as one count), which holds
        GEARS' genes only.
    genes
        With an array: the gene names of its second axis (required). With a model: ignored (GEARS' genes that are
        among the model's input genes).
    min_gene_fraction
        Smallest fraction of GEARS' genes that must have a context embedding; below it a
        :class:`~cellformers.GeneMappingError` is raised (map gene names first).
    batch_size, precision, layer
        Passed to the model's ``get_context_embedding`` (``layer="decoder"``: xTrimoGene's per-gene decoder
        outputs, the paper's context embedding).

    Returns
    -------
    ``gears_model``, with ``model`` and ``best_model`` replaced.

    Notes
    -----
    GEARS' ``load_pretrained`` builds a plain GEARS network, which has no ``emb_pos.proj``. To reload a trained
    context arm, build the GEARS object as before, call this function, then
    ``gears_model.best_model.load_state_dict(torch.load(path))`` with the ``state_dict`` saved from it.

    Examples
    --------
    A small synthetic perturb-seq screen and an xTrimoGene trained on its control cells:

    >>> import tempfile
    >>> import gears
    >>> import cellformers as cf
    >>> counts = cf.data.synthetic_perturbation(
    ...     n_control=60, n_per_perturbation=10, n_genes=30, perturbations=("g0", "g1", "g2", "g3", "g0+g1", "g1+g2")
    ... )
    >>> go = {g: {f"GO:{i % 4}", f"GO:{i % 5 + 4}"} for i, g in enumerate(counts.var_names)}
    >>> pert_data = cf.downstream.gears_pert_data(counts, tempfile.mkdtemp(), gene2go=go, batch_size=8)
    >>> control = counts[counts.obs["condition"] == "ctrl"].copy()
    >>> cf.model.XTrimoGene.setup_anndata(control)
    >>> model = cf.model.XTrimoGene(control, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> g = gears.GEARS(pert_data, device="cpu")
    >>> g.model_initialize(hidden_size=8, **cf.downstream.gears_go_graph(go, pert_data.pert_names))
    >>> g = cf.downstream.use_context_embedding(g, model, control=control)
    >>> type(g.model.emb_pos).__name__
    'ControlContextInput'
    >>> g.train(epochs=1)

    The paper's data (Norman et al., GEARS' processed release; downloads once):

    >>> pert_data = gears.PertData("./data")  # doctest: +SKIP
    >>> pert_data.load(data_name="norman")  # doctest: +SKIP
    >>> pert_data.prepare_split(split="simulation", seed=1)  # doctest: +SKIP
    >>> pert_data.get_dataloader(batch_size=32)  # doctest: +SKIP
    >>> cf.downstream.fix_gears_indexing(pert_data)  # doctest: +SKIP
    >>> g = gears.GEARS(pert_data, device="cuda")  # doctest: +SKIP
    >>> g.model_initialize(hidden_size=64)  # doctest: +SKIP
    >>> cf.downstream.use_context_embedding(g, model)  # counts recovered from GEARS' data  # doctest: +SKIP
    """
    from copy import deepcopy

    if getattr(gears_model, "config", None) is None or getattr(gears_model, "model", None) is None:
        msg = (
            "`gears_model` has no network yet: call `gears_model.model_initialize(...)` before `use_context_embedding`."
        )
        raise ValueError(msg)
    if not 0.0 <= min_gene_fraction <= 1.0:
        msg = f"`min_gene_fraction` must be in [0, 1], got {min_gene_fraction}."
        raise ValueError(msg)
    gears_genes = pd.Index([str(g) for g in gears_model.gene_list])
    n_control = gears_model.ctrl_adata.n_obs
    if hasattr(context, "get_context_embedding"):
        from cellformers.model.base._context import context_genes
        from cellformers.pp import align_to_reference

        control = _control_counts(gears_model) if control is None else _in_gears_order(control, gears_model)
        _, model_genes = context_genes(context, None)
        names = [g for g in gears_genes if g in set(model_genes)]
        aligned = _model_input(context, align_to_reference(control, context.get_var_names(), min_coverage=0.0))
        fetch = _model_fetch(context, aligned, names, batch_size, precision, layer)
        n_context = int(fetch(np.zeros(1, dtype=np.int64)).shape[-1])
    else:
        if genes is None:
            msg = "`genes` is required with a precomputed context array: the gene names of its second axis."
            raise ValueError(msg)
        names = [str(g) for g in genes]
        shape = tuple(getattr(context, "shape", ()))
        if len(shape) != 3 or shape[0] != n_control or shape[1] != len(names):
            msg = (
                f"`context` must be an array (n_control={n_control}, len(genes)={len(names)}, d), got shape {shape}. "
                "Its rows are GEARS' control cells in the order of `gears_model.ctrl_adata`."
            )
            raise ValueError(msg)
        fetch = _array_fetch(context)
        n_context = int(shape[2])
    column = pd.Index(names).get_indexer(gears_genes)
    covered = float((column >= 0).mean())
    if covered < min_gene_fraction:
        msg = (
            f"Only {covered:.1%} of GEARS' {gears_genes.size} genes have a context embedding (`min_gene_fraction`="
            f"{min_gene_fraction}); e.g. missing: {gears_genes[column < 0][:5].tolist()}. Map the gene names to the "
            "model's (cf.pp.map_genes) or lower `min_gene_fraction` knowingly."
        )
        raise GeneMappingError(msg)
    logger.info(
        "GEARS context input: %d of %d genes have a context embedding (d = %d).",
        (column >= 0).sum(),
        gears_genes.size,
        n_context,
    )
    context_input = ControlContextInput(
        gears_model.ctrl_adata.X, fetch, column, n_context, int(gears_model.config["hidden_size"])
    )
    model = _context_model_class()(gears_model.config, context_input).to(gears_model.device)
    gears_model.model = model
    gears_model.best_model = deepcopy(model)
    return gears_model


#: Table 3's columns: GEARS' test subgroups (simulation split) under the paper's names.
_SUBGROUPS = {
    "unseen_single": "1-gene",
    "combo_seen0": "2-gene (seen0)",
    "combo_seen1": "2-gene (seen1)",
    "combo_seen2": "2-gene (seen2)",
}


def _test_metrics(gears_model) -> dict[str, float]:
    """GEARS' own test metrics of ``best_model``, with the top-20-DE MSE of each test subgroup (Table 3)."""
    from gears.inference import compute_metrics, evaluate

    loader = gears_model.dataloader.get("test_loader")
    if loader is None:
        msg = "GEARS has no test split: call `pert_data.prepare_split` with a split that has a test set."
        raise ValueError(msg)
    res = evaluate(loader, gears_model.best_model, gears_model.config["uncertainty"], gears_model.device)
    overall, per_pert = compute_metrics(res)
    row = {k: float(overall[k]) for k in ("mse", "pearson", "mse_de", "pearson_de")}
    subgroups = (getattr(gears_model, "subgroup", None) or {}).get("test_subgroup", {})
    for key, label in _SUBGROUPS.items():
        perts = [p for p in subgroups.get(key, []) if p in per_pert]
        row[f"mse_de {label}"] = float(np.mean([per_pert[p]["mse_de"] for p in perts])) if perts else float("nan")
    return row


def gears_benchmark(
    pert_data: Any,
    context: Any,
    *,
    control: AnnData | None = None,
    genes: Sequence[str] | None = None,
    seeds: Sequence[int] = (1,),
    epochs: int = 20,
    lr: float = 1e-3,
    device: str = "cpu",
    model_kwargs: dict | None = None,
    context_kwargs: dict | None = None,
) -> pd.DataFrame:
    """Plain GEARS beside GEARS with context embeddings, on GEARS' split and metrics (xTrimoGene App. 8.2).

    Both arms are read against the "no change" prediction.

    For every seed both arms are built from the same ``pert_data`` (its split and minibatches), with the same
    ``model_initialize`` arguments and the same seed, and trained with GEARS' ``train``; only the co-expression
    branch's input differs (:func:`use_context_embedding`). Each arm is scored by GEARS' ``evaluate`` /
    ``compute_metrics`` on the test split, with the top-20-DE MSE per test subgroup of the simulation split
    (App. Table 3's columns).

    Parameters
    ----------
    pert_data
        A ``gears.PertData`` after ``prepare_split`` and ``get_dataloader`` (:func:`fix_gears_indexing` is
        applied).
    context, control, genes
        As in :func:`use_context_embedding`.
    seeds
        Seeds of the model initialisation and training (``torch`` and NumPy global state, as GEARS uses them).
    epochs, lr
        GEARS' ``train`` arguments.
    device
        GEARS' device.
    model_kwargs
        Arguments of GEARS' ``model_initialize`` (e.g. ``hidden_size``, precomputed ``G_go``/``G_go_weight``).
    context_kwargs
        Further arguments of :func:`use_context_embedding` (``min_gene_fraction``, ``batch_size``,
        ``precision``, ``layer``).

    Returns
    -------
    A ``"no change"`` row (each perturbed cell predicted by its paired control cell, GEARS' ``no_perturb``; the
    reference both arms must beat), then one row per arm (``"gears"``, ``"gears+context"``) and seed: ``mse``,
    ``pearson``, ``mse_de`` (top-20 DE genes, the paper's metric), ``pearson_de``, ``mse_de <subgroup>`` and
    ``train_s``. GEARS scores each perturbation by comparing the mean prediction with the mean observed profile.

    Examples
    --------
    >>> import tempfile
    >>> import cellformers as cf
    >>> counts = cf.data.synthetic_perturbation(
    ...     n_control=60, n_per_perturbation=10, n_genes=30, perturbations=("g0", "g1", "g2", "g3", "g0+g1", "g1+g2")
    ... )
    >>> go = {g: {f"GO:{i % 4}", f"GO:{i % 5 + 4}"} for i, g in enumerate(counts.var_names)}
    >>> pert_data = cf.downstream.gears_pert_data(counts, tempfile.mkdtemp(), gene2go=go, batch_size=8)
    >>> control = counts[counts.obs["condition"] == "ctrl"].copy()
    >>> cf.model.XTrimoGene.setup_anndata(control)
    >>> model = cf.model.XTrimoGene(control, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> graph = cf.downstream.gears_go_graph(go, pert_data.pert_names)
    >>> res = cf.downstream.gears_benchmark(
    ...     pert_data, model, control=control, epochs=1, model_kwargs={"hidden_size": 8, **graph}
    ... )
    >>> res["arm"].tolist()
    ['no change', 'gears', 'gears+context']
    """
    import time

    gears = _import_gears()
    if not seeds:
        msg = "`seeds` is empty; pass at least one seed, e.g. seeds=(1,)."
        raise ValueError(msg)
    fix_gears_indexing(pert_data)
    rows = []
    # the reference every arm must beat: each perturbed cell predicted by its paired control (GEARS' no_perturb)
    g = gears.GEARS(pert_data, device=device)
    g.model_initialize(**{**(model_kwargs or {}), "no_perturb": True})
    g.best_model = g.model
    rows.append({"arm": "no change", "seed": np.nan, **_test_metrics(g), "train_s": 0.0})
    for seed in seeds:
        for arm in ("gears", "gears+context"):
            torch.manual_seed(seed)
            np.random.seed(seed)  # noqa: NPY002 - GEARS draws from NumPy's global state
            g = gears.GEARS(pert_data, device=device)
            g.model_initialize(**(model_kwargs or {}))
            if arm == "gears+context":
                use_context_embedding(g, context, control=control, genes=genes, **(context_kwargs or {}))
            t0 = time.perf_counter()
            g.train(epochs=epochs, lr=lr)
            rows.append({"arm": arm, "seed": seed, **_test_metrics(g), "train_s": time.perf_counter() - t0})
    return pd.DataFrame(rows)
