"""Downstream models fed with context embeddings in place of expression (xTrimoGene section 5.4, App. 8.2-8.3).

Perturbation response with GEARS (App. 8.2, :cite:p:`Roohani23`; ``pip install cellformers[gears]``):
:func:`use_context_embedding` feeds GEARS' co-expression branch the context embedding of each paired control cell
(a linear map of it replaces GEARS' per-gene ``emb_pos``; everything else is GEARS' own code), and
:func:`gears_benchmark` trains plain GEARS and GEARS with context embeddings on the same split, seeds and
minibatches and scores both with GEARS' metrics (top-20-DE MSE overall and per test subgroup, App. Table 3).
:func:`gears_pert_data` turns an AnnData of counts into a ready ``PertData``; :func:`gears_go_graph` builds the GO
graph in memory; :func:`fix_gears_indexing` lets GEARS 0.1.2 run with pandas 2.

The paper's GEARS run (Norman et al. 2019, GEARS' processed release; not run by cellformers' tests), in outline::

    norman = cf.data.gears_dataset("norman")  # downloads once (pooch, pinned hash); raw counts recovered
    pert_data = cf.downstream.gears_pert_data(norman, "./gears_data", dataset_name="norman")  # GEARS fetches GO
    model = cf.model.XTrimoGene.load("xtrimogene_dir")  # a pretrained model whose genes cover Norman's
    res = cf.downstream.gears_benchmark(
        pert_data,
        model,
        control=norman[norman.obs["condition"] == "ctrl"].copy(),
        epochs=20,
        seeds=(1, 2, 3, 4, 5),
        device="cuda",
        model_kwargs={"hidden_size": 64},
    )
    res.groupby("arm")[["mse_de", "mse_de 1-gene", "mse_de 2-gene (seen0)"]].agg(["mean", "std"])

Control counts are recovered from GEARS' log-normalized data (or passed as ``control=``); a model run on each
minibatch's control cells costs one context embedding per cell and step, so for long runs precompute them once
(``cf.tl.context_embedding(control, model, genes=..., path="ctx.npy")``) and pass
``np.load("ctx.npy", mmap_mode="r")`` with ``genes=``.

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
