"""Drug-synergy prediction from cell-line profiles or their embeddings (xTrimoGene App. 8.3, after DeepDDS)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Literal

import numpy as np
import pandas as pd
import torch
from torch import nn

from cellformers._exceptions import InvalidExpressionError, MissingKeyError
from cellformers._settings import settings
from cellformers.metrics import binary_scores, regression_scores

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from torch import Tensor

logger = logging.getLogger(__name__)

__all__ = ["SynergyMLP", "summarize_synergy", "synergy_benchmark", "train_synergy_head"]

Task = Literal["regression", "classification"]


class SynergyMLP(nn.Module):
    """Synergy head on ``[drug A features, drug B features, cell-line features]``, after DeepDDS :cite:p:`Wang22`.

    DeepDDS encodes each drug (a graph network over its molecule) and the cell line (an MLP over its expression
    profile), concatenates the three and predicts synergy with an MLP. Here each drug's features (any fixed vector:
    fingerprints, the output of a molecular encoder) go through a shared drug branch, the cell-line features (raw
    expression, or a model's context embedding: App. 8.3 swaps only this input) through the cell branch, and the
    concatenation through the head.

    Parameters
    ----------
    n_drug
        Width of a drug's feature vector.
    n_cell
        Width of a cell line's feature vector (``0``: no cell branch, the drug-only control).
    n_hidden
        Width of each branch's output.
    n_out
        Outputs (1: a synergy score or the logit of "synergistic").
    dropout_rate
        Dropout in the cell branch and the head.

    Examples
    --------
    >>> import torch
    >>> import cellformers as cf
    >>> head = cf.downstream.SynergyMLP(n_drug=16, n_cell=30, n_hidden=8)
    >>> head(torch.randn(4, 16), torch.randn(4, 16), torch.randn(4, 30)).shape
    torch.Size([4])
    """

    def __init__(self, n_drug: int, n_cell: int, n_hidden: int = 64, n_out: int = 1, dropout_rate: float = 0.2):
        super().__init__()
        self.drug = nn.Sequential(nn.Linear(n_drug, 2 * n_hidden), nn.ReLU(), nn.Linear(2 * n_hidden, n_hidden))
        self.cell = (
            nn.Sequential(
                nn.Linear(n_cell, 2 * n_hidden), nn.ReLU(), nn.Dropout(dropout_rate), nn.Linear(2 * n_hidden, n_hidden)
            )
            if n_cell > 0
            else None
        )
        n_in = (3 if n_cell > 0 else 2) * n_hidden
        self.head = nn.Sequential(
            nn.Linear(n_in, 2 * n_hidden),
            nn.ReLU(),
            nn.Dropout(dropout_rate),
            nn.Linear(2 * n_hidden, n_hidden),
            nn.ReLU(),
            nn.Linear(n_hidden, n_out),
        )
        self.n_out = n_out

    def forward(self, drug_a: Tensor, drug_b: Tensor, cell: Tensor | None = None) -> Tensor:
        """Synergy score (or logit) of each combination.

        Parameters
        ----------
        drug_a, drug_b
            ``(batch, n_drug)`` drug features.
        cell
            ``(batch, n_cell)`` cell-line features (ignored without a cell branch).

        Returns
        -------
        ``(batch,)`` (``(batch, n_out)`` when ``n_out > 1``).
        """
        parts = [self.drug(drug_a), self.drug(drug_b)]
        if self.cell is not None:
            parts.append(self.cell(cell))
        out = self.head(torch.cat(parts, dim=-1))
        return out.squeeze(-1) if self.n_out == 1 else out


def train_synergy_head(
    drug_a: np.ndarray,
    drug_b: np.ndarray,
    cell: np.ndarray | None,
    y: np.ndarray,
    *,
    task: Task = "regression",
    n_hidden: int = 64,
    dropout_rate: float = 0.2,
    max_epochs: int = 100,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> SynergyMLP:
    """Fit a :class:`SynergyMLP` with Adam (MSE for ``"regression"``, cross entropy for ``"classification"``).

    Each training combination is also shown with its drugs swapped (a combination has no order).

    Parameters
    ----------
    drug_a, drug_b
        ``(n, n_drug)`` features of the two drugs of each combination.
    cell
        ``(n, n_cell)`` cell-line features, or ``None`` for the drug-only control.
    y
        ``(n,)`` synergy scores (``"regression"``) or 0/1 labels (``"classification"``).
    task
        ``"regression"`` or ``"classification"``.
    n_hidden, dropout_rate
        As in :class:`SynergyMLP`.
    max_epochs
        Passes over the training combinations.
    batch_size
        Minibatch size.
    lr, weight_decay
        Adam's learning rate and weight decay.
    seed
        Seed of the initialisation and the minibatch order.

    Returns
    -------
    The trained head, in evaluation mode.

    Examples
    --------
    >>> import numpy as np
    >>> import cellformers as cf
    >>> rng = np.random.default_rng(0)
    >>> a, b, c = rng.normal(size=(40, 4)), rng.normal(size=(40, 4)), rng.normal(size=(40, 3))
    >>> head = cf.downstream.train_synergy_head(a, b, c, a[:, 0] * c[:, 0], max_epochs=2, n_hidden=8)
    >>> head.training
    False
    """
    if task not in ("regression", "classification"):
        msg = f"`task` must be 'regression' or 'classification', got {task!r}."
        raise ValueError(msg)
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        model = SynergyMLP(drug_a.shape[1], 0 if cell is None else cell.shape[1], n_hidden, 1, dropout_rate)
    a = torch.as_tensor(np.asarray(drug_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(drug_b), dtype=torch.float32)
    c = None if cell is None else torch.as_tensor(np.asarray(cell), dtype=torch.float32)
    t = torch.as_tensor(np.asarray(y), dtype=torch.float32)
    # both drug orders
    a, b = torch.cat([a, b]), torch.cat([b, a])
    c = None if c is None else torch.cat([c, c])
    t = torch.cat([t, t])
    loss_fn = nn.MSELoss() if task == "regression" else nn.BCEWithLogitsLoss()
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    n = t.shape[0]
    n_threads = torch.get_num_threads()
    # a head this small trains fastest on one thread (10x faster than 2 contended threads, measured)
    torch.set_num_threads(1)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))  # dropout
            for _ in range(int(max_epochs)):
                order = torch.randperm(n, generator=gen)
                for start in range(0, n, batch_size):
                    idx = order[start : start + batch_size]
                    opt.zero_grad()
                    pred = model(a[idx], b[idx], None if c is None else c[idx])
                    loss_fn(pred, t[idx]).backward()
                    opt.step()
    finally:
        torch.set_num_threads(n_threads)
    return model.eval()


def _predict(model: SynergyMLP, drug_a, drug_b, cell) -> np.ndarray:
    """Mean over both drug orders."""
    a = torch.as_tensor(np.asarray(drug_a), dtype=torch.float32)
    b = torch.as_tensor(np.asarray(drug_b), dtype=torch.float32)
    c = None if cell is None else torch.as_tensor(np.asarray(cell), dtype=torch.float32)
    with torch.no_grad():
        return (0.5 * (model(a, b, c) + model(b, a, c))).numpy()


def _metrics(y: np.ndarray, pred: np.ndarray, task: Task) -> dict[str, float]:
    return regression_scores(y, pred) if task == "regression" else binary_scores(y, pred)


def _lookup(table: pd.DataFrame, keys: pd.Series, what: str, arg: str) -> np.ndarray:
    index = pd.Index(table.index.astype(str))
    pos = index.get_indexer(keys.astype(str))
    if (pos < 0).any():
        missing = pd.unique(keys.astype(str)[pos < 0])
        msg = (
            f"{missing.size} {what} of the combinations have no row in `{arg}` (e.g. {list(missing[:5])}); "
            f"its index has {index.size} names (e.g. {index[:5].tolist()})."
        )
        raise MissingKeyError(msg)
    values = table.to_numpy(dtype=np.float32)[pos]
    if not np.isfinite(values).all():
        msg = f"`{arg}` has NaN or infinite values in the rows used; fill or drop them first."
        raise InvalidExpressionError(msg)
    return values


def synergy_benchmark(
    pairs: pd.DataFrame,
    drug_features: pd.DataFrame,
    cell_features: Mapping[str, pd.DataFrame | None],
    *,
    target: str = "label",
    drug_a_key: str = "drug_a",
    drug_b_key: str = "drug_b",
    cell_key: str = "cell_line",
    test: Sequence[bool] | np.ndarray | float = 0.2,
    task: Task = "regression",
    n_seeds: int = 5,
    max_epochs: int = 100,
    n_hidden: int = 64,
    batch_size: int = 128,
    lr: float = 1e-3,
    standardize: bool = True,
) -> pd.DataFrame:
    """Train the synergy head once per seed and per cell-line representation, and score it on the test combinations.

    The xTrimoGene paper's drug-combination experiment (section 5.4.3, App. 8.3): DeepDDS's framework is kept and
    only the cell-line input changes, from the raw expression profile to xTrimoGene's context embedding of the
    bulk profile; models are trained 5 times and the mean and standard deviation of each metric are reported
    (:func:`summarize_synergy`). Each entry of ``cell_features`` is one arm, all arms share the split and the seeds.

    Parameters
    ----------
    pairs
        One row per (drug A, drug B, cell line) combination, with the columns ``drug_a_key``, ``drug_b_key``,
        ``cell_key`` and ``target``.
    drug_features
        One row per drug (index: the drug names of ``pairs``), e.g. Morgan fingerprints.
    cell_features
        Arm name -> one row per cell line (index: the cell-line names of ``pairs``), e.g.
        ``{"expression": log1p profiles, "xtrimogene": context embeddings}``; ``None`` is the drug-only control.
    target
        Column of ``pairs`` with the synergy score (``"regression"``) or the 0/1 label (``"classification"``,
        DeepDDS's ``label``).
    drug_a_key, drug_b_key, cell_key
        Columns of ``pairs``.
    test
        Boolean mask of the test combinations (e.g. DeepDDS's independent set), or the fraction drawn at random
        (with :attr:`cellformers.settings.seed`, the same for every arm and seed).
    task
        ``"regression"`` (metrics ``mse``, ``pearson``, ``spearman``) or ``"classification"`` (``auroc``,
        ``auprc``, ``accuracy``).
    n_seeds
        Trainings per arm (the paper: 5).
    max_epochs, n_hidden, batch_size, lr
        As in :func:`train_synergy_head`.
    standardize
        Scale each feature column to zero mean and unit variance over the training combinations' cell lines and
        drugs (raw expression and embeddings have different scales).

    Returns
    -------
    One row per arm and seed: ``arm``, ``seed``, ``n_train``, ``n_test`` and the metrics.

    Examples
    --------
    >>> import numpy as np
    >>> import pandas as pd
    >>> import cellformers as cf
    >>> rng = np.random.default_rng(0)
    >>> drugs = pd.DataFrame(rng.normal(size=(6, 4)), index=[f"d{i}" for i in range(6)])
    >>> cells = pd.DataFrame(rng.normal(size=(5, 3)), index=[f"c{i}" for i in range(5)])
    >>> pairs = pd.DataFrame(
    ...     [(f"d{i}", f"d{j}", f"c{k}") for i in range(6) for j in range(i + 1, 6) for k in range(5)],
    ...     columns=["drug_a", "drug_b", "cell_line"],
    ... )
    >>> pairs["label"] = rng.normal(size=len(pairs))
    >>> res = cf.downstream.synergy_benchmark(
    ...     pairs, drugs, {"expression": cells, "drug_only": None}, n_seeds=2, max_epochs=2, n_hidden=8
    ... )
    >>> res[["arm", "seed"]].values.tolist()
    [['expression', 0], ['expression', 1], ['drug_only', 0], ['drug_only', 1]]
    >>> cf.downstream.summarize_synergy(res).columns.tolist()[:2]
    ['mse_mean', 'mse_sd']
    """
    for col in (drug_a_key, drug_b_key, cell_key, target):
        if col not in pairs.columns:
            msg = f"`pairs` has no column {col!r} (columns: {list(pairs.columns)})."
            raise MissingKeyError(msg)
    if task not in ("regression", "classification"):
        msg = f"`task` must be 'regression' or 'classification', got {task!r}."
        raise ValueError(msg)
    if not cell_features:
        msg = "`cell_features` is empty; pass at least one arm, e.g. {'expression': profiles}."
        raise ValueError(msg)
    n = len(pairs)
    if isinstance(test, float | int) and not isinstance(test, bool):
        if not 0.0 < float(test) < 1.0:
            msg = f"`test` as a fraction must be in (0, 1), got {test!r}."
            raise ValueError(msg)
        rng = np.random.default_rng(settings.seed)
        is_test = np.zeros(n, dtype=bool)
        is_test[rng.permutation(n)[: max(1, round(float(test) * n))]] = True
    else:
        is_test = np.asarray(test, dtype=bool)
        if is_test.shape != (n,):
            msg = f"`test` must be a boolean mask with one entry per combination ({n}), got shape {is_test.shape}."
            raise ValueError(msg)
    if is_test.all() or not is_test.any():
        msg = "`test` must leave both training and test combinations."
        raise ValueError(msg)
    y = pairs[target].to_numpy(dtype=np.float32)
    if not np.isfinite(y).all():
        msg = f"`pairs[{target!r}]` has NaN or infinite values."
        raise InvalidExpressionError(msg)
    da = _lookup(drug_features, pairs[drug_a_key], "drugs", "drug_features")
    db = _lookup(drug_features, pairs[drug_b_key], "drugs", "drug_features")
    if standardize:
        mu, sd = _scale(np.concatenate([da[~is_test], db[~is_test]]))
        da, db = (da - mu) / sd, (db - mu) / sd
    rows = []
    for arm, table in cell_features.items():
        cell = None if table is None else _lookup(table, pairs[cell_key], "cell lines", f"cell_features[{arm!r}]")
        if cell is not None and standardize:
            mu, sd = _scale(cell[~is_test])
            cell = (cell - mu) / sd
        logger.info(f"drug synergy: arm {arm!r}, {n_seeds} seeds")
        for seed in range(int(n_seeds)):
            head = train_synergy_head(
                da[~is_test],
                db[~is_test],
                None if cell is None else cell[~is_test],
                y[~is_test],
                task=task,
                n_hidden=n_hidden,
                max_epochs=max_epochs,
                batch_size=batch_size,
                lr=lr,
                seed=seed,
            )
            pred = _predict(head, da[is_test], db[is_test], None if cell is None else cell[is_test])
            rows.append(
                {
                    "arm": arm,
                    "seed": seed,
                    "n_train": int((~is_test).sum()),
                    "n_test": int(is_test.sum()),
                    **_metrics(y[is_test], pred, task),
                }
            )
    return pd.DataFrame(rows)


def _scale(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mu = x.mean(0, keepdims=True)
    sd = x.std(0, keepdims=True)
    return mu, np.where(sd > 0, sd, 1.0)


def summarize_synergy(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of each metric of :func:`synergy_benchmark`, one row per arm.

    Parameters
    ----------
    results
        The table :func:`synergy_benchmark` returns.

    Returns
    -------
    Indexed by arm, columns ``<metric>_mean`` and ``<metric>_sd`` (sample standard deviation, ``ddof=1``) and
    ``n_seeds``; arms in their order in ``results``.

    Examples
    --------
    >>> import pandas as pd
    >>> import cellformers as cf
    >>> res = pd.DataFrame({"arm": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "mse": [1.0, 3.0, 2.0, 2.0]})
    >>> cf.downstream.summarize_synergy(res)
          mse_mean  mse_sd  n_seeds
    arm
    a          2.0  1.414214        2
    b          2.0  0.000000        2
    """
    skip = {"arm", "seed", "n_train", "n_test"}
    metrics = [c for c in results.columns if c not in skip]
    grouped = results.groupby("arm", sort=False)
    out = pd.DataFrame(index=pd.Index(pd.unique(results["arm"]), name="arm"))
    for m in metrics:
        out[f"{m}_mean"] = grouped[m].mean()
        out[f"{m}_sd"] = grouped[m].std(ddof=1)
    out["n_seeds"] = grouped["seed"].nunique()
    return out
