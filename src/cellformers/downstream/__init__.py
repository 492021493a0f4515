"""Downstream models fed with context embeddings in place of expression (xTrimoGene section 5.4, App. 8.2-8.3).

Drug synergy (App. 8.3, DeepDDS :cite:p:`Wang22`): :func:`synergy_benchmark` trains a small synergy head on
``[drug A, drug B, cell line]`` once per seed and per cell-line representation (raw expression beside a model's
context embedding), and :func:`summarize_synergy` reports mean and standard deviation over the seeds.

The DeepDDS data (not downloaded by cellformers or its tests): the repository
https://github.com/Sinwang404/DeepDDs (branch ``master``) holds, under ``data/``, the training combinations
``new_labels_0_10.csv`` (the paper's "new_labels_0.csv": columns ``drug1_smiles``/``drug2_smiles`` or
``drug1``/``drug2``, ``cell``, ``label``; check the header of the version you download), the cell-line expression
profiles ``cell_features_954.csv`` (954 genes per cell line) and the independent test set under
``independent_set/``. A run of the paper's arm, in outline::

    pairs = pd.concat([train.assign(test=False), independent.assign(test=True)])
    expr = pd.read_csv("cell_features_954.csv", index_col=0)  # cell lines x genes (bulk profiles)
    bulk = ad.AnnData(counts)  # xTrimoGene reads raw counts: convert the normalized profiles first (e.g. round TPM)
    bulk = cf.pp.align_to_reference(bulk, model.get_var_names())  # the model's gene list (App. 8.3)
    cf.tl.context_embedding(bulk, model, path="ctx.npy", pooled="mean")  # (n_lines, n_genes, d) on disk
    emb = pd.DataFrame(bulk.obsm["X_xtrimogene_context"], index=bulk.obs_names)
    res = cf.downstream.synergy_benchmark(
        pairs,
        fingerprints,
        {"expression": expr, "xtrimogene": emb},
        drug_a_key="drug1",
        drug_b_key="drug2",
        cell_key="cell",
        target="label",
        task="classification",
        test=pairs["test"].to_numpy(),
        n_seeds=5,
    )
    cf.downstream.summarize_synergy(res)

Drug features are any fixed vector per drug (DeepDDS encodes the SMILES with a graph network; Morgan
fingerprints from RDKit are the simple stand-in). ``fingerprints`` is a DataFrame indexed like the drug columns.
The per-gene context embedding flattened (``np.load("ctx.npy").reshape(n_lines, -1)``, for a selection of
``genes``) is the closest to "replacing the expression profile" gene for gene; the pooled form is smaller.
"""

from __future__ import annotations

from ._gears import ControlContextInput, gears_benchmark, use_context_embedding
from ._gears_data import fix_gears_indexing, gears_go_graph, gears_pert_data
from ._synergy import SynergyMLP, summarize_synergy, synergy_benchmark, train_synergy_head

__all__: list[str] = [
    "ControlContextInput",
    "SynergyMLP",
    "fix_gears_indexing",
    "gears_benchmark",
    "gears_go_graph",
    "gears_pert_data",
    "summarize_synergy",
    "synergy_benchmark",
    "train_synergy_head",
    "use_context_embedding",
]
