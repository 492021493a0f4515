"""GEARS with context embeddings (issue 19, xTrimoGene App. 8.2) on a small synthetic perturb-seq dataset."""

from __future__ import annotations

import pickle

import numpy as np
import pandas as pd
import pytest
import scanpy as sc
import torch
from scipy import sparse

import cellformers as cf
from cellformers import GeneMappingError

gears = pytest.importorskip("gears")
from gears.utils import GeneSimNetwork, get_GO_edge_list  # noqa: E402

PERTURBATIONS = ("g0", "g1", "g2", "g3", "g4", "g5", "g0+g1", "g1+g2", "g2+g3", "g3+g4")


def _pert_data(path):
    """A GEARS ``PertData`` of synthetic counts (60 genes, 10 perturbations), no download: the GO table is local."""
    counts = cf.data.synthetic_perturbation(
        n_control=120, n_per_perturbation=20, n_genes=60, perturbations=PERTURBATIONS, random_state=0
    )
    adata = counts.copy()
    adata.obs["cell_type"] = "synthetic"
    adata.var["gene_name"] = adata.var_names
    sc.pp.normalize_total(adata, target_sum=1e4)
    sc.pp.log1p(adata)
    rng = np.random.default_rng(0)
    gene2go = {g: {f"GO:{k}" for k in rng.choice(12, 3, replace=False)} for g in adata.var_names}
    path.mkdir(parents=True, exist_ok=True)
    with open(path / "gene2go_all.pkl", "wb") as f:  # PertData downloads it unless it is there
        pickle.dump(gene2go, f)
    pert_data = gears.PertData(str(path), default_pert_graph=False)
    pert_data.new_data_process("synthetic", adata=adata)
    pert_data.prepare_split(split="simulation", seed=1)
    pert_data.get_dataloader(batch_size=16)
    return pert_data, counts


def _go_graph(pert_data):
    """GEARS' GO graph over the perturbable genes (GEARS' own builder writes ``./data`` under the working directory)."""
    return cf.downstream.gears_go_graph(pert_data.gene2go, pert_data.pert_names)


def test_go_graph_matches_gears_builder(setup):
    pert_data, _, _ = setup
    perts = list(pert_data.pert_names)
    gene2go = {p: pert_data.gene2go[p] for p in perts}
    edges = pd.DataFrame(
        [e for g in perts for e in get_GO_edge_list((g, gene2go))], columns=["source", "target", "importance"]
    )
    # all edges above the threshold (with few GO terms per gene, ties at a smaller k are broken differently)
    edges = edges.groupby("target").apply(lambda x: x.nlargest(len(perts), ["importance"])).reset_index(drop=True)
    net = GeneSimNetwork(edges, perts, node_map={p: i for i, p in enumerate(perts)})
    ours = cf.downstream.gears_go_graph(gene2go, perts, k=len(perts))

    def as_set(index, weight):
        return {
            (int(a), int(b), round(float(w), 6)) for (a, b), w in zip(index.T.tolist(), weight.tolist(), strict=True)
        }

    assert as_set(ours["G_go"], ours["G_go_weight"]) == as_set(net.edge_index, net.edge_weight)
    capped = cf.downstream.gears_go_graph(gene2go, perts, k=2)
    assert np.bincount(capped["G_go"][1].numpy()).max() == 3  # k + 1 edges into a gene, its self-loop included
    with pytest.raises(GeneMappingError, match="no GO terms"):
        cf.downstream.gears_go_graph(gene2go, [*perts, "NOT_A_GENE"])


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    pert_data, counts = _pert_data(tmp_path_factory.mktemp("gears"))
    control = counts[counts.obs["condition"].to_numpy() == "ctrl"].copy()
    # 50 of the 60 genes: GEARS' other genes get no context
    train = control[:, 10:].copy()
    cf.model.XTrimoGene.setup_anndata(train)
    model = cf.model.XTrimoGene(train, preset="tiny")
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    return pert_data, control, model


def _gears(pert_data, hidden_size=8):
    cf.downstream.fix_gears_indexing(pert_data)
    torch.manual_seed(0)
    g = gears.GEARS(pert_data, device="cpu")
    g.model_initialize(hidden_size=hidden_size, **_go_graph(pert_data))
    return g


def _assert_same_context(a, b, loader="train_loader", pert_data=None):
    """Two context arms give the same co-expression input on a minibatch of ``pert_data``'s ``loader``."""
    batch = next(iter(pert_data.dataloader[loader]))
    torch.testing.assert_close(a.model.emb_pos.context(batch.x), b.model.emb_pos.context(batch.x), rtol=1e-5, atol=1e-6)


def _ctrl_rows(g):
    X = g.ctrl_adata.X
    return np.asarray(X.toarray() if sparse.issparse(X) else X, dtype=np.float32)


def test_gears_fails_on_pandas_series_index_without_the_fix(tmp_path):
    pert_data, _ = _pert_data(tmp_path / "d")
    with pytest.raises(AttributeError, match="nonzero"):
        gears.GEARS(pert_data, device="cpu")
    cf.downstream.fix_gears_indexing(pert_data)
    before = pert_data.adata.X.toarray()
    g = gears.GEARS(pert_data, device="cpu")
    np.testing.assert_array_equal(pert_data.adata.X.toarray(), before)
    assert g.ctrl_adata.n_obs == 120


def test_each_row_gets_its_control_cells_context(setup):
    pert_data, control, model = setup
    g = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    ctx_input = g.model.emb_pos
    assert isinstance(ctx_input, cf.downstream.ControlContextInput)
    batch = next(iter(pert_data.dataloader["train_loader"]))
    n_genes = len(g.gene_list)
    rows = batch.x.numpy().reshape(-1, n_genes)
    ctrl = _ctrl_rows(g)
    # the paired control cell of each row, found by brute force
    expected_idx = np.array([np.flatnonzero((ctrl == r).all(1))[0] for r in rows])
    np.testing.assert_array_equal(ctx_input.control_indices(batch.x), expected_idx)

    got = ctx_input.context(batch.x).detach().numpy()
    model_genes = list(model.get_var_names())
    aligned = cf.pp.align_to_reference(control, model_genes)
    want = model.get_context_embedding(aligned, indices=expected_idx, genes=model_genes)
    genes = list(g.gene_list)
    for j, gene in enumerate(genes):
        if gene in model_genes:
            np.testing.assert_allclose(got[:, j], want[:, model_genes.index(gene)], rtol=1e-5, atol=1e-6)
        else:  # not a gene of the model: no context
            assert not got[:, j].any()
    # unlike GEARS' own `emb_pos`, the input of the co-expression branch differs between cells
    distinct = np.unique(expected_idx)
    assert distinct.size > 1
    a, b = (np.flatnonzero(expected_idx == i)[0] for i in distinct[:2])
    assert not np.allclose(got[a], got[b])


def test_precomputed_array_gives_the_same_context(setup):
    pert_data, control, model = setup
    on_the_fly = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    genes = list(model.get_var_names())
    array = model.get_context_embedding(cf.pp.align_to_reference(control, genes), genes=genes)
    stored = cf.downstream.use_context_embedding(_gears(pert_data), array, genes=genes)
    _assert_same_context(stored, on_the_fly, "val_loader", pert_data=pert_data)


def test_counts_recovered_from_gears_data_match_the_raw_counts(setup):
    pert_data, control, model = setup
    recovered = cf.downstream.use_context_embedding(_gears(pert_data), model)
    given = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    _assert_same_context(recovered, given, pert_data=pert_data)


def test_a_profile_that_is_no_control_cell_is_refused(setup):
    pert_data, control, model = setup
    g = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    batch = next(iter(pert_data.dataloader["train_loader"]))
    with pytest.raises(ValueError, match="not control cells"):
        g.model.emb_pos.context(batch.x + 1.0)


def test_training_updates_the_context_map_and_leaves_the_model_frozen(setup):
    pert_data, control, model = setup
    frozen = {k: v.clone() for k, v in model.module.state_dict().items()}
    g = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    proj = g.model.emb_pos.proj.weight.detach().clone()
    g.train(epochs=1)
    assert not torch.equal(g.model.emb_pos.proj.weight.detach(), proj)
    # the documented way back: rebuild the context arm, then load the saved state dict
    state = {k: v.clone() for k, v in g.best_model.state_dict().items()}
    again = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    again.best_model.load_state_dict(state)
    batch = next(iter(pert_data.dataloader["test_loader"]))
    g.best_model.eval()
    again.best_model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.best_model(batch), g.best_model(batch))
    for k, v in model.module.state_dict().items():
        torch.testing.assert_close(v, frozen[k])


def test_gears_benchmark_scores_both_arms_on_gears_split(setup):
    pert_data, control, model = setup
    res = cf.downstream.gears_benchmark(
        pert_data,
        model,
        control=control,
        seeds=(0, 1),
        epochs=1,
        model_kwargs={"hidden_size": 8, **_go_graph(pert_data)},
    )
    assert list(res["arm"]) == ["no change", "gears", "gears+context", "gears", "gears+context"]
    assert list(res["seed"][1:]) == [0, 0, 1, 1]
    for col in ("mse", "pearson", "mse_de", "pearson_de", "mse_de 1-gene", "train_s"):
        assert np.isfinite(res[col]).all(), col
    # the two arms are different networks on the same test cells
    assert res.loc[1, "mse"] != res.loc[2, "mse"]
    # "no change" is GEARS' score of the paired control cells themselves: their mean vs the mean perturbed profile
    xs, ys, perts = [], [], []
    for batch in pert_data.dataloader["test_loader"]:
        n = len(batch.pert)
        xs.append(batch.x.numpy().reshape(n, -1))
        ys.append(batch.y.numpy().reshape(n, -1))
        perts += list(batch.pert)
    xs, ys, perts = np.concatenate(xs), np.concatenate(ys), np.array(perts)
    per_pert = [((xs[perts == p].mean(0) - ys[perts == p].mean(0)) ** 2).mean() for p in np.unique(perts)]
    np.testing.assert_allclose(res.loc[0, "mse"], np.mean(per_pert), rtol=1e-5)


def test_bad_arguments_get_specific_errors(setup):
    pert_data, control, model = setup
    cf.downstream.fix_gears_indexing(pert_data)
    bare = gears.GEARS(pert_data, device="cpu")
    with pytest.raises(ValueError, match="model_initialize"):
        cf.downstream.use_context_embedding(bare, model)
    g = _gears(pert_data)
    with pytest.raises(ValueError, match="control cells"):
        cf.downstream.use_context_embedding(g, model, control=control[:10])
    genes = list(model.get_var_names())
    with pytest.raises(ValueError, match="`genes` is required"):
        cf.downstream.use_context_embedding(g, np.zeros((120, 50, 4), np.float32))
    with pytest.raises(ValueError, match="must be an array"):
        cf.downstream.use_context_embedding(g, np.zeros((119, 50, 4), np.float32), genes=genes)
    with pytest.raises(GeneMappingError, match="have a context embedding"):
        cf.downstream.use_context_embedding(g, np.zeros((120, 2, 4), np.float32), genes=["x1", "x2"])
    with pytest.raises(ValueError, match="min_gene_fraction"):
        cf.downstream.use_context_embedding(g, model, min_gene_fraction=1.5)
    with pytest.raises(ValueError, match="seeds"):
        cf.downstream.gears_benchmark(pert_data, model, seeds=())
    with pytest.raises(ValueError, match="no data yet"):
        cf.downstream.fix_gears_indexing(gears.PertData.__new__(gears.PertData))


def test_gears_pert_data_prepares_gears_input_without_touching_adata(tmp_path):
    counts = cf.data.synthetic_perturbation(
        n_control=60, n_per_perturbation=10, n_genes=30, perturbations=PERTURBATIONS[:6], random_state=1
    )
    before = counts.copy()
    go = {g: {f"GO:{i % 4}", f"GO:{i % 5 + 4}"} for i, g in enumerate(counts.var_names)}
    pert_data = cf.downstream.gears_pert_data(counts, tmp_path / "p", gene2go=go, batch_size=8)
    np.testing.assert_array_equal(counts.X.toarray(), before.X.toarray())
    assert counts.obs.equals(before.obs)
    X = counts.X.toarray()
    expected = np.log1p(X / X.sum(1, keepdims=True) * 1e4)
    np.testing.assert_allclose(pert_data.adata.X.toarray(), expected, rtol=1e-5, atol=1e-5)
    assert list(pert_data.adata.var["gene_name"]) == list(counts.var_names)
    assert set(pert_data.set2conditions) == {"train", "val", "test"}
    assert gears.GEARS(pert_data, device="cpu").ctrl_adata.n_obs == 60  # indexing fix applied


def test_gears_pert_data_rejects_bad_input(tmp_path):
    counts = cf.data.synthetic_perturbation(n_control=20, n_per_perturbation=5, n_genes=10, perturbations=("g0",))
    with pytest.raises(cf.MissingKeyError, match="condition_key='perturbation_name'"):
        cf.downstream.gears_pert_data(counts, tmp_path, condition_key="perturbation_name")
    normalized = counts.copy()
    normalized.X = normalized.X.astype(np.float32) * 0.5
    with pytest.raises(cf.NotCountsError):
        cf.downstream.gears_pert_data(normalized, tmp_path)
    no_control = counts[counts.obs["condition"] != "ctrl"].copy()
    with pytest.raises(ValueError, match="'ctrl'"):
        cf.downstream.gears_pert_data(no_control, tmp_path)


def test_model_set_up_with_a_counts_layer_and_labels(setup):
    pert_data, control, _ = setup
    train = control.copy()
    train.layers["counts"] = train.X.copy()
    train.obs["cell_type"] = np.where(np.arange(train.n_obs) % 2, "a", "b")
    cf.model.XTrimoGene.setup_anndata(train, layer="counts", labels_key="cell_type")
    model = cf.model.XTrimoGene(train, preset="tiny")
    model.train(max_epochs=1, enable_progress_bar=False)
    before = control.obs.copy()
    # counts in X, labels the model does not know
    g = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    batch = next(iter(pert_data.dataloader["train_loader"]))
    idx = g.model.emb_pos.control_indices(batch.x)
    genes = list(model.get_var_names())
    want = model.get_context_embedding(train, indices=idx, genes=genes)
    got = g.model.emb_pos.context(batch.x).detach().numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    pd.testing.assert_frame_equal(control.obs, before)  # the caller's AnnData is untouched
    assert not control.layers

    batched = control.copy()
    batched.obs["donor"] = "d1"
    cf.model.XTrimoGene.setup_anndata(batched, batch_key="donor")
    with_batch = cf.model.XTrimoGene(batched, preset="tiny")
    with pytest.raises(cf.MissingKeyError, match="batch_key='donor'"):
        cf.downstream.use_context_embedding(_gears(pert_data), with_batch, control=control)


def test_control_cells_are_matched_by_name(setup):
    pert_data, control, model = setup
    shuffled = control[np.random.default_rng(0).permutation(control.n_obs)].copy()
    by_name = cf.downstream.use_context_embedding(_gears(pert_data), model, control=shuffled)
    in_order = cf.downstream.use_context_embedding(_gears(pert_data), model, control=control)
    _assert_same_context(by_name, in_order, pert_data=pert_data)
    renamed = control.copy()
    renamed.obs_names = [f"other{i}" for i in range(renamed.n_obs)]  # unknown names: GEARS' order is assumed
    positional = cf.downstream.use_context_embedding(_gears(pert_data), model, control=renamed)
    _assert_same_context(positional, in_order, pert_data=pert_data)
    mixed = control.copy()
    mixed.obs_names = [f"other{i}" if i < 3 else n for i, n in enumerate(control.obs_names)]
    with pytest.raises(ValueError, match="not among GEARS' control cells"):
        cf.downstream.use_context_embedding(_gears(pert_data), model, control=mixed)


def test_gears_pert_data_reads_a_backed_anndata(tmp_path):
    counts = cf.data.synthetic_perturbation(
        n_control=60, n_per_perturbation=10, n_genes=30, perturbations=PERTURBATIONS[:6], random_state=1
    )
    counts.write_h5ad(tmp_path / "screen.h5ad")
    backed = sc.read_h5ad(tmp_path / "screen.h5ad", backed="r")
    go = {g: {f"GO:{i % 4}", f"GO:{i % 5 + 4}"} for i, g in enumerate(counts.var_names)}
    pert_data = cf.downstream.gears_pert_data(backed, tmp_path / "p", gene2go=go, batch_size=8)
    assert pert_data.adata.n_obs == counts.n_obs
    assert backed.isbacked  # the caller's object is still the backed file
