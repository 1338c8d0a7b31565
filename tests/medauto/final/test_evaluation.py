"""Honest test results (medauto.evaluation): per-class rates, intervals and warnings, checked
against scikit-learn on scores of a real shape (BreastMNIST's test split: 42 malignant, 114
benign)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import balanced_accuracy_score
from sklearn.metrics import recall_score
from sklearn.metrics import roc_auc_score

from medauto.evaluation import MIN_CLASS_TEST
from medauto.evaluation import HonestEvaluation
from medauto.evaluation import _rank_auc
from medauto.evaluation import evaluate_test
from medauto.evaluation import roc_png

NAMES = ["malignant", "normal, benign"]


def _scores(n0: int = 42, n1: int = 114, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.array([0] * n0 + [1] * n1)
    s = np.clip(0.35 * y + 0.65 * rng.random(len(y)), 0, 1)
    s[:5] = 0.5  # ties
    return y, s


def test_rank_auc_equals_scikit_learn_with_ties() -> None:
    y, s = _scores()
    assert _rank_auc(y[None], s[None])[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_per_class_rates_balanced_accuracy_and_intervals() -> None:
    y, s = _scores()
    ev = evaluate_test("binary", y, s, NAMES, seed=3)
    pred = (s > 0.5).astype(int)
    sens = recall_score(y, pred, average=None)
    assert [c["sensitivity"] for c in ev.per_class] == pytest.approx(list(sens))
    assert [c["specificity"] for c in ev.per_class] == pytest.approx(list(sens[::-1]))
    assert [c["n"] for c in ev.per_class] == [42, 114]
    assert ev.metrics["balanced_acc"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert sum(map(sum, ev.confusion)) == 156
    assert ev.confusion[1][1] == int(((y == 1) & (pred == 1)).sum())
    for key in ("auc", "acc", "balanced_acc"):
        lo, hi = ev.ci[key]
        assert lo < ev.metrics[key] < hi and hi - lo < 0.3
    again = evaluate_test("binary", y, s, NAMES, seed=3)
    assert again.ci == ev.ci  # seeded
    assert evaluate_test("binary", y, s, NAMES, seed=4).ci != ev.ci
    assert ev.warnings == []  # 42 malignant, AUC interval narrow enough
    flat = ev.flat_metrics()
    assert flat["test_sensitivity_malignant"] == pytest.approx(sens[0])
    assert flat["test_specificity_normal__benign"] == pytest.approx(sens[0])
    assert {"test_auc_ci_low", "test_auc_ci_high", "test_balanced_acc"} <= set(flat)
    back = HonestEvaluation.from_dict(ev.to_dict())
    assert back.ci == ev.ci and back.lines() == ev.lines()
    assert "sensitivity 0." in back.lines()[1]


def test_a_model_that_calls_every_case_benign_is_flagged() -> None:
    """The README's CPU flow: ACC 0.7308 is the benign share, balanced accuracy 0.5."""
    y, _ = _scores()
    s = np.full(len(y), 0.8)
    ev = evaluate_test("binary", y, s, NAMES, what="the retrained model")
    assert ev.metrics["acc"] == pytest.approx(114 / 156)
    assert ev.metrics["balanced_acc"] == pytest.approx(0.5)
    assert ev.per_class[0]["sensitivity"] == 0.0 and ev.per_class[1]["sensitivity"] == 1.0
    assert any("the retrained model predicts class 1 for 156 of 156" in w for w in ev.warnings)
    assert any(line.startswith("WARNING: the retrained model predicts") for line in ev.lines())


def test_a_small_test_split_is_flagged() -> None:
    y, s = _scores(n0=12, n1=28)
    ev = evaluate_test("binary", y, s, NAMES)
    assert len(ev.warnings) == 1 and "too small" in ev.warnings[0]
    assert f"smallest class has 12 image(s) (rule: >= {MIN_CLASS_TEST})" in ev.warnings[0]


def test_multi_class_and_roc_png() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 300)
    s = rng.dirichlet([1, 1, 1], 300)
    s[np.arange(300), y] += 0.5
    s /= s.sum(1, keepdims=True)
    ev = evaluate_test("multi-class", y, s, ["a", "b", "c"])
    assert len(ev.confusion) == 3 and len(ev.per_class) == 3
    lo, hi = ev.ci["auc"]
    assert lo < ev.metrics["auc"] < hi
    png = roc_png("multi-class", y, s, ["a", "b", "c"])
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
