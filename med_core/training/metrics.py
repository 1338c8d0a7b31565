"""Classification metrics per task type, following MedMNIST's official definitions.

:func:`compute_metrics` returns ``acc`` and ``auc`` exactly as ``medmnist.evaluator.getACC``
and ``getAUC`` define them, plus ``balanced_acc`` and ``macro_f1`` (scikit-learn):

==================  ===============================  ===================================
task                AUC                              ACC
==================  ===============================  ===================================
binary              ROC-AUC of the positive score    positive score ``> 0.5``
multi-class         mean one-vs-rest ROC-AUC         argmax
ordinal-regression  mean one-vs-rest ROC-AUC         argmax
multi-label         mean per-label ROC-AUC           mean per-label accuracy at ``> 0.5``
==================  ===============================  ===================================

Degenerate inputs do not raise. A class (or label) whose one-vs-rest problem has only
one side present in ``y_true`` has no ROC-AUC; it is left out of the mean and a
``UserWarning`` names it. When no class has a defined AUC (e.g. a validation set with a
single class) ``auc`` is ``NaN``. The official evaluator raises ``ValueError`` in these
cases; on well-formed data both agree exactly.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["TASKS", "compute_metrics", "normalize_task"]

TASKS = ("binary", "multi-class", "multi-label", "ordinal-regression")

# MedMNIST's own task names map onto ours.
_ALIASES = {
    "binary": "binary",
    "binary-class": "binary",
    "multi-class": "multi-class",
    "multiclass": "multi-class",
    "ordinal-regression": "ordinal-regression",
    "ordinal": "ordinal-regression",
    "multi-label": "multi-label",
    "multilabel": "multi-label",
    "multi-label, binary-class": "multi-label",
}


def normalize_task(task: str) -> str:
    """Maps a task name (ours or MedMNIST's, e.g. ``"binary-class"``) to one of :data:`TASKS`.

    Raises:
        ValueError: for an unknown task name.
    """
    try:
        return _ALIASES[task]
    except KeyError:
        raise ValueError(f"unknown task {task!r}; expected one of {list(TASKS)}") from None


def _auc(y: np.ndarray, s: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    if y.min() == y.max():
        return math.nan
    return float(roc_auc_score(y, s))


def _mean_defined(values: list[float], what: str) -> float:
    undefined = [i for i, v in enumerate(values) if math.isnan(v)]
    if undefined:
        warnings.warn(
            f"ROC-AUC is undefined for {what} {undefined} (only one class present in y_true); "
            f"{'auc is NaN' if len(undefined) == len(values) else 'they are left out of the mean'}",
            UserWarning,
            stacklevel=3,
        )
    defined = [v for v in values if not math.isnan(v)]
    return float(np.mean(defined)) if defined else math.nan


def compute_metrics(task: str, y_true: ArrayLike, y_score: ArrayLike) -> dict[str, float]:
    """Computes ``acc``, ``auc``, ``balanced_acc`` and ``macro_f1`` for one task type.

    Args:
        task:
            ``"binary"``, ``"multi-class"``, ``"ordinal-regression"`` or ``"multi-label"``
            (MedMNIST's names such as ``"binary-class"`` are accepted too).
        y_true:
            Integer labels of shape ``(N,)`` or ``(N, 1)``; for multi-label tasks a 0/1
            array of shape ``(N, L)``.
        y_score:
            Binary: the positive-class probability ``(N,)`` or class probabilities
            ``(N, 2)`` (the last column is used). Multi-class / ordinal: class
            probabilities ``(N, C)``. Multi-label: per-label probabilities ``(N, L)``.

    Returns:
        ``{"acc", "auc", "balanced_acc", "macro_f1"}`` as Python floats. For multi-label
        tasks ``balanced_acc`` is the mean per-label balanced accuracy and ``macro_f1`` the
        mean per-label F1 (scikit-learn's ``average="macro"``).

    Raises:
        ValueError: for an unknown task or inconsistent shapes.

    Example:
        >>> import numpy as np
        >>> m = compute_metrics("binary", np.array([0, 1, 1, 0]), np.array([0.2, 0.9, 0.6, 0.7]))
        >>> m["acc"], m["auc"]
        (0.75, 0.75)
    """
    from sklearn.metrics import balanced_accuracy_score
    from sklearn.metrics import f1_score

    kind = normalize_task(task)
    yt = np.asarray(y_true)
    ys = np.asarray(y_score, dtype=np.float64)
    if yt.shape[0] != ys.shape[0]:
        raise ValueError(f"y_true has {yt.shape[0]} rows but y_score has {ys.shape[0]}")
    if yt.shape[0] == 0:
        raise ValueError("compute_metrics needs at least one sample, got 0")

    if kind == "multi-label":
        if yt.ndim != 2 or ys.shape != yt.shape:
            raise ValueError(
                f"multi-label needs y_true and y_score of shape (N, L), got {yt.shape} and "
                f"{ys.shape}"
            )
        yt = yt.astype(np.int64)
        pred = (ys > 0.5).astype(np.int64)
        n_labels = yt.shape[1]
        auc = _mean_defined([_auc(yt[:, i], ys[:, i]) for i in range(n_labels)], "labels")
        acc = float(np.mean([np.mean(yt[:, i] == pred[:, i]) for i in range(n_labels)]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # single-class label columns
            bal = float(
                np.mean([balanced_accuracy_score(yt[:, i], pred[:, i]) for i in range(n_labels)])
            )
        f1 = float(f1_score(yt, pred, average="macro", zero_division=0))
        return {"acc": acc, "auc": auc, "balanced_acc": bal, "macro_f1": f1}

    yt = yt.reshape(yt.shape[0], -1)
    if yt.shape[1] != 1:
        raise ValueError(f"{kind} needs y_true of shape (N,) or (N, 1), got {np.shape(y_true)}")
    yt = yt[:, 0].astype(np.int64)

    if kind == "binary":
        if ys.ndim == 2:
            ys = ys[:, -1]
        if ys.ndim != 1:
            raise ValueError(f"binary needs y_score of shape (N,) or (N, 2), got {ys.shape}")
        pred = (ys > 0.5).astype(np.int64)
        auc = _mean_defined([_auc(yt, ys)], "class")
    else:
        if ys.ndim != 2:
            raise ValueError(f"{kind} needs y_score of shape (N, C), got {ys.shape}")
        n_classes = ys.shape[1]
        if yt.min() < 0 or yt.max() >= n_classes:
            raise ValueError(f"labels must be in [0, {n_classes}), got {yt.min()}..{yt.max()}")
        pred = np.argmax(ys, axis=-1)
        auc = _mean_defined(
            [_auc((yt == i).astype(np.int64), ys[:, i]) for i in range(n_classes)], "classes"
        )

    acc = float(np.mean(pred == yt))
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true" is expected on small validation sets.
        warnings.simplefilter("ignore", UserWarning)
        bal = float(balanced_accuracy_score(yt, pred))
    f1 = float(f1_score(yt, pred, average="macro", zero_division=0))
    return {"acc": acc, "auc": auc, "balanced_acc": bal, "macro_f1": f1}
