"""Bulk-like input (xTrimoGene section 5.4.3): almost every gene non-zero, so the encoder length must be capped."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import anndata as ad
import numpy as np
import pandas as pd
import pytest

from cellformers._constants import MODULE_KEYS
from cellformers.model import XTrimoGene

TINY = {
    "preset": "3M",
    "encoder_layers": 1,
    "encoder_heads": 1,
    "encoder_dim": 16,
    "encoder_ff": 32,
    "decoder_layers": 1,
    "decoder_heads": 1,
    "decoder_dim": 8,
    "decoder_ff": 16,
}
N_GENES = 16_000


def _bulk(n_samples: int = 3, n_genes: int = N_GENES, seed: int = 0) -> ad.AnnData:
    """Bulk-like counts: a log-normal mean per gene around e^3 counts, so nearly every gene is non-zero."""
    rng = np.random.default_rng(seed)
    mean = np.exp(rng.normal(3.0, 1.0, size=n_genes))
    x = rng.poisson(mean[None, :] * np.exp(rng.normal(0, 0.2, size=(n_samples, 1)))).astype(np.float32)
    obs = pd.DataFrame(index=[f"bulk_{i}" for i in range(n_samples)])
    return ad.AnnData(x, obs=obs, var=pd.DataFrame(index=[f"GENE{i}" for i in range(n_genes)]))


@pytest.fixture(scope="module")
def bulk_model():
    adata = _bulk()
    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(adata, **TINY)
    model.is_trained_ = True  # initial weights are enough to test shapes, equalities and memory
    return adata, model


def test_bulk_samples_have_almost_all_genes_nonzero(bulk_model):
    adata, _ = bulk_model
    assert ((adata.X > 0).sum(1) > 15_000).all()


def test_capped_bulk_embedding(bulk_model):
    adata, model = bulk_model
    z = model.get_latent_representation(max_encoder_length=512)
    assert z.shape == (3, 16)
    assert np.isfinite(z).all()
    # the per-call cap is the module's cap
    model.module.max_encoder_length = 512
    try:
        np.testing.assert_allclose(model.get_latent_representation(), z, atol=1e-5)
    finally:
        model.module.max_encoder_length = None
    # the encoder saw exactly 512 genes per sample, the most highly expressed ones
    import torch

    x = torch.from_numpy(adata.X[:1])
    out = model.module.inference(x, apply_mask=False, max_encoder_length=512)
    assert out[MODULE_KEYS.PADDING_MASK].shape == (1, 512)
    assert not out[MODULE_KEYS.PADDING_MASK].any()
    kept = out["encoder_index"][0].numpy()
    assert adata.X[0, kept].min() >= np.sort(adata.X[0])[-512]
    with pytest.raises(ValueError, match="max_encoder_length"):
        model.get_latent_representation(max_encoder_length=0)


_PEAK_SCRIPT = textwrap.dedent(
    """
    import json, sys
    import numpy as np, pandas as pd, anndata as ad, torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    torch.set_num_threads(1)
    from cellformers.model import XTrimoGene

    tiny, n_genes, cap = json.loads(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    rng = np.random.default_rng(0)
    x = rng.poisson(np.exp(rng.normal(3.0, 1.0, size=(2, n_genes)))).astype(np.float32)
    adata = ad.AnnData(x, obs=pd.DataFrame(index=["a", "b"]), var=pd.DataFrame(index=[f"G{i}" for i in range(n_genes)]))
    XTrimoGene.setup_anndata(adata)
    model = XTrimoGene(adata, **tiny)
    model.is_trained_ = True
    model.get_latent_representation(max_encoder_length=64)  # warm up allocators and code paths

    def status(key):
        return int(open("/proc/self/status").read().split(key + ":")[1].split()[0]) / 1024

    open("/proc/self/clear_refs", "w").write("5")  # reset the peak resident set size
    before = status("VmRSS")
    # the unfused attention kernel materialises the (length x length) attention matrix: the worst case
    with sdpa_kernel(SDPBackend.MATH):
        z = model.get_latent_representation(max_encoder_length=cap, batch_size=2)
    print(json.dumps({"peak_increase_mb": status("VmHWM") - before, "finite": bool(np.isfinite(z).all())}))
    """
)


def test_capped_bulk_embedding_peak_memory_is_bounded():
    """Two samples with 16,000 non-zero genes, unfused attention: the cap keeps the peak far below the ~1 GiB
    attention matrix per sample of an uncapped encoder (16,000² float32), which would fail this check."""
    try:
        open("/proc/self/clear_refs", "w").write("5")
    except OSError:
        pytest.skip("the peak resident set size cannot be reset here (/proc/self/clear_refs)")
    proc = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, json.dumps(TINY), str(N_GENES), "2048"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["finite"]
    assert result["peak_increase_mb"] < 300, result
