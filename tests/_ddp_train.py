"""Train tiny models with ``strategy="ddp"`` on two CPU processes (gloo); run by ``tests/test_ddp.py``.

Lightning's DDP launcher starts the second process by running this script again, so it must be a script (not a
pytest function). Every rank writes ``<model>_rank<r>.json`` into the output folder: the world size, the cells it
trained on per epoch, a checksum of its parameters and of its embeddings, the loss history (rank 0), and whether the
embeddings are finite.

    python tests/_ddp_train.py OUT_DIR DATA.h5ad xtrimogene,scformer [STRATEGY]
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import warnings
from pathlib import Path

import numpy as np
import torch


def _checksum(arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.float32).tobytes())
    return h.hexdigest()


def main() -> None:
    out_dir, data, names = Path(sys.argv[1]), sys.argv[2], sys.argv[3].split(",")
    strategy = sys.argv[4] if len(sys.argv) > 4 else "ddp"
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore")

    import anndata as ad
    import scvi
    from lightning.pytorch.callbacks import Callback

    from cellformers.model import ScFormer, ScPaLM, XTrimoGene

    class CellCounter(Callback):
        def __init__(self):
            self.cells: list[int] = []

        def on_train_epoch_start(self, trainer, pl_module):
            self.cells.append(0)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self.cells[-1] += int(next(iter(batch.values())).shape[0])

    scvi.settings.seed = 0
    adata = ad.read_h5ad(data)
    adata = adata[:240, adata.var["highly_variable"].to_numpy()].copy()
    adata.obsm.clear()
    for name in names:
        if name == "xtrimogene":
            XTrimoGene.setup_anndata(adata)
            model = XTrimoGene(
                adata,
                preset="3M",
                encoder_layers=1,
                encoder_dim=32,
                encoder_heads=2,
                encoder_ff=64,
                decoder_layers=1,
                decoder_dim=32,
                decoder_heads=2,
                decoder_ff=64,
            )
        elif name == "scformer":
            ScFormer.setup_anndata(adata)
            model = ScFormer(adata, n_layers=1, d_model=32, n_heads=2, d_ff=64, include_zero_genes=False, max_length=64)
        elif name == "scpalm":
            ScPaLM.setup_anndata(adata)
            model = ScPaLM(adata, preset="small", n_layers=1, n_hidden=32, n_pathway_tokens=16, n_codes=16)
        else:
            raise SystemExit(f"unknown model {name!r}")
        counter = CellCounter()
        model.train(
            max_epochs=4,
            batch_size=24,
            train_size=0.8,
            accelerator="cpu",
            devices=2,
            strategy=strategy,
            callbacks=[counter],
            enable_progress_bar=False,
            plan_kwargs={"lr": 3e-3},
        )
        rank = int(os.environ.get("LOCAL_RANK", "0"))
        z = model.get_latent_representation(indices=np.arange(64))
        history = {}
        if isinstance(model.history_, dict):
            history = {k: v.to_numpy().ravel().tolist() for k, v in model.history_.items()}
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        state = [p.detach().cpu().numpy() for p in model.module.parameters()]
        result = {
            "rank": rank,
            "world_size": world,
            "cells_per_epoch": counter.cells,
            "n_train": int(round(0.8 * adata.n_obs)),
            "param_checksum": _checksum(state),
            "embedding_checksum": _checksum([z]),
            "embedding_shape": list(z.shape),
            "embedding_finite": bool(np.isfinite(z).all()),
            "history": history,
        }
        (out_dir / f"{name}_rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main()
