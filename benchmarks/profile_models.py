"""Where the time goes: ``torch.profiler`` tables of a training step and of embedding, per model, on the CPU.

Cases (pbmc3k, the configurations of ``throughput.py``):

* ``xtrimogene-10M train``: one training step of the module (forward, loss, backward; no optimiser) on 4 cells over
  all 13,714 genes (the Performer decoder runs over every gene);
* ``xtrimogene-10M embed``: ``get_latent_representation`` of 256 random cells with the getter's defaults;
* ``scformer-paper train``: one training step on 16 cells x the 1,838 HVGs (every gene a token, paper setting).

Each case runs in a fresh process, after one warm-up, in float32 and (where the CPU has bf16 units) bf16 autocast.
The table keeps the operators with the largest self CPU time. ``--before-src DIR`` runs every case on that code tree
as well (``PYTHONPATH``; e.g. ``git worktree add /tmp/before <commit>``), alternately with the installed code, so
each change is read against the code before it in the same run.

Usage::

    python benchmarks/profile_models.py --before-src /tmp/before/src     # -> results/profiles_cpu.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import RESULTS, code_trees, machine_info, quiet_libraries, run_worker, write_json  # noqa: E402

#: (case name, throughput.py config, what is profiled, cells)
CASES = (
    ("xtrimogene-10M train", "xtrimogene-10M", "train", 4),
    ("xtrimogene-10M embed", "xtrimogene-10M", "embed", 256),
    ("scformer-paper train", "scformer-paper", "train", 16),
)
TOP = 10


def worker(args: dict) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    torch.set_num_threads(int(args["threads"]))
    quiet_libraries()
    from throughput import CONFIGS, _build, _load, _mark_trained

    import cellformers

    cellformers.settings.progress_bar = False
    cfg = CONFIGS[args["config"]]
    adata = _load(cfg["genes"])
    model = _build(cfg, adata)
    torch.set_num_threads(int(args["threads"]))  # scanpy/numba imports may have reset it
    n, bf16 = int(args["cells"]), args["precision"] == "bf16"
    if args["what"] == "train":
        module = model.module.train()
        loader = model._make_data_loader(adata=adata, indices=np.arange(n), batch_size=n, shuffle=False)
        tensors = next(iter(loader))

        def run():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                _, _, loss = module(tensors)
            loss.loss.backward()
            for p in module.parameters():
                p.grad = None

    else:
        _mark_trained(model)
        cells = np.random.default_rng(0).permutation(adata.n_obs)[:n]

        def run():
            model.get_latent_representation(indices=cells, precision="bf16" if bf16 else "32")

    run()  # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) / 1e6
    top = [
        {
            "op": e.key,
            "self_cpu_s": e.self_cpu_time_total / 1e6,
            "calls": e.count,
            "share": e.self_cpu_time_total / 1e6 / total,
        }
        for e in events[:TOP]
    ]
    return {"wall_s": wall, "cpu_s": cpu, "profiled_cpu_s": total, "top": top, "cellformers": cellformers.__file__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before-src", type=Path, default=None, help="src directory of the code tree to compare with")
    p.add_argument("--precisions", default="auto", help="fp32,bf16; auto: bf16 only where the CPU has bf16 units")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=None, help=f"comma-separated subset of {[c[0] for c in CASES]}")
    p.add_argument("--out", type=Path, default=RESULTS / "profiles_cpu.json")
    p.add_argument("--worker-json", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker_json:
        print(json.dumps(worker(json.loads(args.worker_json)), default=float))
        return
    from throughput import _precisions

    precisions = _precisions(args.precisions, "cpu")
    codes = code_trees(args.before_src, current="after")
    wanted = None if args.cases is None else set(args.cases.split(","))
    runs, ops = [], []
    for case, config, what, cells in CASES:
        if wanted is not None and case not in wanted:
            continue
        for prec in precisions:
            for code, env in codes:
                wargs = {"config": config, "what": what, "cells": cells, "precision": prec, "threads": args.threads}
                res = run_worker(Path(__file__), wargs, env=env, timeout=1800)
                print(f"{case} {prec} {code}: {res['wall_s']:.2f} s wall, {res['cpu_s']:.2f} s CPU", flush=True)
                runs.append({"case": case, "precision": prec, "code": code, "cells": cells, "wall_s": res["wall_s"],
                             "cpu_s": res["cpu_s"], "profiled_cpu_s": res["profiled_cpu_s"]})  # fmt: skip
                ops += [
                    {"case": case, "precision": prec, "code": code, "rank": i + 1, **op}
                    for i, op in enumerate(res["top"])
                ]
    out = {
        "description": "torch.profiler: operators with the most self CPU time per case (one step or one embedding call, "
        "after a warm-up), before and after the change when --before-src is given",
        "machine": machine_info("cpu"),
        "threads": args.threads,
        "before_src": None if args.before_src is None else str(args.before_src),
        "runs": runs,
        "top_ops": ops,
    }
    write_json(args.out, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
