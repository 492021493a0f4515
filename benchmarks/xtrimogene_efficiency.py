"""Computational efficiency of xTrimoGene vs encoder-only models (xTrimoGene paper, section 5.1 and Table 1).

Three models of about 10M parameters over xTrimoGene's 19,264 genes, trained on the same masked-regression task:

* ``Transformer``: encoder-only, full softmax attention over all 19,264 genes (d 256, 8 layers, 8 heads; 11.3M
  parameters as in Table 1);
* ``Performer``: encoder-only, FAVOR+ attention over all genes (scBERT-like; d 256, 6 layers, 8 heads);
* ``xTrimoGene``: the ``"10M"`` preset (encoder on the unmasked non-zero genes, Performer decoder over all genes).

For each: parameters; FLOPs per sample of one forward + backward pass, counted by
:class:`torch.utils.flop_counter.FlopCounterMode` (every matmul/attention op, as the paper counts "matrix
multiplication operations only"; the CPU flash-attention kernels get torch's own SDPA formulas registered); the
measured time of one training step (forward, backward, AdamW) in float32 and under bf16 autocast; and the peak
memory of that step (resident set size of a fresh worker process, and its increase over the state before the
step). The input is a real cell: the pbmc3k cell with the median number of detected genes, mapped to the 19,264-gene
list (genes missing from the data are zeros, App. 1).

Each (model, precision) measurement runs in its own subprocess so that peak RSS is per measurement.

Usage::

    python benchmarks/xtrimogene_efficiency.py                 # full run (the Transformer step takes minutes)
    python benchmarks/xtrimogene_efficiency.py --repeats 5
    python benchmarks/xtrimogene_efficiency.py --transformer-length 4096   # quick: Transformer timed at a shorter
                                                                          # length (flagged in the output)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import DATA, PBMC3K, cpu_sdpa_formulas, status_mb  # noqa: E402

GENE_LIST = DATA / "genes" / "scfoundation_OS_scRNA_gene_index.19264.tsv"
PBMC = PBMC3K
N_GENES = 19264
MODELS = ("Transformer", "Performer", "xTrimoGene")
PAPER_TABLE1 = {
    "Transformer": {"params_M": 11.3, "flops_per_sample": 9.86e12, "resource": 1.0},
    "Performer": {"params_M": 8.9, "flops_per_sample": 1.06e12, "resource": 0.108},
    "xTrimoGene": {"params_M": 9.8, "flops_per_sample": 3.35e11, "resource": 0.034},
}


# ----------------------------------------------------------------------------- models
class EncoderOnly(nn.Module):
    """Encoder-only masked regression over all genes: value + gene embedding -> encoder -> linear head.

    Masked positions enter as the value embedding's learned ``[MASK]`` vector (scBERT-style, no filtering).
    """

    def __init__(self, n_genes: int, attention: str, d: int, n_layers: int, n_heads: int):
        super().__init__()
        from cellformers.nn import AutoDiscretizationEmbedding, Performer, TransformerEncoder

        self.value_embedding = AutoDiscretizationEmbedding(d, 100)
        self.gene_embedding = nn.Embedding(n_genes, d)
        if attention == "full":
            self.encoder = TransformerEncoder(d, n_layers, n_heads, 4 * d)
        else:
            self.encoder = Performer(d, n_layers, n_heads, 4 * d)
        self.head = nn.Linear(d, 1)

    def forward(self, values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        g = values.shape[-1]
        genes = torch.arange(g, device=values.device)
        h = self.value_embedding(values, mask=mask) + self.gene_embedding(genes)
        pred = self.head(self.encoder(h)).squeeze(-1).float()
        # dense weighting instead of boolean indexing keeps shapes static
        return ((pred - values) ** 2 * mask).sum() / mask.sum().clamp_min(1)


def build(name: str):
    """The model and a ``step_inputs(batch)`` function giving its loss."""
    from scvi import REGISTRY_KEYS

    from cellformers._constants import REGISTRY_KEYS_CF
    from cellformers.model import XTRIMOGENE_PRESETS
    from cellformers.module import XTrimoGeneModule

    torch.manual_seed(0)
    if name == "xTrimoGene":
        model = XTrimoGeneModule(np.arange(N_GENES), N_GENES, **XTRIMOGENE_PRESETS["10M"])

        def loss_fn(counts, values, mask):
            tensors = {REGISTRY_KEYS.X_KEY: counts, REGISTRY_KEYS_CF.CELL_SEED: torch.zeros(counts.shape[0], 1)}
            return model(tensors)[2].loss

    else:
        attention = "full" if name == "Transformer" else "performer"
        n_layers = 8 if name == "Transformer" else 6
        model = EncoderOnly(N_GENES, attention, d=256, n_layers=n_layers, n_heads=8)

        def loss_fn(counts, values, mask):
            return model(values, mask)

    return model, loss_fn


# ----------------------------------------------------------------------------- input
def real_cell() -> tuple[np.ndarray, dict]:
    """Counts of the pbmc3k cell with the median number of detected genes, on the 19,264-gene list."""
    import anndata as ad
    import pandas as pd

    genes = pd.read_csv(GENE_LIST, sep="\t")["gene_name"].astype(str).tolist()
    adata = ad.read_h5ad(PBMC)
    nnz = np.asarray((adata.X > 0).sum(1)).ravel()
    cell = int(np.argsort(nnz)[len(nnz) // 2])
    row = np.asarray(adata.X[cell].todense()).ravel()
    pos = {g: i for i, g in enumerate(genes)}
    counts = np.zeros(N_GENES, dtype=np.float32)
    mapped = 0
    for j, g in enumerate(adata.var_names):
        i = pos.get(g)
        if i is not None:
            counts[i] = row[j]
            mapped += 1
    info = {
        "cell": str(adata.obs_names[cell]),
        "genes_detected_in_data": int(nnz[cell]),
        "genes_mapped": mapped,
        "nonzero_of_19264": int((counts > 0).sum()),
        "sparsity": float((counts == 0).mean()),
    }
    return counts, info


def masked_inputs(counts: torch.Tensor, model):
    """Normalized values and the model's balanced mask (same positions for the three models)."""
    from cellformers.module import XTrimoGeneModule

    helper = XTrimoGeneModule(
        np.arange(N_GENES),
        N_GENES,
        encoder_layers=0,
        decoder_layers=0,
        encoder_dim=8,
        decoder_dim=8,
        encoder_heads=1,
        decoder_heads=1,
    )
    helper.eval()
    values, _ = helper.normalize(counts)
    mask, _, _ = helper.make_mask(values, torch.zeros(counts.shape[0], 1))
    return values, mask


# ----------------------------------------------------------------------------- flops
def count_flops(name: str, counts: np.ndarray, device: str) -> dict:
    """FLOPs of one forward + backward pass for one sample (``device="meta"`` avoids computing)."""
    from torch.utils.flop_counter import FlopCounterMode

    model, loss_fn = build(name)
    x = torch.from_numpy(counts)[None]
    values, mask = masked_inputs(x, model)
    if device == "meta":
        model = model.to("meta")
        x, values, mask = x.to("meta"), values.to("meta"), mask.to("meta")
    mode = FlopCounterMode(display=False, custom_mapping=cpu_sdpa_formulas())
    with mode:
        loss = loss_fn(x, values, mask)
        loss.backward()
    by_op = {str(k): int(v) for k, v in mode.get_flop_counts().get("Global", {}).items()}
    return {"flops": int(mode.get_total_flops()), "flops_by_op": by_op, "counted_on": device}


# ----------------------------------------------------------------------------- timing worker
def worker(name: str, precision: str, repeats: int, length: int | None, threads: int | None) -> dict:
    if threads:
        torch.set_num_threads(threads)
    global N_GENES
    counts, _ = real_cell()
    if length is not None and length < N_GENES:
        # keep every detected gene and fill up with undetected ones (same sparsity pattern, shorter sequence)
        order = np.argsort(-(counts > 0), kind="stable")[:length]
        counts = counts[np.sort(order)]
        N_GENES = length
    model, loss_fn = build(name)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.from_numpy(counts)[None]
    values, mask = masked_inputs(x, model)
    model.train()
    rss_before = status_mb("VmRSS")
    times = []
    for _ in range(repeats + (1 if repeats > 1 else 0)):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = loss_fn(x, values, mask)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    if repeats > 1:
        times = times[1:]  # first step warms up allocators and kernels
    peak = status_mb("VmHWM")
    return {
        "model": name,
        "precision": precision,
        "length": int(N_GENES),
        "step_seconds": float(np.median(times)),
        "step_seconds_all": [float(t) for t in times],
        "peak_rss_mb": float(peak),
        "step_rss_increase_mb": float(peak - rss_before),
        "loss": float(loss.detach()),
    }


def run_worker(args_list: list[str]) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", *args_list]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- main


def _precisions(spec: str, device: str) -> list[str]:
    """``"auto"``: fp32, and bf16 only where the hardware has bf16 units (emulated bf16 is ~6x slower)."""
    if spec != "auto":
        return spec.split(",")
    from cellformers.train import bf16_hardware

    return ["fp32", "bf16"] if bf16_hardware(device)[0] else ["fp32"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=3, help="timed steps per measurement (median; Transformer: 1)")
    p.add_argument(
        "--transformer-length",
        type=int,
        default=None,
        help="time the Transformer at this many genes instead of 19,264 and extrapolate quadratically",
    )
    p.add_argument(
        "--precisions",
        default="auto",
        help="comma-separated fp32,bf16; auto: fp32, plus bf16 where the hardware has bf16 units",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=str(HERE / "results" / "xtrimogene_efficiency.json"))
    p.add_argument(
        "--worker", nargs=5, metavar=("MODEL", "PRECISION", "REPEATS", "LENGTH", "THREADS"), help=argparse.SUPPRESS
    )
    args = p.parse_args()
    if args.worker:
        name, prec, rep, length, threads = args.worker
        res = worker(
            name, prec, int(rep), None if length == "none" else int(length), None if threads == "none" else int(threads)
        )
        print(json.dumps(res))
        return

    t_start = time.time()
    counts, cell_info = real_cell()
    results = {}
    for name in MODELS:
        model, _ = build(name)
        n_params = sum(q.numel() for q in model.parameters())
        del model
        # the data-dependent gather of xTrimoGene needs real tensors; the encoder-only baselines are counted on the
        # meta device (no compute), with the Performer also counted on CPU as a cross-check
        device = "cpu" if name == "xTrimoGene" else "meta"
        fl = count_flops(name, counts, device)
        if name == "Performer":
            fl_cpu = count_flops(name, counts, "cpu")
            fl["flops_cpu_crosscheck"] = fl_cpu["flops"]
        results[name] = {"params": int(n_params), **fl, "timing": {}}
        print(f"{name}: {n_params / 1e6:.2f}M parameters, {fl['flops']:.3e} FLOPs/sample", flush=True)

    for name in MODELS:
        for prec in _precisions(args.precisions, "cpu"):
            length = args.transformer_length if name == "Transformer" else None
            rep = 1 if name == "Transformer" else args.repeats
            res = run_worker(
                [
                    name,
                    prec,
                    str(rep),
                    "none" if length is None else str(length),
                    "none" if args.threads is None else str(args.threads),
                ]
            )
            if length is not None and length < N_GENES:
                res["measured_at_length"] = length
                res["step_seconds_measured"] = res["step_seconds"]
                res["step_seconds"] = res["step_seconds"] * (N_GENES / length) ** 2
                res["extrapolated"] = "quadratic in length"
            results[name]["timing"][prec] = res
            print(
                f"  {name} {prec}: {res['step_seconds']:.2f} s/step, peak RSS {res['peak_rss_mb']:.0f} MB", flush=True
            )

    ref = results["Transformer"]
    rows = []
    for name in MODELS:
        r = results[name]
        row = {
            "model": name,
            "params_M": r["params"] / 1e6,
            "flops_per_sample": r["flops"],
            "flops_vs_transformer": r["flops"] / ref["flops"],
            "paper_params_M": PAPER_TABLE1[name]["params_M"],
            "paper_flops_per_sample": PAPER_TABLE1[name]["flops_per_sample"],
            "paper_resource": PAPER_TABLE1[name]["resource"],
        }
        for prec, tr in r["timing"].items():
            row[f"step_s_{prec}"] = tr["step_seconds"]
            row[f"speedup_vs_transformer_{prec}"] = ref["timing"][prec]["step_seconds"] / tr["step_seconds"]
            row[f"peak_rss_mb_{prec}"] = tr["peak_rss_mb"]
            row[f"step_rss_increase_mb_{prec}"] = tr["step_rss_increase_mb"]
        rows.append(row)

    header = f"{'model':<12}{'params':>9}{'FLOPs/sample':>14}{'vs Trm':>8}{'paper':>8}"
    precs = _precisions(args.precisions, "cpu")
    for prec in precs:
        header += f"{'s/step ' + prec:>15}{'speedup':>9}{'peakMB':>9}"
    lines = [header, "-" * len(header)]
    for row in rows:
        line = (
            f"{row['model']:<12}{row['params_M']:>8.2f}M{row['flops_per_sample']:>14.3e}"
            f"{100 * row['flops_vs_transformer']:>7.1f}%{100 * row['paper_resource']:>7.1f}%"
        )
        for prec in precs:
            line += (
                f"{row[f'step_s_{prec}']:>15.3f}{row[f'speedup_vs_transformer_{prec}']:>8.1f}x"
                f"{row[f'peak_rss_mb_{prec}']:>9.0f}"
            )
        lines.append(line)
    table = "\n".join(lines)
    print(table)

    load = os.getloadavg()
    out = {
        "description": "xTrimoGene vs encoder-only Transformer/Performer at ~10M parameters, 19,264 genes, batch 1",
        "n_genes": N_GENES,
        "input_cell": cell_info,
        "rows": rows,
        "details": results,
        "table": table,
        "environment": {
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "n_cpus": os.cpu_count(),
            "torch_threads": args.threads or torch.get_num_threads(),
            "loadavg_at_end": load,
            "wall_seconds": time.time() - t_start,
        },
        "notes": [
            "FLOPs: torch.utils.flop_counter.FlopCounterMode, forward+backward, batch 1; Transformer and Performer "
            "counted on the meta device (identical op graph, no compute), xTrimoGene on CPU (data-dependent gather).",
            "Masked positions: xTrimoGene's balanced mask (30% of non-zeros + 0.9x as many zeros), the same for all.",
        ],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
