"""Labels, stratified splits and the fitted cell-type annotator (its classes, split, metrics and history)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from natsort import natsorted

from cellformers._settings import settings
from cellformers._utils import cell_generator, check_key

if TYPE_CHECKING:
    from collections.abc import Sequence

    from anndata import AnnData

    from cellformers.module import CellTypeClassifier

__all__ = ["SPLIT_NAMES", "CellTypeAnnotator", "check_fractions", "read_labels", "stratified_split"]

#: Names of the three parts of an annotation split, in order.
SPLIT_NAMES: tuple[str, str, str] = ("train", "validation", "test")


# ---------------------------------------------------------------------------------------------------------------
# labels, splits and metrics (also used by cellformers.tl.annotate and tl.annotation_baselines; the metrics are
# computed in cellformers.metrics, below the training plan that scores validation with them)
# ---------------------------------------------------------------------------------------------------------------
def read_labels(adata: AnnData, labels_key: str, *, arg: str = "labels_key") -> np.ndarray:
    """Labels of ``adata.obs[labels_key]`` as an object array of ``str``, ``None`` where missing (NaN/None).

    Raises :class:`~cellformers.MissingKeyError` naming ``arg`` when the column does not exist.
    """
    check_key(adata, "obs", labels_key, arg=arg)
    col = adata.obs[labels_key]
    missing = col.isna().to_numpy()
    values = col.astype(object).to_numpy()
    out = np.empty(values.shape[0], dtype=object)
    out[~missing] = [str(v) for v in values[~missing]]
    out[missing] = None
    return out


def check_fractions(split: Sequence[float]) -> tuple[float, float, float]:
    fr = tuple(float(f) for f in split)
    if len(fr) != 3 or min(fr) < 0 or not math.isclose(sum(fr), 1.0, abs_tol=1e-6) or fr[0] <= 0:
        msg = (
            f"`split` must be three non-negative fractions (train, validation, test) summing to 1 with a positive "
            f"train fraction, e.g. (0.8, 0.1, 0.1); got {split!r}."
        )
        raise ValueError(msg)
    return fr  # type: ignore[return-value]


def stratified_split(
    labels: np.ndarray, split: Sequence[float] = (0.8, 0.1, 0.1), seed: int | None = None
) -> dict[str, np.ndarray]:
    """Seeded, stratified train / validation / test split of the labelled cells.

    Each class is shuffled with its own generator (seeded by ``seed`` and the class name, so a class's split does not
    depend on the other classes) and cut into ``round(fraction · n)`` validation and test cells, the rest going to
    training; a class with too few cells for a validation or test cell stays entirely in training. Cells whose
    label is ``None`` (missing) are in no part.

    Parameters
    ----------
    labels
        One label per cell (``str``), ``None`` for unlabelled cells (see ``read_labels``).
    split
        Fractions ``(train, validation, test)``; xTrimoGene App. 8.1 uses 8:1:1.
    seed
        Seed; ``None`` uses ``cellformers.settings.seed``.

    Returns
    -------
    ``{"train": positions, "validation": positions, "test": positions}``, sorted ``int64`` positions into ``labels``.
    """
    fr = check_fractions(split)
    seed = settings.seed if seed is None else int(seed)
    labels = np.asarray(labels, dtype=object)
    known = np.array([lab is not None for lab in labels], dtype=bool)
    parts: dict[str, list[np.ndarray]] = {name: [] for name in SPLIT_NAMES}
    for cls in natsorted(set(labels[known].tolist())):
        pos = np.flatnonzero(known & (labels == cls))
        rng = cell_generator(str(cls), seed=seed, salt="annotation-split")
        pos = pos[rng.permutation(pos.size)]
        n_val = int(math.floor(fr[1] * pos.size + 0.5))
        n_test = int(math.floor(fr[2] * pos.size + 0.5))
        if n_val + n_test >= pos.size:  # keep at least one training cell per class
            n_val = n_test = 0
        parts["validation"].append(pos[:n_val])
        parts["test"].append(pos[n_val : n_val + n_test])
        parts["train"].append(pos[n_val + n_test :])
    return {
        name: np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, dtype=np.int64)
        for name, p in parts.items()
    }


# ---------------------------------------------------------------------------------------------------------------
# the fitted classifier
# ---------------------------------------------------------------------------------------------------------------
@dataclass
class CellTypeAnnotator:
    """A classifier head fine-tuned on a model's cell embedding (``model.annotator_``).

    Made by :meth:`~cellformers.model.CellformersModel.train_annotator`; used by
    :meth:`~cellformers.model.CellformersModel.predict_cell_types` and :func:`cellformers.tl.annotate`.

    Parameters
    ----------
    head
        The classifier (:class:`~cellformers.module.CellTypeClassifier`).
    classes
        Cell types, in the order of the head's outputs.
    labels_key
        Column of ``adata.obs`` the labels were read from.
    freeze
        ``"encoder"`` (head only) or ``"none"`` (backbone fine-tuned too).
    split
        Positions of the ``"train"``, ``"validation"`` and ``"test"`` cells in the AnnData it was trained on.
    n_obs
        Number of cells of that AnnData.
    best_epoch
        Epoch (0-based) whose weights were kept.
    history
        Per-epoch ``train_loss``, ``validation_loss``, ``validation_macro_f1`` and ``validation_accuracy``.
    metrics
        ``{"validation": {...}, "test": {...}}`` from ``classification_metrics`` at the kept epoch.
    params
        The training options.
    train_time_s
        Wall-clock training time (feature extraction included).

    Examples
    --------
    >>> import cellformers as cf
    >>> adata = cf.data.synthetic_counts(n_cells=60, n_genes=30)
    >>> cf.model.ScFormer.setup_anndata(adata, labels_key="labels")
    >>> model = cf.model.ScFormer(adata, preset="tiny")
    >>> model.train(max_epochs=1, enable_progress_bar=False)
    >>> annotator = model.train_annotator("labels", max_epochs=2)
    >>> isinstance(annotator, cf.model.CellTypeAnnotator), annotator is model.annotator_
    (True, True)
    >>> annotator.classes, annotator.labels_key, annotator.freeze
    (['label_0', 'label_1', 'label_2'], 'labels', 'encoder')
    >>> {part: len(cells) for part, cells in annotator.split.items()}
    {'train': 48, 'validation': 6, 'test': 6}
    >>> list(annotator.history.columns)
    ['epoch', 'train_loss', 'validation_loss', 'validation_macro_f1', 'validation_accuracy']
    >>> sorted(annotator.metrics["test"])
    ['accuracy', 'macro_f1', 'macro_f1_supported', 'macro_precision', 'n_cells', 'n_classes_supported', 'per_class']
    """

    head: CellTypeClassifier
    classes: list[str]
    labels_key: str
    freeze: str
    split: dict[str, np.ndarray]
    n_obs: int
    best_epoch: int
    history: pd.DataFrame
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    params: dict[str, Any] = field(default_factory=dict)
    train_time_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain data (builtins, arrays, tensors, a DataFrame) that :meth:`from_dict` rebuilds the annotator from.

        This is what ``model.save()`` stores, so the model file needs no class of its own to be read back.
        """
        head = self.head
        return {
            "head": {
                "n_input": int(head.n_input),
                "n_classes": int(head.n_classes),
                "n_hidden": head.n_hidden,
                "dropout_rate": float(head.dropout_rate),
                "state_dict": {k: v.detach().cpu().clone() for k, v in head.state_dict().items()},
            },
            "classes": list(self.classes),
            "labels_key": self.labels_key,
            "freeze": self.freeze,
            "split": {k: np.asarray(v, dtype=np.int64) for k, v in self.split.items()},
            "n_obs": int(self.n_obs),
            "best_epoch": int(self.best_epoch),
            "history": self.history.copy(),
            "metrics": {k: dict(v) for k, v in self.metrics.items()},
            "params": dict(self.params),
            "train_time_s": float(self.train_time_s),
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any]) -> CellTypeAnnotator:
        """Rebuild an annotator from :meth:`to_dict`."""
        from cellformers.module import CellTypeClassifier

        h = state["head"]
        head = CellTypeClassifier(h["n_input"], h["n_classes"], n_hidden=h["n_hidden"], dropout_rate=h["dropout_rate"])
        head.load_state_dict(h["state_dict"])
        head.eval()
        fields = {k: v for k, v in state.items() if k != "head"}
        return cls(head=head, **fields)

    def split_labels(self) -> pd.Categorical:
        """Part of each cell of the training AnnData: ``"train"``, ``"validation"``, ``"test"`` or ``"unlabeled"``."""
        out = np.full(self.n_obs, "unlabeled", dtype=object)
        for name in SPLIT_NAMES:
            out[self.split[name]] = name
        return pd.Categorical(out, categories=[*SPLIT_NAMES, "unlabeled"])
