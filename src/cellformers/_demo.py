"""The ``make demo`` job: baselines and models on a bundled dataset, clustered, benchmarked and reported."""

from __future__ import annotations

import json
import logging
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from collections.abc import Callable

    import pandas as pd
    from anndata import AnnData

    from .model.base import CellformersModel

logger = logging.getLogger(__name__)


@dataclass
class _Timings:
    steps: dict[str, float] = field(default_factory=dict)

    def run(self, name: str, fn: Callable[[], object]) -> object:
        logger.info(f"demo: {name}")
        t0 = time.perf_counter()
        out = fn()
        self.steps[name] = time.perf_counter() - t0
        return out


def load_demo_data(data: str | None, label_key: str | None) -> tuple[AnnData, str]:
    """The demo dataset with raw counts in ``X`` and ``layers['counts']``, and its label column.

    Without ``data``, scanpy's bundled ``pbmc68k_reduced`` (700 PBMCs, 765 genes, shipped in the scanpy wheel, so no
    download) is used: its ``.raw`` holds log1p-normalized values, from which the counts are recovered with
    :func:`cellformers.pp.counts_from_normalized` (the smallest non-zero value of a cell is one count).
    """
    import anndata as ad
    import scanpy as sc

    from . import pp

    if data is None:
        bundled = sc.datasets.pbmc68k_reduced()
        adata = bundled.raw.to_adata()
        adata.obs = bundled.obs[["bulk_labels", "phase"]].copy()
        pp.counts_from_normalized(adata, key_added="counts")
        adata.X = adata.layers["counts"].copy()
        adata.uns["source"] = "scanpy.datasets.pbmc68k_reduced (.raw, counts recovered)"
        return adata, label_key or "bulk_labels"
    adata = ad.read_h5ad(data)
    adata.layers["counts"] = adata.X.copy()
    if label_key is None:
        label_key = "cell_type" if "cell_type" in adata.obs else None
    if label_key is None:
        msg = f"{data} has no obs['cell_type']; pass --label-key naming its label column."
        raise ValueError(msg)
    return adata, label_key


# precision comes from `cellformers.settings.precision` ("auto": bf16 only where the hardware has bf16 units; on a
# CPU without them bf16 autocast was measured ~6x slower than float32)
_TRAIN_KW = {"enable_progress_bar": False, "enable_model_summary": False}


def _train_xtrimogene(adata: AnnData, batch_key: str | None, quick: bool) -> CellformersModel:
    from .model import XTrimoGene

    XTrimoGene.setup_anndata(adata, layer="counts", batch_key=batch_key)
    model = XTrimoGene(adata, preset="3M")
    model.train(max_epochs=2 if quick else 15, batch_size=64, plan_kwargs={"lr": 1e-3}, **_TRAIN_KW)
    return model


def _train_scformer(adata: AnnData, batch_key: str | None, quick: bool) -> CellformersModel:
    from .model import ScFormer

    ScFormer.setup_anndata(adata, layer="counts", batch_key=batch_key)
    # 256 genes per cell (seeded subsampling) keeps a CPU epoch short; the paper feeds all HVGs.
    model = ScFormer(adata, max_length=256)
    model.train(max_epochs=1 if quick else 8, batch_size=32, **_TRAIN_KW)
    return model


def _train_scpalm(adata: AnnData, batch_key: str | None, quick: bool) -> CellformersModel:
    from .model import ScPaLM

    ScPaLM.setup_anndata(adata, layer="counts", batch_key=batch_key)
    model = ScPaLM(adata, preset="small")
    # stage 2 (h_C reconstructs the left-out tokens' genes) needs more epochs than the paper's few; they are cheap
    model.train(max_epochs=2 if quick else 20, max_epochs_stage2=1 if quick else 20, batch_size=64, **_TRAIN_KW)
    return model


#: Short CPU trainings of each model on the demo data; each returns the trained model.
MODEL_STEPS: dict[str, Callable[[AnnData, str | None, bool], CellformersModel]] = {
    "xtrimogene": _train_xtrimogene,
    "scformer": _train_scformer,
    "scpalm": _train_scpalm,
}


def _select_models(models: str) -> list[str]:
    if models in ("all", ""):
        return list(MODEL_STEPS)
    if models == "none":
        return []
    chosen = [m.strip().lower() for m in models.split(",") if m.strip()]
    unknown = sorted(set(chosen) - set(MODEL_STEPS))
    if unknown:
        msg = f"--models: unknown model(s) {unknown}; choose from {list(MODEL_STEPS)}, 'all' or 'none'."
        raise ValueError(msg)
    return chosen


def _markdown_table(df: pd.DataFrame) -> str:
    cols = [str(c) for c in df.columns]
    lines = ["| embedding | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    for idx, row in df.iterrows():
        cells = [f"{v:.3f}" if isinstance(v, float | np.floating) else str(v) for v in row.to_numpy()]
        lines.append(f"| {idx} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _annotate(adata: AnnData, model: CellformersModel, name: str, label_key: str, quick: bool) -> list[str]:
    """Fine-tune a classifier head on ``model`` (frozen encoder, 8:1:1 split) and score it beside the baselines."""
    from . import tl

    key = f"{name}_label"
    tl.annotate(adata, model, labels_key=label_key, key_added=key, max_epochs=15 if quick else 50)
    test = adata.uns[key]["metrics"]["test"]
    rows = [f"| {name} (head on frozen encoder) | {test['macro_f1']:.3f} | {test['macro_precision']:.3f} |"]
    reps = {"logreg_pca": "X_pca_hvg", "knn_scvi": "X_scvi"}
    methods = [m for m, rep in reps.items() if rep in adata.obsm]
    if methods:
        table = tl.annotation_baselines(adata, labels_key=label_key, split=model.annotator_, methods=methods)
        for method, row in table.iterrows():
            rows.append(f"| {method} ({row['use_rep']}) | {row['macro_f1']:.3f} | {row['macro_precision']:.3f} |")
    return [
        "## Cell-type annotation",
        "",
        f"Classifier head fine-tuned on the {name} cell embedding (`cellformers.tl.annotate`, frozen encoder), "
        f"seeded stratified 8:1:1 split of `{label_key}`, model selection on the validation cells; scores on the "
        f"{test['n_cells']} test cells, beside the baselines on the same split.",
        "",
        "| annotator | test macro-F1 | test macro-precision |",
        "|---|---|---|",
        *rows,
        "",
    ]


def _learning_lines(trained: dict[str, CellformersModel]) -> list[str]:
    """The report's check that each model learned: validation pretext loss beside its trivial predictor's."""
    from .train import learning_signal

    rows = []
    for name, model in trained.items():
        sig = learning_signal(model.history_)
        if sig is None:
            rows.append(f"| {name} | n/a | n/a | n/a | no validation epoch |")
            continue
        verdict = "learned beyond gene statistics" if sig["ratio"] < 1 else "**did not beat the trivial predictor**"
        rows.append(
            f"| {name} | {sig['pretext_loss']:.4f} | {sig['trivial_loss']:.4f} | {sig['ratio']:.3f} | {verdict} |"
        )
    return [
        "## Did the models learn?",
        "",
        "Final validation pretext loss (xTrimoGene: masked MSE; scFormer: MGM + MVC cross-entropy; scPaLM: stage-2 "
        "masked MSE) beside the loss of the trivial predictor of the same target on the same positions (each gene's "
        "mean or value distribution over the training cells, `cellformers.nn.TrivialBaseline`). A ratio below 1 "
        "means the model predicts held-out cells better than gene statistics alone. The benchmark table also "
        "scores each architecture untrained (`X_<model>_untrained`), so what training added is visible.",
        "",
        "| model | validation pretext loss | trivial loss | ratio | verdict |",
        "|---|---|---|---|---|",
        *rows,
        "",
    ]


def run_demo(
    out: str | Path = "demo_output",
    data: str | None = None,
    label_key: str | None = None,
    batch_key: str | None = None,
    models: str = "all",
    quick: bool = False,
    precision: str = "auto",
) -> Path:
    """Run the demo and write ``report.md``, ``benchmark.csv`` and ``umap.png`` to ``out``.

    ``precision`` sets :attr:`cellformers.settings.precision` for the run (``"auto"``: bf16 where the hardware has
    bf16 units). Returns the path of the report.
    """
    from . import settings

    old_precision = settings.precision
    settings.precision = precision
    try:
        return _run_demo(out, data, label_key, batch_key, models, quick)
    finally:
        settings.precision = old_precision


def _run_demo(
    out: str | Path, data: str | None, label_key: str | None, batch_key: str | None, models: str, quick: bool
) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    from importlib.metadata import version

    import torch

    from . import __version__, pl, pp, tl
    from ._utils import bf16_hardware, resolve_precision
    from .data import GeneVocab

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    timings = _Timings()
    chosen = _select_models(models)

    adata, label_key = timings.run("load data", lambda: load_demo_data(data, label_key))
    n_labels = int(adata.obs[label_key].nunique())
    timings.run("map genes", lambda: pp.map_genes(adata, GeneVocab.from_adata(adata)))
    mapping = adata.uns.get("cellformers_gene_mapping", {})

    baseline_methods = ("pca", "scvi") + (("harmony",) if batch_key else ())
    timings.run(
        "baselines",
        lambda: tl.baselines(
            adata, methods=baseline_methods, layer="counts", batch_key=batch_key, max_epochs=20 if quick else None
        ),
    )
    embeddings = [k for k in adata.obsm if k in ("X_pca_hvg", "X_scvi", "X_harmony")]

    trained: dict[str, CellformersModel] = {}
    for name in chosen:

        def _fit_and_embed(f=MODEL_STEPS[name]):
            model = f(adata, batch_key, quick)
            return model, model.get_latent_representation()

        trained[name], emb = timings.run(f"train + embed {name}", _fit_and_embed)
        key = f"X_{name}"
        adata.obsm[key] = np.asarray(emb, dtype=np.float32)
        embeddings.append(key)
        untrained = timings.run(
            f"embed {name} untrained", lambda m=trained[name]: m.untrained_copy().get_latent_representation()
        )
        adata.obsm[f"{key}_untrained"] = np.asarray(untrained, dtype=np.float32)
        embeddings.append(f"{key}_untrained")

    annotation_lines: list[str] = []
    if trained:
        first = next(iter(trained))
        annotation_lines = timings.run(
            f"annotate {first}", lambda: _annotate(adata, trained[first], first, label_key, quick)
        )

    for key in embeddings:
        timings.run(
            f"leiden {key}",
            lambda k=key: tl.leiden_search(adata, use_rep=k, n_clusters=n_labels, key_added=f"leiden_{k}"),
        )
    table = timings.run(
        "benchmark",
        lambda: tl.benchmark(adata, embeddings=embeddings, label_key=label_key, batch_key=batch_key),
    )
    table.to_csv(out / "benchmark.csv")

    def _umaps() -> None:
        import matplotlib.pyplot as plt

        n = len(embeddings)
        fig, axes = plt.subplots(1, n, figsize=(3.6 * n + 2.6, 3.8), squeeze=False, layout="constrained")
        for i, (ax, key) in enumerate(zip(axes[0], embeddings, strict=True)):
            legend = "right margin" if i == n - 1 else "none"
            tl.umap(adata, key)
            pl.embedding(adata, basis=key, color=label_key, ax=ax, show=False, title=key, legend_loc=legend)
        fig.savefig(out / "umap.png", dpi=110)
        plt.close(fig)

    timings.run("umap", _umaps)

    lines = [
        "# cellformers demo report",
        "",
        f"- cellformers {__version__}, torch {torch.__version__}, scanpy {version('scanpy')}, "
        f"scvi-tools {version('scvi-tools')}",
        f"- machine: {platform.machine()}, {platform.processor() or 'cpu'}, {torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()} ({bf16_hardware('cpu')[1]}); training precision "
        f"{resolve_precision(None, 'cpu')}",
        f"- data: {adata.uns.get('source', data)}: {adata.n_obs} cells x {adata.n_vars} genes, "
        f"labels `{label_key}` ({n_labels} classes)" + (f", batches `{batch_key}`" if batch_key else ""),
        f"- gene mapping: {mapping.get('n_mapped', 'n/a')} genes mapped",
        "",
        "## Benchmark",
        "",
        "Metrics as defined in xTrimoGene App. 4 (ARI, NMI, HOMO, CP, SIL) and scFormer App. A.1 (ASW, GraphConn, "
        "AvgBIO, AvgBATCH, Overall); Leiden clustering with as many clusters as labels.",
        "",
        _markdown_table(table),
        "",
        "![UMAP of each embedding](umap.png)",
        "",
        *_learning_lines(trained),
        *annotation_lines,
        "## Timings (seconds)",
        "",
    ]
    lines += [f"- {k}: {v:.1f}" for k, v in timings.steps.items()]
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n")
    (out / "timings.json").write_text(json.dumps(timings.steps, indent=2))
    logger.info(f"demo report written to {report}")
    return report
