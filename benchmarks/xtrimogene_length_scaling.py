"""Sequence-length scaling of xTrimoGene: encoder length vs the number of non-zero genes, up to bulk-like input.

xTrimoGene's encoder (full attention) sees each cell's non-zero genes, its Performer decoder all genes of the
vocabulary. The encoder cost therefore grows with the number ``k`` of expressed genes (a linear part, the
projections and feed-forward layers, ``~24 · d² · k`` FLOPs per layer, and a quadratic part, the attention,
``~4 · d · k²``), while the decoder cost is fixed by the vocabulary size. Bulk RNA-seq has almost every gene
non-zero; ``max_encoder_length`` caps the encoder at a sample's most highly expressed genes (time and memory
bounded, the genes beyond the cap enter only the decoder, through their value embedding).

Inputs, over the 13,714 genes of pbmc3k (``--vocab pbmc3k``, where every gene is expressed in some cell) or
xTrimoGene's 19,264-gene list (``--vocab scfoundation``, pbmc3k genes mapped, the others zero):

* ``k`` non-zero genes for each ``k`` of ``--lengths``: real cells, summed in a fixed random order until at least
  ``k`` genes are non-zero (one cell up to a few thousand genes, a pseudo-cell of several cells above), of which
  ``k`` non-zero genes chosen at random are kept (:func:`input_with_k_genes`);
* ``bulk``: the pseudo-bulk of all 2,638 cells (the sum of their counts; 13,713 of 13,714 genes non-zero);
* ``bulk`` again with ``max_encoder_length`` = each of ``--caps``;
* for the embedding comparison only: the pseudo-bulk of each cell type with at least 100 cells (six bulk samples
  of different composition), embedded without and with each cap.

Per input, with the model (``--preset``, default ``"10M"``, untrained weights, seed 0) and one sample per batch:

* the embedding (``module.inference(apply_mask=False)``, the computation of ``get_latent_representation``: the
  encoder alone) in float32 and under bf16 autocast;
* one training step (masked forward, backward, AdamW) in float32 and bf16, with the encoder's and the decoder's
  forward time measured apart;
* FLOPs of each (:class:`torch.utils.flop_counter.FlopCounterMode`, counted on the warm-up run), split into the
  encoder's attention (SDPA), the rest of the encoder and the decoder;
* peak RSS of each.

Timings: the CPU time of the worker (``time.process_time``, one torch thread by default) is the primary number,
the wall time is reported beside it (see ``_common``). Each measurement is the median of repeated runs after one
warm-up run (at least one run, more while the timed runs stay under ``--min-seconds``).

Memory: each input runs in a fresh worker process (``--worker-per input``, the default) that takes its
measurements one after the other, resetting the peak (``VmHWM``) to the current RSS before each;
``--worker-per measurement`` starts a fresh process for every measurement instead (slower: each start imports
scvi-tools). Workers run with glibc keeping freed memory for reuse (``scaling.MALLOC_ENV["kept"]``), so a peak
is the high-water mark of the heap.

The embedding change from the cap (max pooling, float32): the cosine similarity of each cell-type bulk's capped
and uncapped embedding, against the similarity of different cell types' uncapped embeddings, both raw and
"centered" (each set of embeddings, capped or uncapped, minus its mean over the cell types: max-pooled features of
thousands of tokens share a large common part); whether each centered capped embedding is still closest to its own
uncapped one; and the correlation of the distances between the cell types with and without the cap. The weights are
untrained (seed 0), so this shows what the cap does to a random encoder's pooled output; a trained model may be
more or less sensitive.

The default run took 15 minutes on a shared two-core machine (one torch thread; the bulk input dominates).

Usage::

    python benchmarks/xtrimogene_length_scaling.py     # -> benchmarks/results/xtrimogene_length_scaling.json
    python benchmarks/xtrimogene_length_scaling.py --lengths 250,1000 --caps 2048 --skip-fp32-train-above 0
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    PBMC3K,
    RESULTS,
    Clock,
    flop_counter,
    loadavg,
    machine_info,
    quiet_libraries,
    reset_peak_rss,
    run_worker,
    status_mb,
    write_json,
)
from scaling import MALLOC_ENV  # noqa: E402
from xtrimogene_efficiency import GENE_LIST  # noqa: E402

#: Numbers of non-zero genes of the single-cell-like inputs.
LENGTHS = (250, 500, 1000, 2000, 4000, 8000)
#: ``max_encoder_length`` values applied to the bulk input.
CAPS = (2048, 4096)
#: Cell types with at least this many cells get a pseudo-bulk for the embedding comparison.
MIN_CELLS_PER_TYPE = 100
#: Measurements of a worker: (kind, precision).
MEASUREMENTS = (("embed", "fp32"), ("embed", "bf16"), ("train", "bf16"), ("train", "fp32"))


# ----------------------------------------------------------------------------- inputs
def input_with_k_genes(counts, k: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """A count vector with exactly ``k`` non-zero genes, made of real cells.

    Cells (rows of ``counts``) are summed in a random order until at least ``k`` genes are non-zero; ``k`` of those
    genes, drawn at random, keep their summed counts and the others are set to zero.

    Parameters
    ----------
    counts
        Cells x genes counts (dense array or scipy sparse matrix).
    k
        Number of non-zero genes wanted (at least 1).
    seed
        Seed of the cell order and of the choice of genes.

    Returns
    -------
    The ``float32`` vector ``(n_genes,)`` and the number of cells summed.
    """
    from scipy import sparse

    n_cells, n_genes = counts.shape
    if k < 1 or k > n_genes:
        msg = f"`k` must be between 1 and the number of genes ({n_genes}), got {k}."
        raise ValueError(msg)
    x = sparse.csr_matrix(counts, dtype=np.float64)
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_cells)
    total = np.zeros(n_genes)
    used = 0
    for row in order:
        start, stop = x.indptr[row], x.indptr[row + 1]
        np.add.at(total, x.indices[start:stop], x.data[start:stop])
        used += 1
        if np.count_nonzero(total > 0) >= k:
            break
    nonzero = np.flatnonzero(total > 0)
    if nonzero.size < k:
        msg = f"all {n_cells} cells together have only {nonzero.size} non-zero genes, fewer than `k`={k}."
        raise ValueError(msg)
    keep = rng.choice(nonzero, size=k, replace=False)
    out = np.zeros(n_genes, dtype=np.float32)
    out[keep] = total[keep]
    return out, used


def pseudo_bulk(counts, rows: np.ndarray | None = None) -> np.ndarray:
    """The sum of the counts of the cells ``rows`` (all cells: ``None``) as a ``float32`` vector."""
    sub = counts if rows is None else counts[rows]
    return np.asarray(sub.sum(0), dtype=np.float64).ravel().astype(np.float32)


def cap_coverage(counts: np.ndarray, cap: int) -> dict:
    """Share of the non-zero genes and of the counts that the ``cap`` most highly expressed genes hold."""
    nz = np.sort(counts[counts > 0])[::-1]
    kept = nz[:cap]
    return {
        "genes_kept": int(kept.size),
        "genes_dropped": int(nz.size - kept.size),
        "counts_kept_fraction": float(kept.sum() / nz.sum()) if nz.size else 1.0,
    }


def load_counts(vocab: str):
    """pbmc3k counts (CSR, cells x genes) over the chosen vocabulary, and the cell types."""
    import anndata as ad
    from scipy import sparse

    adata = ad.read_h5ad(PBMC3K)
    x = sparse.csr_matrix(adata.X, dtype=np.float32)
    cell_types = adata.obs["cell_type"].astype(str).to_numpy()
    if vocab == "pbmc3k":
        return x, cell_types
    import pandas as pd

    genes = pd.read_csv(GENE_LIST, sep="\t")["gene_name"].astype(str)
    pos = pd.Index(genes).get_indexer(adata.var_names)
    src = np.flatnonzero(pos >= 0)
    mapping = sparse.csr_matrix((np.ones(src.size, np.float32), (src, pos[src])), shape=(adata.n_vars, len(genes)))
    return sparse.csr_matrix(x @ mapping), cell_types


def build_inputs(vocab: str, lengths: tuple[int, ...], seed: int = 0) -> dict[str, tuple[np.ndarray, dict]]:
    """Every input of the benchmark: ``name -> (counts vector, description)``.

    ``k=<k>`` and ``bulk`` are timed; ``bulk:<cell type>`` are only embedded for the cap comparison.
    """
    x, cell_types = load_counts(vocab)
    inputs = {}
    for k in lengths:
        vec, used = input_with_k_genes(x, k, seed=seed)
        inputs[f"k={k}"] = (vec, {"source": f"{used} real cell(s) summed, {k} genes kept", "cells_summed": used})
    inputs["bulk"] = (pseudo_bulk(x), {"source": "pseudo-bulk of all cells", "cells_summed": x.shape[0]})
    types, sizes = np.unique(cell_types, return_counts=True)
    for cell_type in types[sizes >= MIN_CELLS_PER_TYPE]:
        rows = np.flatnonzero(cell_types == cell_type)
        inputs[f"bulk:{cell_type}"] = (
            pseudo_bulk(x, rows),
            {"source": f"pseudo-bulk of the {cell_type}", "cells_summed": int(rows.size)},
        )
    for vec, info in inputs.values():
        info["nonzero_genes"] = int(np.count_nonzero(vec))
        info["total_counts"] = float(vec.sum())
    return inputs


# ----------------------------------------------------------------------------- worker
def _flops(mode) -> dict:
    """Total FLOPs of a finished counter, split into encoder attention, rest of the encoder and decoder."""
    counts = mode.get_flop_counts()

    def ops_of(attr: str, cls: str) -> dict:
        # the module's name: "<root>.encoder" under the module's own forward, its class name when called directly
        name = next((n for n in counts if n == cls or n.endswith(f".{attr}")), None)
        return counts.get(name, {})

    enc, dec = ops_of("encoder", "TransformerEncoder"), ops_of("decoder", "Performer")
    attention = sum(int(v) for op, v in enc.items() if "attention" in str(op))
    encoder = sum(int(v) for v in enc.values())
    return {
        "flops": int(mode.get_total_flops()),
        "encoder_flops": encoder,
        "attention_flops": attention,
        "encoder_other_flops": encoder - attention,
        "decoder_flops": sum(int(v) for v in dec.values()),
    }


def _timed(fn, min_seconds: float, max_repeats: int) -> dict:
    """Median wall and CPU seconds of repeated calls of ``fn`` (at least one; more while under ``min_seconds``)."""
    walls, cpus, extra = [], [], []
    spent = 0.0
    while not walls or (spent < min_seconds and len(walls) < max_repeats):
        clock = Clock()
        out = fn()
        wall, cpu = clock.read()
        walls.append(wall)
        cpus.append(cpu)
        extra.append(out)
        spent += cpu
    med = int(np.argsort(cpus)[len(cpus) // 2])
    return {
        "cpu_s": float(np.median(cpus)),
        "wall_s": float(np.median(walls)),
        "n_timed": len(walls),
        "cpu_s_all": [round(c, 4) for c in cpus][:8],
        "extra": extra[med],
    }


def _module(args: dict, n_genes: int, cap: int | None = None):
    """The preset's module with seed-0 weights (the same in every worker), in a worker set up for measuring."""
    import torch

    torch.set_num_threads(int(args["threads"]))
    quiet_libraries()
    from cellformers.model import XTRIMOGENE_PRESETS
    from cellformers.module import XTrimoGeneModule

    torch.manual_seed(0)
    return XTrimoGeneModule(np.arange(n_genes), n_genes, **XTRIMOGENE_PRESETS[args["preset"]], max_encoder_length=cap)


def similarity_worker(args: dict) -> dict:
    """Float32 max-pooled embeddings of ``args["inputs"]`` (``name -> .npy path``), uncapped and with each cap."""
    import torch

    from cellformers._constants import MODULE_KEYS

    vectors = {name: np.load(path) for name, path in args["inputs"].items()}
    module = _module(args, next(iter(vectors.values())).shape[0])
    module.eval()
    out = {}
    with torch.inference_mode():
        for name, vec in vectors.items():
            x = torch.from_numpy(vec)[None]
            for cap in [None, *args["caps"]]:
                inf = module.inference(x, apply_mask=False, max_encoder_length=cap)
                out[f"{name}|{cap}"] = inf[MODULE_KEYS.CELL_EMBEDDING][0].numpy().tolist()
    return out


def worker(args: dict) -> list[dict]:
    """Timings, FLOPs and peak RSS of ``args["measurements"]`` (``(kind, precision)`` pairs) on one input."""
    import torch
    from scvi import REGISTRY_KEYS

    from cellformers._constants import MODULE_KEYS, REGISTRY_KEYS_CF
    from cellformers._utils import autocast_context

    counts = np.load(args["input_path"])
    module = _module(args, counts.shape[0], args["cap"])
    x = torch.from_numpy(counts)[None]
    seed = torch.zeros(1, 1)
    tensors = {REGISTRY_KEYS.X_KEY: x, REGISTRY_KEYS_CF.CELL_SEED: seed}
    opt = torch.optim.AdamW(module.parameters(), lr=1e-4)
    results = []
    for kind, precision in args["measurements"]:
        prec = "bf16" if precision == "bf16" else None

        if kind == "embed":
            module.eval()

            def run(prec=prec):
                with torch.inference_mode(), autocast_context("cpu", prec):
                    inf = module.inference(x, seed, apply_mask=False)
                    length = int((~inf[MODULE_KEYS.PADDING_MASK]).sum())
                    return length, inf[MODULE_KEYS.CELL_EMBEDDING][0].float().numpy().copy()

        else:
            module.train()

            def run(prec=prec):
                with autocast_context("cpu", prec):
                    clock = Clock()
                    inf = module.inference(**module._get_inference_input(tensors))
                    enc_wall, enc_cpu = clock.read()
                    clock = Clock()
                    gen = module.generative(**module._get_generative_input(tensors, inf))
                    dec_wall, dec_cpu = clock.read()
                    loss = module.loss(tensors, inf, gen)
                loss.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                length = int(loss.extra_metrics["encoder_length"])
                return length, {"encoder_fwd_cpu_s": enc_cpu, "decoder_fwd_cpu_s": dec_cpu, "loss": float(loss.loss)}

        mode = flop_counter()
        with mode:
            run()  # warm-up run, counted
        flops = _flops(mode)
        del mode
        reset_peak_rss()
        rss_before = status_mb("VmRSS")
        timing = _timed(run, args["min_seconds"], args["max_repeats"])
        peak = status_mb("VmHWM")
        length, extra = timing.pop("extra")
        row = {
            "kind": kind,
            "precision": precision,
            "encoder_length": length,
            **timing,
            **flops,
            "gflop_per_cpu_s": flops["flops"] / timing["cpu_s"] / 1e9,
            "peak_rss_mb": peak,
            "rss_increase_mb": peak - rss_before,
            "loadavg": loadavg(),
        }
        if kind == "embed":
            row["embedding"] = [float(v) for v in extra]
        else:
            row.update(extra)
        results.append(row)
    return results


# ----------------------------------------------------------------------------- analysis
def cosine(a, b) -> float:
    """Cosine similarity of two vectors."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def compare_embeddings(emb: dict[str, dict], caps: tuple[int, ...], counts: dict[str, np.ndarray]) -> list[dict]:
    """How much ``max_encoder_length`` moves the embeddings of several samples, against how far the samples lie apart.

    Parameters
    ----------
    emb
        ``sample -> {cap -> embedding}``, where cap ``None`` is the uncapped embedding.
    caps
        The caps to compare with the uncapped embeddings.
    counts
        ``sample -> counts`` (for the share of genes and counts each cap keeps).

    Returns
    -------
    One row for the pairs of different samples (uncapped) and one per cap (each sample capped vs uncapped): mean and
    minimum cosine similarity; the same between the "centered" embeddings (each set, capped or uncapped, minus its
    mean over the samples: what distinguishes the samples); for the caps, the fraction of samples whose centered
    capped embedding is closest to their own centered uncapped one, the correlation of the pairwise cosine
    distances between the samples with and without the cap, and the mean share of genes and counts kept.
    """
    names = list(emb)
    uncapped = np.array([emb[n][None] for n in names], dtype=np.float64)
    center = uncapped.mean(0)
    pairs = [(i, j) for i in range(len(names)) for j in range(i + 1, len(names))]
    raw = [cosine(uncapped[i], uncapped[j]) for i, j in pairs]
    centered = [cosine(uncapped[i] - center, uncapped[j] - center) for i, j in pairs]
    rows = [
        {
            "compared": f"different samples, uncapped ({len(names)} cell-type bulks)",
            "max_encoder_length": None,
            "cosine_mean": float(np.mean(raw)),
            "cosine_min": float(np.min(raw)),
            "centered_cosine_mean": float(np.mean(centered)),
            "centered_cosine_min": float(np.min(centered)),
        }
    ]
    for cap in caps:
        capped = np.array([emb[n][cap] for n in names], dtype=np.float64)
        same = [cosine(capped[i], uncapped[i]) for i in range(len(names))]
        capped_center = capped.mean(0)
        sim = np.array([[cosine(c - capped_center, u - center) for u in uncapped] for c in capped])
        dist_capped = [1 - cosine(capped[i], capped[j]) for i, j in pairs]
        cover = [cap_coverage(counts[n], cap) for n in names]
        rows.append(
            {
                "compared": f"same sample, cap {cap} vs uncapped ({len(names)} cell-type bulks)",
                "max_encoder_length": cap,
                "cosine_mean": float(np.mean(same)),
                "cosine_min": float(np.min(same)),
                "centered_cosine_mean": float(np.mean(np.diag(sim))),
                "centered_cosine_min": float(np.min(np.diag(sim))),
                "nearest_is_own": float(np.mean(sim.argmax(1) == np.arange(len(names)))),
                "distance_correlation": float(np.corrcoef(dist_capped, 1 - np.asarray(raw))[0, 1])
                if len(pairs) > 1
                else None,
                "genes_dropped_mean": float(np.mean([c["genes_dropped"] for c in cover])),
                "counts_kept_fraction_mean": float(np.mean([c["counts_kept_fraction"] for c in cover])),
            }
        )
    return rows


def fit_length(lengths, values) -> dict:
    """Least-squares fit ``c0 + c1 · L + c2 · L²`` with relative weights, and the length where ``c2 · L = c1``."""
    lengths, values = np.asarray(lengths, dtype=float), np.asarray(values, dtype=float)
    c2, c1, c0 = np.polyfit(lengths, values, 2, w=1 / values)
    return {
        "c0": float(c0),
        "c1_per_gene": float(c1),
        "c2_per_gene2": float(c2),
        "quadratic_equals_linear_at": float(c1 / c2) if c2 > 0 else None,
        "max_relative_error": float(np.max(np.abs(np.polyval([c2, c1, c0], lengths) / values - 1))),
    }


def summarize(measurements: list[dict]) -> list[dict]:
    """One row per input and cap: encoder length, times, FLOPs and peaks of the four measurements."""
    by_input: dict[tuple, dict] = {}
    for m in measurements:
        key = (m["input"], m["cap"])
        row = by_input.setdefault(
            key,
            {
                "input": m["input"],
                "max_encoder_length": m["cap"],
                "nonzero_genes": m["nonzero_genes"],
            },
        )
        tag = f"{m['kind']}_{m['precision']}"
        if m["kind"] == "embed" and m["precision"] == "fp32":
            row["encoder_length"] = m["encoder_length"]
            row["embed_gflop"] = m["flops"] / 1e9
            row["embed_attention_share"] = m["attention_flops"] / m["flops"]
        if m["kind"] == "train" and m["precision"] == "bf16":
            row["train_encoder_length"] = m["encoder_length"]
            row["train_gflop"] = m["flops"] / 1e9
            row["train_decoder_gflop"] = m["decoder_flops"] / 1e9
            row["train_decoder_fwd_cpu_s_bf16"] = m["decoder_fwd_cpu_s"]
        row[f"{tag}_cpu_s"] = m["cpu_s"]
        row[f"{tag}_wall_s"] = m["wall_s"]
        row[f"{tag}_peak_rss_mb"] = m["peak_rss_mb"]
    return list(by_input.values())


def format_table(rows: list[dict]) -> str:
    """Plain-text table of :func:`summarize` rows (CPU seconds; '-' where not measured)."""

    def f(v, spec):
        return "-" if v is None else format(v, spec)

    head = (
        f"{'input':<14}{'cap':>6}{'nnz':>7}{'enc L':>7}{'GFLOP':>8}{'attn':>6}{'emb32 s':>9}{'emb16 s':>9}"
        f"{'trn L':>7}{'trn GFLOP':>10}{'dec GFLOP':>10}{'trn32 s':>9}{'trn16 s':>9}{'dec fwd':>8}{'peak MB':>8}"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        peak = max(v for k, v in r.items() if k.endswith("peak_rss_mb"))
        lines.append(
            f"{r['input']:<14}{f(r['max_encoder_length'], 'd'):>6}{r['nonzero_genes']:>7}"
            f"{f(r.get('encoder_length'), 'd'):>7}{f(r.get('embed_gflop'), '.1f'):>8}"
            f"{f(r.get('embed_attention_share'), '.0%'):>6}{f(r.get('embed_fp32_cpu_s'), '.3f'):>9}"
            f"{f(r.get('embed_bf16_cpu_s'), '.3f'):>9}{f(r.get('train_encoder_length'), 'd'):>7}"
            f"{f(r.get('train_gflop'), '.1f'):>10}{f(r.get('train_decoder_gflop'), '.1f'):>10}"
            f"{f(r.get('train_fp32_cpu_s'), '.2f'):>9}{f(r.get('train_bf16_cpu_s'), '.2f'):>9}"
            f"{f(r.get('train_decoder_fwd_cpu_s_bf16'), '.3f'):>8}{peak:>8.0f}"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=("3M", "10M", "100M"), default="10M")
    p.add_argument("--vocab", choices=("pbmc3k", "scfoundation"), default="pbmc3k")
    p.add_argument("--lengths", default=",".join(map(str, LENGTHS)), help="comma-separated numbers of non-zero genes")
    p.add_argument("--caps", default=",".join(map(str, CAPS)), help="max_encoder_length values for the bulk input")
    p.add_argument(
        "--skip-fp32-train-above",
        type=int,
        default=8000,
        help="no float32 training step for inputs with more non-zero genes (after the cap) than this (time); bf16 "
        "still runs",
    )
    p.add_argument("--min-seconds", type=float, default=2.0, help="keep timing while the timed runs take less")
    p.add_argument("--max-repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads of the workers")
    p.add_argument("--worker-per", choices=("input", "measurement"), default="input")
    p.add_argument("--out", type=Path, default=RESULTS / "xtrimogene_length_scaling.json")
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_json:
        wargs = json.loads(args.worker_json)
        res = similarity_worker(wargs) if "inputs" in wargs else {"results": worker(wargs)}
        print(json.dumps(res, default=float))
        return

    import torch

    torch.set_num_threads(args.threads)
    t_start = time.time()
    info = machine_info("cpu")
    info["torch_threads"] = args.threads
    print(f"{info['cpu']} ({info['n_cpus']} CPUs); load average {info['loadavg']}", flush=True)
    lengths = tuple(int(s) for s in args.lengths.split(",") if s)
    caps = tuple(int(s) for s in args.caps.split(",") if s)
    inputs = build_inputs(args.vocab, lengths)
    n_genes = next(iter(inputs.values()))[0].shape[0]
    timed_inputs = [name for name in inputs if not name.startswith("bulk:")]
    plan = [(name, None) for name in timed_inputs] + [("bulk", cap) for cap in caps]
    skipped = []
    measurements = []
    with tempfile.TemporaryDirectory(prefix="cellformers_length_") as tmp:
        for name, cap in plan:
            vec, desc = inputs[name]
            path = Path(tmp) / f"{name}.npy"
            np.save(path, vec)
            length = desc["nonzero_genes"] if cap is None else min(cap, desc["nonzero_genes"])
            todo = []
            for kind, precision in MEASUREMENTS:
                if kind == "train" and precision == "fp32" and length > args.skip_fp32_train_above:
                    skipped.append({"input": name, "cap": cap, "kind": kind, "precision": precision})
                    continue
                todo.append((kind, precision))
            groups = [todo] if args.worker_per == "input" else [[m] for m in todo]
            for group in groups:
                wargs = {
                    "input_path": str(path),
                    "preset": args.preset,
                    "cap": cap,
                    "measurements": group,
                    "threads": args.threads,
                    "min_seconds": args.min_seconds,
                    "max_repeats": args.max_repeats,
                }
                for res in run_worker(Path(__file__), wargs, env=MALLOC_ENV["kept"])["results"]:
                    res.update({"input": name, "cap": cap, "nonzero_genes": desc["nonzero_genes"]})
                    measurements.append(res)
                    print(
                        f"{name:<13} cap {cap!s:>5} {res['kind']:<5} {res['precision']}: encoder length "
                        f"{res['encoder_length']:>5}, {res['cpu_s']:8.3f} CPU-s ({res['wall_s']:.3f} s wall), "
                        f"{res['flops'] / 1e9:8.1f} GFLOP, peak RSS {res['peak_rss_mb']:.0f} MB",
                        flush=True,
                    )

        # embedding change from the cap, over the cell-type bulks (float32, one worker)
        samples = {name: vec for name, (vec, _) in inputs.items() if name.startswith("bulk:")}
        paths = {}
        for name, vec in samples.items():
            paths[name] = str(Path(tmp) / f"sample{len(paths)}.npy")
            np.save(paths[name], vec)
        wargs = {"inputs": paths, "caps": list(caps), "preset": args.preset, "threads": args.threads}
        clock = Clock()
        flat = run_worker(Path(__file__), wargs, env=MALLOC_ENV["kept"])
        print(f"cell-type bulk embeddings: {clock.read()[0]:.0f} s", flush=True)
    emb: dict[str, dict] = {}
    for key, vec in flat.items():
        name, cap = key.split("|")
        emb.setdefault(name, {})[None if cap == "None" else int(cap)] = vec
    cap_effect = compare_embeddings(emb, caps, samples)
    timed = {
        (m["cap"], m["precision"]): m.pop("embedding")
        for m in measurements
        if m["kind"] == "embed" and m["input"] == "bulk"
    }
    for cap in caps:
        cap_effect.append(
            {
                "compared": f"bulk (all cells): cap {cap} vs uncapped",
                "max_encoder_length": cap,
                "cosine_mean": cosine(timed[(cap, "fp32")], timed[(None, "fp32")]),
                **cap_coverage(inputs["bulk"][0], cap),
            }
        )
    cap_effect.append(
        {
            "compared": "bulk (all cells), uncapped: bf16 vs fp32",
            "cosine_mean": cosine(timed[(None, "bf16")], timed[(None, "fp32")]),
        }
    )
    for m in measurements:
        m.pop("embedding", None)

    rows = summarize(measurements)
    table = format_table(rows)
    print(table)
    for r in cap_effect:
        extra = "".join(
            f", {k} {r[k]:.4f}"
            for k in (
                "cosine_min",
                "centered_cosine_mean",
                "centered_cosine_min",
                "nearest_is_own",
                "distance_correlation",
            )
            if r.get(k) is not None
        )
        print(f"{r['compared']}: cosine {r['cosine_mean']:.4f}{extra}")

    # length fits over the uncapped inputs (the second bulk sample included)
    fits = {}
    uncapped = [m for m in measurements if m["cap"] is None]
    for kind, precision in MEASUREMENTS:
        sel = sorted(
            (m for m in uncapped if (m["kind"], m["precision"]) == (kind, precision)), key=lambda m: m["encoder_length"]
        )
        if len(sel) >= 3:
            ls = [m["encoder_length"] for m in sel]
            fits[f"{kind}_{precision}_cpu_s"] = fit_length(ls, [m["cpu_s"] for m in sel])
            if precision == "fp32":
                fits[f"{kind}_encoder_gflop"] = fit_length(ls, [m["encoder_flops"] / 1e9 for m in sel])
    train = [m for m in uncapped if m["kind"] == "train"]
    decoder = {
        "train_decoder_gflop_min": min(m["decoder_flops"] for m in train) / 1e9 if train else None,
        "train_decoder_gflop_max": max(m["decoder_flops"] for m in train) / 1e9 if train else None,
        "decoder_fwd_cpu_s_bf16": [round(m["decoder_fwd_cpu_s"], 4) for m in train if m["precision"] == "bf16"][:8],
        "encoder_fwd_cpu_s_bf16": [round(m["encoder_fwd_cpu_s"], 4) for m in train if m["precision"] == "bf16"][:8],
    }
    for name, fit in fits.items():
        print(
            f"fit {name}: {fit['c0']:.4g} + {fit['c1_per_gene']:.4g}·L + {fit['c2_per_gene2']:.4g}·L² "
            f"(quadratic = linear at L = {fit['quadratic_equals_linear_at'] or float('nan'):.0f}; max rel. error "
            f"{fit['max_relative_error']:.1%})"
        )
    print(
        f"decoder GFLOP per training step: {decoder['train_decoder_gflop_min']:.2f}-{decoder['train_decoder_gflop_max']:.2f}"
    )

    out = {
        "description": (
            f"xTrimoGene {args.preset}: embedding and training-step cost vs the number of non-zero genes (encoder "
            f"length), up to a pseudo-bulk with every gene expressed, and the bulk with max_encoder_length; "
            f"{n_genes} genes, one sample per batch, CPU"
        ),
        "preset": args.preset,
        "vocab": args.vocab,
        "n_genes": n_genes,
        "dataset": PBMC3K.name,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "worker_json"},
        "machine": info,
        "inputs": [{"input": name, **desc} for name, (_, desc) in inputs.items()],
        "summary": rows,
        "cap_effect": cap_effect,
        "fits": fits,
        "decoder": decoder,
        "measurements": measurements,
        "skipped": skipped,
        "notes": [
            "Times: CPU seconds of the worker process (time.process_time) with the given torch threads are the "
            "primary numbers (the machine was shared); wall seconds beside them. Median of the timed runs after a "
            "warm-up run.",
            "FLOPs: torch.utils.flop_counter on the warm-up run; attention = the encoder's SDPA, decoder = the "
            "Performer decoder (its FLOPs do not depend on the number of expressed genes).",
            "Embedding: module.inference(apply_mask=False), what get_latent_representation runs (encoder only). "
            "Training: masked forward (30% of the non-zeros hidden, so the encoder sees ~70% of them), backward, "
            "AdamW step.",
            f"Peak RSS: one fresh worker per {args.worker_per}; the peak is reset to the current RSS before each "
            "measurement; glibc keeps freed memory (MALLOC_MMAP_THRESHOLD_/MALLOC_TRIM_THRESHOLD_).",
            "Untrained weights (seed 0): the cosine similarities show how much the cap changes the input of the "
            "max pooling for this random encoder, against the similarity of two different bulk samples; a trained "
            "model may be more or less sensitive.",
            (
                f"Float32 training steps skipped for inputs with more than {args.skip_fp32_train_above} non-zero genes "
                f"after the cap (time): {skipped}"
            ),
        ],
        "table": table,
        "loadavg_end": loadavg(),
        "wall_seconds": time.time() - t_start,
    }
    write_json(args.out, out)
    print(f"wrote {args.out} in {out['wall_seconds']:.0f} s")


if __name__ == "__main__":
    main()
