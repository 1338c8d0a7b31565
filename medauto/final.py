"""The end of a search: the final ensemble predictor, built on validation, tested once.

:func:`build_final` reads the candidates the trials left (:mod:`medauto.members`), runs
greedy ensemble selection and the binary threshold fit on their validation or out-of-fold
predictions (:mod:`medauto.ensemble`), saves the :class:`~medauto.ensemble.Predictor`, and
only then reads the test split: once for the ensemble and once for the best single
candidate, which the result reports beside it (with file size and latency) so a user can
choose. Outputs, under ``<run_dir>/final/<study>/``::

    final.json       FinalResult: candidates, members, selection scores, test metrics
    predictor/       the Predictor (predictor.json + members/*.pt)
    best_single/     the best single candidate as a Predictor (the comparison row)
    test_scores.npz  y and the ensemble's test scores
    roc.png          the ensemble's test ROC curve

The test numbers come with their honest context (:mod:`medauto.evaluation`): per-class
sensitivity and specificity, balanced accuracy, the confusion matrix, bootstrap 95 %
intervals and loud warnings when the model predicts one class or the test split is too
small.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.ensemble import Member
from medauto.ensemble import Predictor
from medauto.ensemble import fit_threshold
from medauto.ensemble import greedy_selection
from medauto.ensemble import shift_threshold
from medauto.evaluation import HonestEvaluation
from medauto.evaluation import evaluate_test
from medauto.evaluation import roc_png
from medauto.exceptions import MedautoError
from medauto.keys import BACKBONE_ATTR
from medauto.keys import EPOCHS_RUN_ATTR
from medauto.keys import PORTFOLIO_ATTR
from medauto.logging import get_logger
from medauto.members import Candidate
from medauto.members import consistent
from medauto.members import load_candidates
from medauto.model_file import atomic_write_bytes
from medauto.model_file import nan_to_none
from medauto.partial import best_partial_trial
from medauto.partial import train_partial
from medauto.preprocessing import Preprocessing
from medauto.scoring import METRICS
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

    from med_core.data import MedicalDataset

__all__ = [
    "FINAL_FILE", "FinalResult", "build_final", "final_dir", "leaderboard", "selection_metric",
]

_logger = get_logger(__name__)

FINAL_FILE = "final.json"


def final_dir(run_dir: str | Path, study_name: str) -> Path:
    """Where the final model of ``study_name`` is written."""
    return Path(run_dir) / "final" / study_name


def selection_metric(monitor: str) -> str:
    """The :data:`~medauto.scoring.METRICS` key ensemble selection maximizes for ``monitor``
    (``"val_auc"`` → ``"auc"``; a loss or another metric → ``"auc"``)."""
    key = monitor.removeprefix("val_")
    return key if key in METRICS else "auc"


@dataclass
class FinalResult:
    """What :func:`build_final` did and measured (also ``final.json``).

    Attributes:
        study: The study.
        dataset: The dataset's name.
        task: The task type.
        selection: ``"val"`` (holdout) or ``"oof"`` (cross-validated) selection set.
        metric: The metric ensemble selection maximized.
        candidates: Trials considered: ``{trial, value, backbone}``, best first.
        members: Trials in the ensemble: ``{trial, backbone, weight, models}``.
        selection_scores: Metrics on the selection set: ``ensemble`` (calibrated),
            ``best_single`` (the best candidate alone, calibrated the same way).
        threshold: Fitted binary threshold (``None`` for other tasks).
        test: The ensemble's test metrics (the one look at the test split).
        test_single: The best single candidate's test metrics, for comparison.
        confusion: The ensemble's test confusion matrix (rows: true class).
        evaluation: The ensemble's honest test results
            (:meth:`medauto.evaluation.HonestEvaluation.to_dict`).
        roc: Its test ROC curve PNG (relative to ``final.json``; empty: not drawn).
        n_test: Test samples.
        size_bytes: Model bytes: ``ensemble``, ``single``.
        latency_ms: Milliseconds per image at batch 32 on ``device``: ``ensemble``, ``single``.
        device: Where latency was measured.
        predictor: The predictor folder (relative to ``final.json``).
        created_at: ISO time.
        warnings: What makes the numbers mean less: the model predicts one class, the
            test split is too small (:mod:`medauto.evaluation`), no trial completed.
        partial: Set when no trial completed and the final model is the best partial
            trial, trained again (:mod:`medauto.partial`): ``trial``, ``state``, ``value``,
            ``epochs``, ``note``; empty otherwise.
    """

    study: str
    dataset: str = ""
    task: str = ""
    selection: str = ""
    metric: str = "auc"
    candidates: list[dict[str, Any]] = field(default_factory=list)
    members: list[dict[str, Any]] = field(default_factory=list)
    selection_scores: dict[str, dict[str, float]] = field(default_factory=dict)
    threshold: float | None = None
    test: dict[str, float] = field(default_factory=dict)
    test_single: dict[str, float] = field(default_factory=dict)
    confusion: list[list[int]] = field(default_factory=list)
    evaluation: dict[str, Any] = field(default_factory=dict)
    roc: str = ""
    n_test: int = 0
    size_bytes: dict[str, int] = field(default_factory=dict)
    latency_ms: dict[str, float] = field(default_factory=dict)
    device: str = "cpu"
    predictor: str = "predictor"
    created_at: str = ""
    warnings: list[str] = field(default_factory=list)
    partial: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN → ``None``)."""
        return nan_to_none(asdict(self))  # type: ignore[no-any-return]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FinalResult:
        """Reads :meth:`to_dict`'s form; unknown keys are ignored."""
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})

    def save(self, path: str | Path) -> Path:
        """Writes JSON atomically."""
        p = Path(path)
        atomic_write_bytes(p, (json.dumps(self.to_dict(), indent=2) + "\n").encode())
        return p

    @classmethod
    def load(cls, path: str | Path) -> FinalResult:
        """Reads a ``final.json``."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> str:
        """Lines for the console."""
        def fmt(m: dict[str, float]) -> str:
            return " ".join(f"{k}={m[k]:.4f}" for k in ("auc", "acc", "balanced_acc") if k in m)

        used = ", ".join(f"trial {m['trial']} {m['backbone']} x{m['weight']:.2f}"
                         for m in self.members)
        honest = HonestEvaluation.from_dict(self.evaluation).lines() if self.evaluation else []
        return "\n".join([
            f"final model: ensemble of {len(self.members)} trial(s) ({used}), chosen on "
            f"{'out-of-fold' if self.selection == 'oof' else 'validation'} predictions "
            f"of {len(self.candidates)} candidate(s)",
            f"  test (n={self.n_test}, once): ensemble {fmt(self.test)}",
            f"                      best single trial {fmt(self.test_single)}",
            *(f"  ensemble {line}" for line in honest if not line.startswith("WARNING")),
            f"  size {self.size_bytes.get('ensemble', 0) / 1e6:.1f} MB vs "
            f"{self.size_bytes.get('single', 0) / 1e6:.1f} MB; latency "
            f"{self.latency_ms.get('ensemble', math.nan):.2f} vs "
            f"{self.latency_ms.get('single', math.nan):.2f} ms/image ({self.device})",
            *(f"  WARNING: {w}" for w in self.warnings),
        ])


def _average(cands: list[Candidate], counts: list[int]) -> np.ndarray:
    import numpy as np

    w = np.array(counts, dtype=np.float64)
    return np.tensordot(w / w.sum(), np.stack([c.score for c in cands]).astype(np.float64), 1)


def _members(cands: list[Candidate], counts: list[int]) -> list[tuple[Path, Member]]:
    total = float(sum(counts))
    out = []
    for c, n in zip(cands, counts, strict=True):
        for j, path in enumerate(c.models):
            out.append((path, Member("", n / total / len(c.models), c.trial, j, c.backbone)))
    return [(p, m) for p, m in out if m.weight > 0]


def _calibrated(task: str, y: np.ndarray, s: np.ndarray, t: float | None) -> dict[str, float]:
    return split_metrics(task, y, s if t is None else shift_threshold(s, t))


def _latency(pred: Predictor, images: np.ndarray, device: str) -> float:
    batch = images[:32]
    pred.scores(batch, device=device)  # warm-up: loads the members
    t0 = time.perf_counter()
    pred.scores(batch, device=device)
    return (time.perf_counter() - t0) * 1000 / max(1, len(batch))


def build_final(
    study: optuna.Study,
    dataset: MedicalDataset,
    *,
    run_dir: str | Path,
    metric: str = "auc",
    max_candidates: int = 20,
    rounds: int = 25,
    device: str = "cpu",
    out_dir: str | Path | None = None,
) -> FinalResult:
    """Selects, calibrates and saves the final ensemble, then tests it once.

    Args:
        study: The finished search.
        dataset: Its data; ``dataset.test`` is read only after the predictor is saved.
        run_dir: The run folder the trials' members live in.
        metric: The :data:`~medauto.scoring.METRICS` key to maximize.
        max_candidates: The best this many completed trials are candidates.
        rounds: Rounds of greedy selection.
        device: Where the test predictions and latencies run.
        out_dir: Output folder (default :func:`final_dir`).

    Without a completed candidate, the best partial (pruned) trial is trained again and
    becomes the final model (:mod:`medauto.partial`); the result says so.

    Raises:
        MedautoError: no completed trial left members and no pruned trial reported a value
            (e.g. all failed).
    """
    import numpy as np

    cands = consistent(load_candidates(study, run_dir, limit=max_candidates))
    partial: dict[str, Any] = {}
    if not cands:
        trial = best_partial_trial(study)
        if trial is None:
            raise MedautoError(
                f"study {study.study_name!r} has no completed trial with saved models and no "
                "pruned trial that reported a value to build the final model from (see "
                "`medauto status` for why trials stopped)"
            )
        cand, partial = train_partial(study, trial, dataset, run_dir=run_dir, device=device)
        cands = [cand]
    info = dataset.info
    y = cands[0].y
    counts = greedy_selection([c.score for c in cands], y, task=info.task, metric=metric,
                              rounds=rounds)
    ens = _average(cands, counts)
    single = cands[0].score
    binary = info.task == "binary"
    threshold = fit_threshold(y, ens) if binary else None
    t_single = fit_threshold(y, single) if binary else None
    out = Path(out_dir) if out_dir is not None else final_dir(run_dir, study.study_name)
    input_spec = Preprocessing.for_dataset(info).to_dict()
    common: dict[str, Any] = {"task": info.task, "class_names": list(info.class_names),
              "input_spec": input_spec}
    meta = {"study": study.study_name, "dataset": info.name, "selection": cands[0].kind}
    predictor = Predictor.create(out / "predictor", members=_members(cands, counts),
                                 threshold=threshold, meta=meta, **common)
    best = Predictor.create(out / "best_single", members=_members(cands[:1], [1]),
                            threshold=t_single, meta=meta, **common)
    result = FinalResult(
        study=study.study_name, dataset=info.name, task=info.task, selection=cands[0].kind,
        metric=metric,
        candidates=[{"trial": c.trial, "value": c.value, "backbone": c.backbone}
                    for c in cands],
        members=[{"trial": c.trial, "backbone": c.backbone, "weight": n / sum(counts),
                  "models": len(c.models)} for c, n in zip(cands, counts, strict=True) if n],
        selection_scores={
            "ensemble": _calibrated(info.task, y, ens, threshold),
            "best_single": _calibrated(info.task, y, single, t_single),
        },
        threshold=threshold, device=device, predictor="predictor",
        created_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"), partial=partial,
    )
    _logger.info("ensemble of %d trial(s) from %d candidate(s): selection %s %.4f "
                 "(best single %.4f)", len(result.members), len(cands), metric,
                 result.selection_scores["ensemble"][metric],
                 result.selection_scores["best_single"][metric])
    # ---- the test split, once, after everything above is fixed and saved
    test = dataset.test
    if len(test) == 0:
        _logger.warning("the dataset has no test split; the final model is not tested")
    else:
        scores = predictor.scores(test.images, device=device)
        result.test = split_metrics(info.task, test.labels, scores)
        result.test_single = best.evaluate(test.images, test.labels, device=device)
        ev = evaluate_test(info.task, test.labels, scores, info.class_names,
                           what="the final model")
        result.evaluation, result.confusion = ev.to_dict(), ev.confusion
        atomic_write_bytes(out / "roc.png", roc_png(info.task, test.labels, scores,
                                                    info.class_names))
        result.roc = "roc.png"
        result.n_test = len(test)
        result.latency_ms = {"ensemble": _latency(predictor, test.images, device),
                             "single": _latency(best, test.images, device)}
        np.savez(out / "test_scores.npz", y=test.labels, ensemble=scores)
        result.warnings = ev.warnings
        for w in result.warnings:
            _logger.warning("%s", w)
    if partial:
        result.warnings.insert(0, partial["note"])
    result.size_bytes = {"ensemble": predictor.size_bytes(), "single": best.size_bytes()}
    result.save(out / FINAL_FILE)
    return result


def leaderboard(study: optuna.Study, final: FinalResult | None = None) -> pd.DataFrame:
    """Completed trials, best first: number, value, backbone, portfolio entry, epochs, and
    each one's weight in ``final``'s ensemble (0 when it is not a member)."""
    import pandas as pd
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    weights = {m["trial"]: m["weight"] for m in (final.members if final else [])}
    columns = ["trial", "value", "backbone", "portfolio", "epochs", "ensemble_weight"]
    rows = [
        [t.number, t.value, t.user_attrs.get(BACKBONE_ATTR), t.user_attrs.get(PORTFOLIO_ATTR),
         t.user_attrs.get(EPOCHS_RUN_ATTR), weights.get(t.number, 0.0)]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    ]
    frame = pd.DataFrame(rows, columns=columns)
    ascending = study.direction == StudyDirection.MINIMIZE
    return frame.sort_values(["value", "trial"], ascending=[ascending, True],
                             ignore_index=True)
