"""compute_metrics agrees with MedMNIST's official evaluator on every task type."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from medmnist.evaluator import getACC
from medmnist.evaluator import getAUC
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import f1_score

from med_core.training import compute_metrics

RNG = np.random.default_rng(0)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _case(task: str, n: int = 200, c: int = 5) -> tuple[np.ndarray, np.ndarray]:
    if task == "multi-label, binary-class":
        y = (RNG.random((n, c)) < 0.3).astype(np.int64)
        s = np.clip(0.6 * y + 0.5 * RNG.random((n, c)), 0, 1)
        return y, s
    k = 2 if task == "binary-class" else c
    y = RNG.integers(0, k, size=(n, 1))
    s = _softmax(RNG.normal(size=(n, k)) + 1.5 * np.eye(k)[y[:, 0]])
    return y, s


OURS = {
    "binary-class": "binary",
    "multi-class": "multi-class",
    "ordinal-regression": "ordinal-regression",
    "multi-label, binary-class": "multi-label",
}


@pytest.mark.parametrize("mm_task", list(OURS))
def test_acc_and_auc_equal_medmnist_evaluator(mm_task: str) -> None:
    y, s = _case(mm_task)
    ours = compute_metrics(OURS[mm_task], y, s)
    assert ours["auc"] == pytest.approx(getAUC(y, s, mm_task), abs=1e-12)
    assert ours["acc"] == pytest.approx(getACC(y, s, mm_task), abs=1e-12)
    # MedMNIST's own task names are accepted too.
    assert compute_metrics(mm_task, y, s) == ours


def test_binary_accepts_positive_column_and_uses_strict_threshold() -> None:
    y, s = _case("binary-class")
    both = compute_metrics("binary", y, s)
    pos = compute_metrics("binary", y[:, 0], s[:, 1])
    assert both == pos
    # Exactly 0.5 counts as negative, as in medmnist (score > threshold).
    m = compute_metrics("binary", np.array([0, 1]), np.array([0.5, 0.9]))
    assert m["acc"] == 1.0


@pytest.mark.parametrize("task", ["binary", "multi-class"])
def test_balanced_acc_and_macro_f1_match_sklearn(task: str) -> None:
    y, s = _case("binary-class" if task == "binary" else "multi-class")
    pred = (s[:, 1] > 0.5).astype(int) if task == "binary" else s.argmax(1)
    m = compute_metrics(task, y, s)
    assert m["balanced_acc"] == pytest.approx(balanced_accuracy_score(y[:, 0], pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y[:, 0], pred, average="macro"))


def test_multilabel_balanced_acc_is_mean_per_label() -> None:
    y, s = _case("multi-label, binary-class")
    pred = (s > 0.5).astype(int)
    m = compute_metrics("multi-label", y, s)
    per_label = [balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(y.shape[1])]
    assert m["balanced_acc"] == pytest.approx(np.mean(per_label))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))


def test_evaluator_on_real_breastmnist_labels(medmnist_dir: Path) -> None:
    from medmnist import Evaluator

    ev = Evaluator("breastmnist", "val", root=str(medmnist_dir))
    s = _softmax(RNG.normal(size=(len(ev.labels), 2)))
    auc, acc = ev.evaluate(s)
    m = compute_metrics("binary", ev.labels, s)
    assert (m["auc"], m["acc"]) == (pytest.approx(auc), pytest.approx(acc))


def test_single_class_gives_nan_auc_with_warning() -> None:
    with pytest.warns(UserWarning, match="undefined"):
        m = compute_metrics("binary", np.ones(5, int), np.linspace(0.1, 0.9, 5))
    assert math.isnan(m["auc"])
    assert m["acc"] == pytest.approx(0.4)  # only 0.7 and 0.9 are > 0.5
    # A missing class in multi-class is left out of the mean (medmnist would raise).
    y = np.array([0, 1, 0, 1])
    s = np.array([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.6, 0.3, 0.1], [0.3, 0.6, 0.1]])
    with pytest.warns(UserWarning, match=r"classes \[2\]"):
        m = compute_metrics("multi-class", y, s)
    assert m["auc"] == 1.0


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="unknown task"):
        compute_metrics("regression", [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="rows"):
        compute_metrics("binary", [0, 1, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        compute_metrics("multi-class", [0, 1], [0.1, 0.2])
    with pytest.raises(ValueError, match="labels must be in"):
        compute_metrics("multi-class", [0, 3], [[0.5, 0.5], [0.5, 0.5]])
