"""Honest test results: what one test number hides, computed once from the test scores.

:func:`evaluate_test` turns a model's test labels and scores (medauto's form:
:func:`medauto.scoring.predict_scores`) into a :class:`HonestEvaluation`: the test confusion
matrix, per-class sensitivity and specificity (scikit-learn's
``multilabel_confusion_matrix``), balanced accuracy, bootstrap 95 % confidence intervals of
AUC, ACC and balanced accuracy, and loud warnings:

* **one class**: the model predicts one class for at least :data:`ONE_CLASS_SHARE` of the
  test images (it has learned little beyond the class balance);
* **too small**: the test split's smallest class has fewer than :data:`MIN_CLASS_TEST`
  images, or the AUC's 95 % interval is wider than :data:`MAX_CI_WIDTH`; then the numbers
  say little (a 0.05 AUC difference is noise).

The bootstrap resamples the test set :data:`N_BOOTSTRAP` times with a fixed seed,
stratified by class (every resample keeps the class counts, so AUC is always defined) and
reads the 2.5 and 97.5 percentiles. The point values are MedMNIST's
(:func:`medauto.scoring.split_metrics`); inside the bootstrap, AUC is computed from ranks
(the Mann-Whitney form of the ROC AUC, ties counted half, equal to scikit-learn's
``roc_auc_score``), vectorised over resamples: ``roc_auc_score`` called 1000 times costs
about 5 s per evaluation on a CPU, the ranks about 20 ms. ``scipy.stats.bootstrap`` is
not used because it cannot stratify.

:func:`roc_png` draws the test ROC curve with scikit-learn's ``RocCurveDisplay``.

Example:
    >>> import numpy as np
    >>> ev = evaluate_test("binary", np.array([0, 0, 1, 1] * 10),
    ...                    np.array([.1, .6, .4, .9] * 10), ["benign", "malignant"])
    >>> ev.confusion, [round(c["sensitivity"], 2) for c in ev.per_class]
    ([[10, 10], [10, 10]], [0.5, 0.5])
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

from medauto.model_file import nan_to_none
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "CI_METRICS",
    "MAX_CI_WIDTH",
    "MIN_CLASS_TEST",
    "N_BOOTSTRAP",
    "ONE_CLASS_SHARE",
    "HonestEvaluation",
    "decisions",
    "evaluate_test",
    "one_class_warning",
    "roc_png",
]

#: Bootstrap resamples of the confidence intervals.
N_BOOTSTRAP = 1000
#: The metrics given a 95 % confidence interval.
CI_METRICS = ("auc", "acc", "balanced_acc")
#: A test split whose smallest class has fewer images is flagged as too small.
MIN_CLASS_TEST = 30
#: A test split whose AUC 95 % interval is wider than this is flagged as too small.
MAX_CI_WIDTH = 0.2
#: A model that predicts one class for at least this share of the test images is flagged.
ONE_CLASS_SHARE = 0.95


@dataclass
class HonestEvaluation:
    """The honest test results of one model (also a ``final.json``/``retrain.json`` field).

    Attributes:
        n: Test images.
        class_names: One name per class (per label for multi-label).
        metrics: MedMNIST's point values (:func:`medauto.scoring.split_metrics`).
        confusion: Counts, rows the true class, columns the predicted one (single-label;
            empty for multi-label).
        per_class: Per class: ``class``, ``n`` (true images), ``sensitivity`` (recall of
            the class), ``specificity`` (recall of the others).
        ci: ``metric → [low, high]``, the bootstrap 95 % interval of :data:`CI_METRICS`.
        n_bootstrap: Resamples drawn.
        seed: The resampling seed.
        warnings: The one-class and too-small warnings (empty: none).
    """

    n: int
    class_names: list[str]
    metrics: dict[str, float]
    confusion: list[list[int]] = field(default_factory=list)
    per_class: list[dict[str, Any]] = field(default_factory=list)
    ci: dict[str, list[float]] = field(default_factory=dict)
    n_bootstrap: int = N_BOOTSTRAP
    seed: int = 0
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → ``None``)."""
        return nan_to_none(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> HonestEvaluation:
        """Reads :meth:`to_dict`'s form (``None`` → NaN); unknown keys are ignored."""
        names = set(cls.__dataclass_fields__)
        out = cls(**{k: v for k, v in d.items() if k in names})
        out.metrics = {k: math.nan if v is None else float(v) for k, v in out.metrics.items()}
        return out

    def lines(self) -> list[str]:
        """Console lines: metrics with their intervals, per-class rates, warnings."""
        def with_ci(key: str) -> str:
            lo, hi = self.ci.get(key, [None, None])
            value = self.metrics.get(key, math.nan)
            band = "" if lo is None or hi is None else f" [{lo:.3f}, {hi:.3f}]"
            return f"{key}={value:.4f}{band}"

        rates = "; ".join(f"{c['class']} (n={c['n']}): sensitivity {_fmt(c['sensitivity'])}, "
                          f"specificity {_fmt(c['specificity'])}" for c in self.per_class)
        return [
            f"test (n={self.n}, 95 % CI from {self.n_bootstrap} bootstrap resamples): "
            + " ".join(with_ci(k) for k in CI_METRICS),
            f"per class: {rates}",
            *(f"WARNING: {w}" for w in self.warnings),
        ]

    def flat_metrics(self, prefix: str = "test_") -> dict[str, float]:
        """Finite numbers by name, for MLflow: ``<prefix>balanced_acc``,
        ``<prefix>auc_ci_low``/``_high``, ``<prefix>sensitivity_<class>``, ..."""
        out = {f"{prefix}balanced_acc": self.metrics.get("balanced_acc", math.nan)}
        for key, (lo, hi) in self.ci.items():
            out[f"{prefix}{key}_ci_low"], out[f"{prefix}{key}_ci_high"] = lo, hi
        for c in self.per_class:
            name = "".join(ch if ch.isalnum() else "_" for ch in str(c["class"]))
            out[f"{prefix}sensitivity_{name}"] = c["sensitivity"]
            out[f"{prefix}specificity_{name}"] = c["specificity"]
        return {k: float(v) for k, v in out.items() if v is not None and math.isfinite(v)}


def _fmt(v: Any) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{v:.3f}"


def decisions(task: str, scores: np.ndarray) -> np.ndarray:
    """The predicted class per image as MedMNIST's ACC reads the scores (binary and
    multi-label: ``p > 0.5``; otherwise the arg-max)."""
    import numpy as np

    s = np.asarray(scores)
    if task in ("binary", "multi-label"):
        return (s > 0.5).astype(np.int64)
    return np.argmax(s, axis=1)


def one_class_warning(confusion: Sequence[Sequence[int]], what: str = "the model") -> list[str]:
    """A warning when the predictions on test fall (nearly) all in one class
    (:data:`ONE_CLASS_SHARE`)."""
    if not confusion:
        return []
    predicted = [sum(row[j] for row in confusion) for j in range(len(confusion))]
    total = sum(predicted)
    top = max(range(len(predicted)), key=predicted.__getitem__)
    if total and predicted[top] >= ONE_CLASS_SHARE * total:
        return [f"{what} predicts class {top} for {predicted[top]} of {total} test "
                f"images: it has learned little beyond the class balance (more budget, or "
                f"see docs/search_quality.md)"]
    return []


def _rank_auc(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Row-wise ROC AUC of 0/1 labels ``y`` and scores ``s`` (both ``(B, N)``), from ranks."""
    import numpy as np
    from scipy.stats import rankdata

    ranks = rankdata(s, axis=1)
    n1 = y.sum(axis=1)
    n0 = y.shape[1] - n1
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((ranks * y).sum(axis=1) - n1 * (n1 + 1) / 2) / (n1 * n0)


def _bootstrap(task: str, y: np.ndarray, s: np.ndarray, pred: np.ndarray, k: int,
               n_boot: int, seed: int) -> dict[str, list[float]]:
    import numpy as np

    rng = np.random.default_rng(seed)
    n = len(y)
    if task == "multi-label":
        idx = rng.integers(0, n, size=(n_boot, n))
    else:  # stratified: each resample keeps the class counts
        parts = [np.flatnonzero(y == c) for c in range(k)]
        idx = np.concatenate([p[rng.integers(0, len(p), size=(n_boot, len(p)))]
                              for p in parts if len(p)], axis=1)
    yb, pb = y[idx], pred[idx]
    if task == "multi-label":
        auc = np.nanmean(np.stack([_rank_auc(yb[..., j], s[idx][..., j]) for j in range(k)]), 0)
        acc = (yb == pb).mean(axis=(1, 2))
        recalls = [np.stack([((yb[..., j] == v) & (pb[..., j] == v)).sum(1)
                             / np.maximum((yb[..., j] == v).sum(1), 1) for v in (0, 1)]).mean(0)
                   for j in range(k)]
        bal = np.mean(recalls, axis=0)
    else:
        sb = s[idx]
        if task == "binary":
            auc = _rank_auc(yb, sb)
        else:
            auc = np.nanmean(np.stack([_rank_auc((yb == c).astype(np.int64), sb[..., c])
                                       for c in range(k) if (y == c).any()]), axis=0)
        acc = (yb == pb).mean(axis=1)
        bal = np.mean([((yb == c) & (pb == c)).sum(1) / (yb == c).sum(1)
                       for c in range(k) if (y == c).any()], axis=0)
    out = {}
    for key, values in (("auc", auc), ("acc", acc), ("balanced_acc", bal)):
        v = values[np.isfinite(values)]
        out[key] = ([float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5))]
                    if len(v) else [math.nan, math.nan])
    return out


def evaluate_test(
    task: str,
    y_true: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    n_bootstrap: int = N_BOOTSTRAP,
    seed: int = 0,
    what: str = "the model",
) -> HonestEvaluation:
    """The honest test results of one model's test scores (see the module docstring).

    Args:
        task: The task type.
        y_true: Test labels (``(N,)``; multi-label ``(N, L)``).
        scores: Test scores in medauto's form (binary: ``(N,)`` positive-class
            probability; otherwise ``(N, C)``).
        class_names: One name per class.
        n_bootstrap: Bootstrap resamples.
        seed: Resampling seed (results are reproducible).
        what: How warnings name the model.
    """
    import numpy as np
    from sklearn.metrics import confusion_matrix
    from sklearn.metrics import multilabel_confusion_matrix

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64)
    y = y if task == "multi-label" else y.reshape(-1)
    k = len(class_names)
    pred = decisions(task, s)
    if task == "multi-label":
        per = multilabel_confusion_matrix(y, pred)
        confusion: list[list[int]] = []
    else:
        labels = list(range(k))
        per = multilabel_confusion_matrix(y, pred, labels=labels)
        confusion = [[int(v) for v in row] for row in confusion_matrix(y, pred, labels=labels)]
    per_class = []
    for name, m in zip(class_names, per, strict=True):
        (tn, fp), (fn, tp) = m
        per_class.append({
            "class": str(name), "n": int(tp + fn),
            "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
            "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
        })
    ev = HonestEvaluation(n=int(len(y)), class_names=[str(c) for c in class_names],
                        metrics=split_metrics(task, y, s), confusion=confusion,
                        per_class=per_class, n_bootstrap=n_bootstrap, seed=seed)
    ev.ci = _bootstrap(task, y, s, pred, k, n_bootstrap, seed)
    ev.warnings = one_class_warning(confusion, what) + _small_warning(ev)
    return ev


def _small_warning(ev: HonestEvaluation) -> list[str]:
    smallest = min((c["n"] for c in ev.per_class), default=0)
    lo, hi = ev.ci.get("auc", [math.nan, math.nan])
    width = hi - lo if lo is not None and hi is not None else math.nan
    reasons = []
    if smallest < MIN_CLASS_TEST:
        reasons.append(f"its smallest class has {smallest} image(s) (rule: >= {MIN_CLASS_TEST})")
    if math.isfinite(width) and width > MAX_CI_WIDTH:
        reasons.append(f"the AUC's 95 % CI [{lo:.3f}, {hi:.3f}] is {width:.3f} wide "
                       f"(rule: <= {MAX_CI_WIDTH})")
    if not reasons:
        return []
    return [f"the test split ({ev.n} images) is too small for these numbers to mean much: "
            + " and ".join(reasons)]


def roc_png(task: str, y_true: np.ndarray, scores: np.ndarray,
            class_names: Sequence[str]) -> bytes:
    """The test ROC curve(s) as PNG bytes: binary one curve, otherwise one per class
    (one-vs-rest), drawn by scikit-learn's ``RocCurveDisplay``."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import RocCurveDisplay

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(y_true).astype(np.int64)
    fig = Figure(figsize=(4.8, 4.2), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    if task == "binary":
        curves = [(y.reshape(-1), s.reshape(-1), str(class_names[-1]))]
    elif task == "multi-label":
        curves = [(y[:, j], s[:, j], str(n)) for j, n in enumerate(class_names)]
    else:
        yy = y.reshape(-1)
        curves = [((yy == c).astype(np.int64), s[:, c], str(n))
                  for c, n in enumerate(class_names) if (yy == c).any() and (yy != c).any()]
    for yt, st, name in curves:
        if 0 < yt.sum() < len(yt):
            RocCurveDisplay.from_predictions(yt, st, name=name, ax=ax)
    ax.plot([0, 1], [0, 1], linestyle=":", color="grey", linewidth=1)
    ax.set_title("test ROC")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()
