"""Cell-type annotation: a fine-tuned classifier head on a model (``annotate``) and the classical baselines."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
from natsort import natsorted

from cellformers._exceptions import MissingKeyError
from cellformers._settings import settings
from cellformers._utils import check_key, resolve_adata
from cellformers.metrics import classification_metrics
from cellformers.model.base._annotator import SPLIT_NAMES, CellTypeAnnotator, read_labels, stratified_split

from ._embed import _chunked, _model_name, _model_params

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from cellformers.model.base import CellformersModel

logger = logging.getLogger(__name__)

_BaselineMethod = Literal["logreg_pca", "knn_scvi"]
#: Default embedding (``adata.obsm`` key, written by :func:`cellformers.tl.baselines`) of each annotation baseline.
BASELINE_REPS: dict[str, str] = {"logreg_pca": "X_pca_hvg", "knn_scvi": "X_scvi"}
#: Hyperparameter grids searched on the validation cells: inverse regularisation ``C`` and neighbour count ``k``.
BASELINE_GRIDS: dict[str, tuple[float, ...]] = {"logreg_pca": (0.01, 0.1, 1.0, 10.0), "knn_scvi": (5, 15, 30)}


def annotate(
    adata: AnnData,
    model: CellformersModel,
    *,
    labels_key: str | None = None,
    key_added: str | None = None,
    batch_size: int | None = None,
    chunk_size: int | None = None,
    precision: str | None = None,
    copy: bool = False,
    **kwargs: Any,
) -> AnnData | None:
    """Annotate cell types with a classifier head fine-tuned on a model's cell embedding.

    With ``labels_key``, the head is first fine-tuned on the labelled cells of ``adata``
    (:meth:`~cellformers.model.CellformersModel.train_annotator`: seeded stratified 8:1:1 split, model selection on
    the validation cells, macro-F1 and macro-precision on the test cells); without it, the classifier the model
    already has (``model.annotator_``, e.g. trained on a reference) labels ``adata``. Works the same for
    :class:`~cellformers.model.XTrimoGene` (max-pooled encoder outputs + linear head, xTrimoGene App. 8.1),
    :class:`~cellformers.model.ScFormer` (``<cls>`` embedding) and :class:`~cellformers.model.ScPaLM` (``h_C``).

    Parameters
    ----------
    adata
        Cells with the genes the model was set up with (raw counts in the registered layer). Prediction streams
        over chunks (a backed ``AnnData`` works); fine-tuning on an ``AnnData`` other than the model's own runs on
        an in-memory copy, so nothing is registered into the caller's object.
    model
        A trained cellformers model.
    labels_key
        Column of ``adata.obs`` with the cell types to fine-tune on; cells with a missing label (NaN) are not used
        for training but are annotated. ``None`` uses the model's existing classifier.
    key_added
        ``adata.obs`` key of the labels. Defaults to ``"<model>_label"`` (e.g. ``"xtrimogene_label"``).
    batch_size
        Minibatch size of the forward passes (and of fine-tuning; default 64 there).
    chunk_size
        Cells loaded into memory at a time for prediction (default: all for in-memory data, 8192 for backed data).
    precision
        ``"bf16-mixed"`` (or ``"bf16"``) for bfloat16 autocast in fine-tuning and prediction; ``None`` for float32.
    copy
        Return a modified copy instead of writing to ``adata``.
    **kwargs
        Only with ``labels_key``: passed to :meth:`~cellformers.model.CellformersModel.train_annotator`
        (``freeze``, ``split``, ``max_epochs``, ``lr``, ``seed``, …).

    Returns
    -------
    Returns ``None`` if ``copy=False``, else the modified copy. Sets:

    `adata.obs['<model>_label' | key_added]` : :class:`pandas.Categorical`
        The predicted cell type of every cell (only classes seen in training can be predicted).
    `adata.obs['<model>_label_confidence' | key_added + '_confidence']` : :class:`numpy.ndarray`
        The probability of the predicted class.
    `adata.obsm['<model>_label_probabilities' | key_added + '_probabilities']` : :class:`pandas.DataFrame`
        Class probabilities (cells × classes, columns named by class).
    `adata.obs['<model>_label_split' | key_added + '_split']` : :class:`pandas.Categorical`
        Only when fine-tuned here: ``"train"``, ``"validation"``, ``"test"`` or ``"unlabeled"``.
    `adata.uns['<model>_label' | key_added]` : :class:`dict`
        ``params`` (model, checkpoint or training summary, the classifier's training options and classes) and
        ``metrics`` (``validation`` / ``test``: ``macro_f1``, ``macro_precision``, ``accuracy``, ``n_cells``; with
        ``labels_key``; or, without it, ``query`` when ``adata.obs`` holds the classifier's label column).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.annotate(adata, model, labels_key="labels", max_epochs=2)  # fine-tunes a classifier head
    >>> adata.obs[["scformer_label", "scformer_label_confidence", "scformer_label_split"]].shape
    (100, 3)
    >>> sorted(adata.uns["scformer_label"]["metrics"])
    ['test', 'validation']
    >>> query = cf.data.synthetic_counts(n_cells=30, n_genes=50, random_state=1)
    >>> cf.tl.annotate(query, model)  # the same classifier on new cells
    >>> set(query.obs["scformer_label"]) <= set(adata.obs["labels"])
    True
    """
    adata = resolve_adata(adata)
    if labels_key is not None:
        check_key(adata, "obs", labels_key, arg="labels_key")
    elif kwargs:
        msg = f"{sorted(kwargs)} configure fine-tuning and are only accepted with `labels_key`."
        raise TypeError(msg)
    elif getattr(model, "annotator_", None) is None:
        msg = (
            "The model has no cell-type classifier yet: pass `labels_key=` naming the column of `adata.obs` to "
            "fine-tune on (or call `model.train_annotator` on a reference first)."
        )
        raise ValueError(msg)
    name = _model_name(model)
    key = key_added or f"{name}_label"

    annotator: CellTypeAnnotator
    if labels_key is not None:
        target = adata if adata is getattr(model, "adata", None) else _in_memory_copy(adata)
        train_kw = {"batch_size": batch_size, **kwargs} if batch_size is not None else dict(kwargs)
        annotator = model.train_annotator(labels_key, target, precision=precision, **train_kw)
    else:
        annotator = model.annotator_
    logger.info(f"annotating cell types with {type(model).__name__}")
    probs = _chunked(
        adata,
        model,
        lambda sub: model.predict_cell_types(sub, batch_size=batch_size, soft=True, precision=precision).to_numpy(),
        chunk_size,
    ).astype(np.float32, copy=False)
    classes = list(annotator.classes)
    best = probs.argmax(1)
    labels = np.asarray(classes, dtype=object)[best]

    metrics = {k: dict(v) for k, v in annotator.metrics.items()} if labels_key is not None else {}
    if labels_key is None and annotator.labels_key in adata.obs.columns:
        truth = read_labels(adata, annotator.labels_key)
        has = np.array([t is not None for t in truth], dtype=bool)
        if has.any():
            metrics["query"] = classification_metrics(truth[has], labels[has])

    adata = adata.copy() if copy else adata
    adata.obs[key] = pd.Categorical(labels, categories=natsorted(classes))
    adata.obs[f"{key}_confidence"] = probs[np.arange(probs.shape[0]), best]
    adata.obsm[f"{key}_probabilities"] = pd.DataFrame(probs, index=adata.obs_names.copy(), columns=classes)
    if labels_key is not None:
        adata.obs[f"{key}_split"] = annotator.split_labels()
    params = _model_params(
        model,
        labels_key=annotator.labels_key,
        classes=classes,
        best_epoch=int(annotator.best_epoch),
        train_time_s=float(annotator.train_time_s),
        **{k: v for k, v in annotator.params.items() if k != "labels_key"},
    )
    adata.uns[key] = {"params": params, "metrics": metrics}
    written = [key, f"{key}_confidence"] + ([f"{key}_split"] if labels_key is not None else [])
    logger.info(f"added {', '.join(map(repr, written))} (adata.obs), {key + '_probabilities'!r} (adata.obsm)")
    return adata if copy else None


def _in_memory_copy(adata: AnnData) -> AnnData:
    return adata.to_memory() if adata.isbacked else adata.copy()


def _resolve_split(
    labels: np.ndarray,
    split: Sequence[float] | Mapping[str, Sequence[int]] | CellTypeAnnotator,
    seed: int | None,
) -> dict[str, np.ndarray]:
    if isinstance(split, CellTypeAnnotator):
        if split.n_obs != labels.shape[0]:
            msg = (
                f"`split` is the split of a classifier trained on {split.n_obs} cells, but `adata` has "
                f"{labels.shape[0]}: pass the AnnData it was trained on (or split fractions)."
            )
            raise ValueError(msg)
        return {name: np.asarray(split.split[name], dtype=np.int64) for name in SPLIT_NAMES}
    if isinstance(split, Mapping):
        missing = [n for n in SPLIT_NAMES if n not in split]
        if missing:
            msg = f"`split` as a dict needs the keys {list(SPLIT_NAMES)} (missing {missing})."
            raise ValueError(msg)
        out = {name: np.asarray(split[name], dtype=np.int64) for name in SPLIT_NAMES}
        for name, idx in out.items():
            if idx.size and (idx.min() < 0 or idx.max() >= labels.shape[0]):
                msg = f"`split[{name!r}]` holds positions outside `adata` ({labels.shape[0]} cells)."
                raise ValueError(msg)
            if any(labels[i] is None for i in idx):
                msg = f"`split[{name!r}]` holds cells without a label."
                raise ValueError(msg)
        return out
    return stratified_split(labels, split, seed)


def annotation_baselines(
    adata: AnnData,
    *,
    labels_key: str,
    split: Sequence[float] | Mapping[str, Sequence[int]] | CellTypeAnnotator = (0.8, 0.1, 0.1),
    methods: Sequence[_BaselineMethod] = ("logreg_pca", "knn_scvi"),
    use_rep: Mapping[str, str] | None = None,
    seed: int | None = None,
    key_added: str = "cellformers_annotation_baselines",
) -> pd.DataFrame:
    """Classical cell-type annotation baselines on the same split as a fine-tuned model.

    * ``"logreg_pca"`` -- multinomial logistic regression on the HVG-PCA embedding (``adata.obsm['X_pca_hvg']``);
      ``C`` chosen among 0.01, 0.1, 1 and 10 on the validation cells (features standardized);
    * ``"knn_scvi"`` -- distance-weighted k-nearest-neighbour vote in the scVI latent space
      (``adata.obsm['X_scvi']``); ``k`` chosen among 5, 15 and 30 on the validation cells.

    Compute the embeddings first with :func:`cellformers.tl.baselines` (``methods=("pca", "scvi")``). Both
    embeddings are unsupervised and computed on all cells (as the foundation models are pre-trained); only the
    training cells' labels are used. Scores are those of :meth:`~cellformers.model.CellformersModel.train_annotator`:
    macro-F1, macro-precision and accuracy on the test cells.

    Parameters
    ----------
    adata
        Annotated data with the baseline embeddings and the labels.
    labels_key
        Column of ``adata.obs`` with the cell types.
    split
        Fractions ``(train, validation, test)`` (the same seeded stratified split as ``train_annotator`` with the
        same ``seed``), a fitted :class:`~cellformers.model.CellTypeAnnotator` (``model.annotator_``, trained on
        this ``adata``) or a dict of positions per part.
    methods
        Baselines to run.
    use_rep
        Embedding key per method, e.g. ``{"knn_scvi": "X_scVI"}`` (defaults above).
    seed
        Seed of the split (``None``: ``cellformers.settings.seed``) and of the logistic regression.
    key_added
        ``adata.uns`` key of the result table.

    Returns
    -------
    DataFrame with one row per method: ``use_rep``, ``macro_f1``, ``macro_f1_supported`` (classes with >= 5 test
    cells), ``macro_precision``, ``accuracy`` (test cells),
    ``validation_macro_f1``, ``selected`` (the chosen ``C`` or ``k``), ``n_train``, ``n_test`` and ``time_s``.
    Also stored as ``adata.uns[key_added]`` (``{"params": ..., "table": {column: values}}``).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=100, n_genes=50)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> cf.tl.annotate(adata, model, labels_key="labels", max_epochs=2)
    >>> cf.tl.baselines(adata, methods=["pca"], n_comps=10)
    >>> scores = cf.tl.annotation_baselines(adata, labels_key="labels", split=model.annotator_, methods=["logreg_pca"])
    >>> scores[["use_rep", "n_train", "n_test"]]  # on the annotator's training and test cells
                  use_rep  n_train  n_test
    method
    logreg_pca  X_pca_hvg       80      10
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.preprocessing import StandardScaler

    adata = resolve_adata(adata)
    methods = list(dict.fromkeys([methods] if isinstance(methods, str) else methods))
    bad = [m for m in methods if m not in BASELINE_REPS]
    if bad or not methods:
        msg = f"`methods` must be a non-empty subset of {list(BASELINE_REPS)}, got {methods!r}."
        raise ValueError(msg)
    reps = {**BASELINE_REPS, **dict(use_rep or {})}
    for m in methods:
        if reps[m] not in adata.obsm:
            msg = (
                f"`use_rep[{m!r}]={reps[m]!r}` is not a key of `adata.obsm` (available: {list(adata.obsm)}); "
                "compute it with `cellformers.tl.baselines(adata, methods=('pca', 'scvi'))` or pass `use_rep=`."
            )
            raise MissingKeyError(msg)
    labels = read_labels(adata, labels_key)
    seed = settings.seed if seed is None else int(seed)
    parts = _resolve_split(labels, split, seed)
    tr, va, te = (parts[n] for n in SPLIT_NAMES)
    if np.unique(labels[tr].astype(str)).size < 2:
        msg = f"the training cells of `labels_key={labels_key!r}` hold fewer than two cell types."
        raise ValueError(msg)

    rows = []
    for m in methods:
        t0 = time.perf_counter()
        x = np.asarray(adata.obsm[reps[m]], dtype=np.float64)
        grid = BASELINE_GRIDS[m]
        if m == "logreg_pca":
            scaler = StandardScaler().fit(x[tr])
            x = scaler.transform(x)

            def make(p, _seed=seed):
                return LogisticRegression(C=p, max_iter=2000, random_state=_seed)
        else:

            def make(p):
                return KNeighborsClassifier(n_neighbors=int(min(p, tr.size)), weights="distance")

        best = None
        for p in grid:
            clf = make(p).fit(x[tr], labels[tr].astype(str))
            score = classification_metrics(labels[va], clf.predict(x[va]))["macro_f1"] if va.size else 0.0
            if best is None or score > best[0]:
                best = (score, p, clf)
            if not va.size:
                break
        score, chosen, clf = best
        test = classification_metrics(labels[te], clf.predict(x[te])) if te.size else classification_metrics([], [])
        rows.append(
            {
                "method": m,
                "use_rep": reps[m],
                "macro_f1": test["macro_f1"],
                "macro_f1_supported": test["macro_f1_supported"],
                "macro_precision": test["macro_precision"],
                "accuracy": test["accuracy"],
                "validation_macro_f1": float(score) if va.size else float("nan"),
                "selected": float(chosen),
                "n_train": int(tr.size),
                "n_test": int(te.size),
                "time_s": time.perf_counter() - t0,
            }
        )
    table = pd.DataFrame(rows).set_index("method")
    adata.uns[key_added] = {
        "params": {"labels_key": labels_key, "seed": seed, "use_rep": [reps[m] for m in methods]},
        "table": {"method": np.asarray(table.index, dtype=str), **{c: table[c].to_numpy() for c in table.columns}},
    }
    logger.info(f"added {key_added!r} (adata.uns)")
    return table
