"""Peak memory of scPaLM's permutation-invariant embedding at 19,264 genes (forward + backward, CPU).

Each measurement runs in a fresh subprocess and reports the growth of the peak resident memory (ru_maxrss) over
the memory held after building the module and the input. The "naive" variant is Algorithm 2 written literally
(a batch x genes x width tensor); it is measured at a small batch and its size grows linearly with the batch.

    python benchmarks/scpalm_embedding_memory.py            # writes benchmarks/results/scpalm_embedding_memory.json
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _child(variant: str, batch: int, n_genes: int, nnz: int, pooling: str) -> dict:
    import torch
    import torch.nn.functional as F

    from cellformers.nn import PermutationInvariantEmbedding

    torch.manual_seed(0)
    torch.set_num_threads(2)
    emb = PermutationInvariantEmbedding(n_genes + 3, n_pooled=256, n_output=256, n_value=64, n_gene=64, pooling=pooling)
    ids = torch.arange(n_genes)
    x = torch.zeros(batch, n_genes)
    for b in range(batch):  # nnz detected genes per cell, log-normalized-like values
        cols = torch.randperm(n_genes)[:nnz]
        x[b, cols] = torch.rand(nnz) * 4 + 0.3
    # warm-up on a tiny input so that allocator/thread-pool start-up does not count
    emb(x[:2, :100], ids[:100]).sum().backward()
    emb.zero_grad()
    base = _rss_mib()
    start = time.perf_counter()
    if variant == "sparse":
        out = emb(x, ids)
    else:
        p, a, g = emb.value_projection(ids), emb.value_scale(ids), emb.gene_embedding(ids)
        u = F.leaky_relu(x[:, :, None] * p[None], emb.negative_slope)
        v = a[None] * u + emb.mlp(u)
        e = emb.linear(torch.cat([v, g[None].expand(batch, -1, -1)], -1))  # (B, G, N)
        nz = (x != 0).float()[:, :, None]
        n_nz = nz.sum(1)
        zero_mean = (e * (1 - nz)).sum(1) / (n_genes - n_nz).clamp_min(1)
        pooled = ((e * nz).sum(1) + zero_mean) / (n_nz + 1)
        out = pooled[:, :, None] * emb.basis[None]
    out.square().mean().backward()
    seconds = time.perf_counter() - start
    return {"peak_mib_over_base": _rss_mib() - base, "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-genes", type=int, default=19264)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--nnz", type=int, default=2000, help="detected genes per cell")
    parser.add_argument("--naive-batch", type=int, default=4)
    parser.add_argument("--child", nargs=4, metavar=("VARIANT", "BATCH", "POOLING", "NNZ"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=RESULTS / "scpalm_embedding_memory.json")
    args = parser.parse_args()
    if args.child:
        variant, batch, pooling, nnz = args.child
        print(json.dumps(_child(variant, int(batch), args.n_genes, int(nnz), pooling)))
        return

    def run(variant: str, batch: int, pooling: str = "mean") -> dict:
        cmd = [sys.executable, __file__, "--n-genes", str(args.n_genes), "--child", variant, str(batch), pooling]
        cmd.append(str(args.nnz))
        res = subprocess.run(cmd, check=True, capture_output=True, text=True)
        out = json.loads(res.stdout.strip().splitlines()[-1])
        out.update({"variant": variant, "batch": batch, "pooling": pooling})
        print(out, flush=True)
        return out

    rows = [
        run("sparse", args.batch, "mean"),
        run("sparse", args.batch, "max"),
        run("naive", args.naive_batch, "mean"),
    ]
    naive = rows[-1]
    estimate = naive["peak_mib_over_base"] * args.batch / args.naive_batch
    result = {
        "n_genes": args.n_genes,
        "batch": args.batch,
        "nnz_per_cell": args.nnz,
        "config": {"n_pooled": 256, "n_output": 256, "n_value": 64, "n_gene": 64},
        "runs": rows,
        "naive_estimated_peak_mib_at_batch": estimate,
        "device": "cpu",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
