"""Keys shared by the data, module and model layers."""

from __future__ import annotations

from typing import NamedTuple


class _SpecialTokens(NamedTuple):
    PAD: str = "<pad>"
    CLS: str = "<cls>"
    MASK: str = "<mask>"


SPECIAL_TOKENS = _SpecialTokens()


class _VarKeys(NamedTuple):
    # Column of ``adata.var`` written by :func:`cellformers.pp.map_genes`.
    TOKEN_ID: str = "cellformers_token_id"


VAR_KEYS = _VarKeys()


class _UnsKeys(NamedTuple):
    GENE_MAPPING: str = "cellformers_gene_mapping"


UNS_KEYS = _UnsKeys()


class _RegistryKeys(NamedTuple):
    # Registered by every model's ``setup_anndata`` in addition to scvi-tools' ``REGISTRY_KEYS``.
    CELL_SEED: str = "cell_seed"


REGISTRY_KEYS_CF = _RegistryKeys()

# ``adata.obs`` column holding the per-cell seed (24 bits, exact in float32) derived from the cell name.
CELL_SEED_OBS_COLUMN = "_cellformers_cell_seed"


class _ModuleKeys(NamedTuple):
    # inference outputs
    TOKEN_EMBEDDING: str = "token_embedding"
    CELL_EMBEDDING: str = "cell_embedding"
    PADDING_MASK: str = "padding_mask"
    # generative outputs
    PREDICTION: str = "prediction"
    # masking / targets
    MASK: str = "mask"
    TARGET: str = "target"


MODULE_KEYS = _ModuleKeys()
