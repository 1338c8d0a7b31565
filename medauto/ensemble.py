"""The final model: greedy ensemble selection, calibration and the saved :class:`Predictor`.

* :func:`greedy_selection` is Caruana et al.'s ensemble selection (ICML 2004), as
  auto-sklearn and AutoGluon use it: starting from nothing, add (with replacement) the
  candidate whose addition makes the averaged predictions score best on the selection set,
  for ``rounds`` rounds, and keep the best round. The selection set is the validation split
  or the out-of-fold predictions (:mod:`medauto.members`), never the test split.
* :func:`fit_threshold` fits the binary decision threshold on the same predictions: the
  best accuracy, kept only when it beats 0.5 out of sample by more than the folds'
  spread. The predictor folds
  it into its probabilities as a logit shift, so MedMNIST's ACC (read at 0.5) sees the
  calibrated decision and the AUC (a ranking) is unchanged.
* :class:`Predictor` is the one saved final model: member model files, their weights, the
  calibration and the input format, in one folder. ``medauto`` commands and
  :meth:`medauto.AutoMLOptimizer.predict` load it with :meth:`Predictor.load`.

The selection metric is written out here rather than taken from a library: no well-kept
package offers Caruana's procedure on its own (AutoGluon's is internal to its tabular
predictor), and the procedure is a dozen lines over :func:`medauto.scoring.split_metrics`.

Example:
    >>> import numpy as np
    >>> y = np.array([0, 0, 1, 1])
    >>> good, noisy = np.array([.1, .4, .6, .9]), np.array([.6, .1, .9, .3])
    >>> greedy_selection([good, noisy], y, task="binary", rounds=5)
    [1, 0]
    >>> y = np.array([0] * 20 + [1] * 20)
    >>> fit_threshold(y, np.r_[np.linspace(.6, .7, 20), np.linspace(.75, .95, 20)])
    0.725
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.exceptions import MedautoError
from medauto.model_file import ModelFileError
from medauto.model_file import atomic_write_bytes
from medauto.model_file import load_model
from medauto.model_file import nan_to_none
from medauto.preprocessing import Preprocessing
from medauto.preprocessing import PreprocessingError
from medauto.scoring import split_metrics

if TYPE_CHECKING:
    import numpy as np

__all__ = [
    "PREDICTOR_FILE",
    "THRESHOLD_FOLDS",
    "Member",
    "Predictor",
    "PredictorError",
    "fit_threshold",
    "greedy_selection",
    "shift_threshold",
]

PREDICTOR_FILE = "predictor.json"
#: Folds of :func:`fit_threshold`'s out-of-sample check.
THRESHOLD_FOLDS = 5
_KIND = "medauto.predictor"
_VERSION = 1


class PredictorError(MedautoError, ValueError):
    """A predictor folder is missing, corrupt or does not fit the images given to it."""


def greedy_selection(
    scores: Sequence[np.ndarray],
    y: np.ndarray,
    *,
    task: str,
    metric: str = "auc",
    rounds: int = 25,
) -> list[int]:
    """Caruana's greedy ensemble selection with replacement.

    Args:
        scores: Each candidate's predictions on the selection set (same samples, same
            order), best candidate first (ties go to the earlier one).
        y: The selection set's labels.
        task: The task type (for :func:`medauto.scoring.split_metrics`).
        metric: A key of :data:`medauto.scoring.METRICS`, higher is better.
        rounds: Additions to try.

    Returns:
        How many times each candidate was picked in the best round (its weight is the
        count over the total).
    """
    import numpy as np

    if not scores:
        raise ValueError("greedy_selection needs at least one candidate")
    stack = np.stack([np.asarray(s, dtype=np.float64) for s in scores])
    counts = np.zeros(len(scores), dtype=np.int64)
    total = np.zeros_like(stack[0])
    best_value, best_counts = -math.inf, counts.copy()
    for r in range(1, rounds + 1):
        values = [
            split_metrics(task, y, (total + stack[i]) / r)[metric] for i in range(len(scores))
        ]
        pick = int(np.nanargmax(np.nan_to_num(values, nan=-math.inf)))
        counts[pick] += 1
        total += stack[pick]
        if values[pick] > best_value + 1e-12:
            best_value, best_counts = values[pick], counts.copy()
    return [int(c) for c in best_counts]


def _accuracy(y: np.ndarray, p: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Accuracy of the decisions ``p >= t`` for each threshold in ``t``."""
    return ((p[None, :] >= t[:, None]) == (y == 1)[None, :]).mean(axis=1)


def _accuracy_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold of best accuracy on ``(y, p)``; ties: the closest to 0.5."""
    import numpy as np

    u = np.unique(p)
    cands = np.concatenate([[0.5], (u[1:] + u[:-1]) / 2]) if len(u) > 1 else np.array([0.5])
    acc = _accuracy(y, p, cands)
    best = np.flatnonzero(acc >= acc.max() - 1e-12)
    return float(cands[best[np.argmin(np.abs(cands[best] - 0.5))]])


def fit_threshold(y: np.ndarray, p: np.ndarray, *, folds: int = THRESHOLD_FOLDS,
                  seed: int = 0) -> float:
    """The binary decision threshold on the positive-class probability, or 0.5.

    The candidate is the threshold of best **accuracy** on ``(y, p)``: the metric the
    decision is judged by (MedMNIST's ACC). It replaces 0.5 only when it earns its place
    out of sample: in stratified ``folds``-fold cross-validation over the predictions,
    thresholds fitted on k-1 folds are compared with 0.5 on the held-out fold, and the mean
    accuracy gain must exceed the fold-to-fold standard deviation of that gain. Otherwise
    (a fit on noise, a gain within the folds' spread, or too few samples of a class to
    split) the usual 0.5 stays. An accuracy-fitted threshold leans toward the selection
    set's majority class; the spread rule keeps such a lean unless the data clearly pay
    for it.
    """
    import numpy as np
    from sklearn.model_selection import StratifiedKFold

    y = np.asarray(y).astype(np.int64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    t = _accuracy_threshold(y, p)
    smallest = int(min(np.sum(y == 1), np.sum(y == 0)))
    if t == 0.5 or smallest < folds:
        return 0.5
    gains = []
    for fit, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(p, y):
        acc = _accuracy(y[held], p[held], np.array([_accuracy_threshold(y[fit], p[fit]), 0.5]))
        gains.append(float(acc[0] - acc[1]))
    if float(np.mean(gains)) <= max(float(np.std(gains, ddof=1)), 1e-12):
        return 0.5
    return round(min(max(t, 1e-6), 1 - 1e-6), 6)


def shift_threshold(p: np.ndarray, threshold: float) -> np.ndarray:
    """Binary scores ``p`` moved so that ``threshold`` falls on 0.5:
    ``expit(logit(p) - logit(threshold))``, in float64.

    The map is monotone and nothing is clipped, so the scores keep their order (and the AUC
    its value) up to float64's resolution; only the decisions at 0.5 move. Until
    2026-12-04 ``p`` was clipped to ``[1e-7, 1 - 1e-7]`` first, which tied every prediction
    more confident than a logit of ±16: a confident single model's test AUC was scored on
    a handful of distinct values.

        >>> import numpy as np
        >>> q = shift_threshold(np.array([1e-12, 1e-9, 0.2, 0.5, 1 - 1e-12]), 0.2)
        >>> bool(np.all(np.diff(q) > 0)), round(float(q[2]), 6)
        (True, 0.5)
    """
    import numpy as np
    from scipy.special import expit
    from scipy.special import logit

    return expit(logit(np.asarray(p, dtype=np.float64)) - math.log(threshold / (1 - threshold)))


@dataclass(frozen=True)
class Member:
    """One model of a predictor.

    Attributes:
        file: Its model file, relative to the predictor folder.
        weight: Its share of the averaged probabilities (the weights sum to 1).
        trial: The trial it comes from.
        fold: Its fold (0 for a holdout model).
        backbone: Its backbone name.
    """

    file: str
    weight: float
    trial: int
    fold: int
    backbone: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"file": self.file, "weight": self.weight, "trial": self.trial,
                "fold": self.fold, "backbone": self.backbone}


class Predictor:
    """The final model: a weighted average of member models, calibrated, with its input spec.

    Build one with :meth:`create` (the search's final step) or :meth:`load`.

    Args:
        folder: The predictor folder (``predictor.json`` and ``members/``).
        spec: The parsed ``predictor.json``.
    """

    def __init__(self, folder: Path, spec: dict[str, Any]) -> None:
        self.folder = folder
        self.spec = spec
        self.members = [Member(**m) for m in spec["members"]]
        self._loaded: dict[str, Any] = {}

    # --------------------------------------------------------------------- properties
    @property
    def task(self) -> str:
        """The task type."""
        return str(self.spec["task"])

    @property
    def class_names(self) -> list[str]:
        """One name per class."""
        return list(self.spec["class_names"])

    @property
    def threshold(self) -> float | None:
        """The binary decision threshold fitted on the selection set (``None``: 0.5)."""
        t = self.spec.get("calibration", {}).get("threshold")
        return None if t is None else float(t)

    @property
    def input_spec(self) -> dict[str, Any]:
        """What images the predictor takes: dims, channels, size, dtype and normalisation
        (:meth:`medauto.preprocessing.Preprocessing.to_dict`'s form)."""
        return dict(self.spec["input"])

    @property
    def preprocessing(self) -> Preprocessing:
        """How raw images become the predictor's input (:mod:`medauto.preprocessing`)."""
        return Preprocessing.from_dict(self.spec["input"])

    def size_bytes(self) -> int:
        """Bytes of the member model files."""
        return sum((self.folder / m.file).stat().st_size for m in self.members)

    # --------------------------------------------------------------------- persistence
    @classmethod
    def create(
        cls,
        folder: str | os.PathLike[str],
        *,
        members: Sequence[tuple[Path, Member]],
        task: str,
        class_names: Sequence[str],
        input_spec: dict[str, Any],
        threshold: float | None,
        meta: dict[str, Any],
    ) -> Predictor:
        """Copies the member files into ``folder/members`` and writes ``predictor.json``.

        Args:
            folder: Output folder (created; an existing predictor there is replaced).
            members: ``(source model file, Member)`` pairs; ``Member.file`` is ignored and
                set to the copy's relative path.
            task: The task type.
            class_names: One name per class.
            input_spec: See :attr:`input_spec`.
            threshold: Binary decision threshold, or ``None``.
            meta: Anything JSON-like to keep (selection scores, candidates, the study).
        """
        out = Path(folder)
        (out / "members").mkdir(parents=True, exist_ok=True)
        placed = []
        for src, m in members:
            rel = f"members/trial{m.trial}-fold{m.fold}.pt"
            dst = out / rel
            if not dst.exists() or not os.path.samefile(src, dst):
                tmp = dst.with_name(dst.name + ".tmp")
                shutil.copyfile(src, tmp)
                os.replace(tmp, dst)
            placed.append(Member(rel, m.weight, m.trial, m.fold, m.backbone))
        spec = {
            "kind": _KIND, "format_version": _VERSION, "task": task,
            "class_names": list(class_names), "input": input_spec,
            "calibration": {"threshold": threshold},
            "members": [m.to_dict() for m in placed], **meta,
        }
        atomic_write_bytes(out / PREDICTOR_FILE,
                           (json.dumps(nan_to_none(spec), indent=2) + "\n").encode())
        return cls(out, spec)

    @classmethod
    def load(cls, folder: str | os.PathLike[str]) -> Predictor:
        """Reads a predictor folder (or its ``predictor.json``).

        Raises:
            PredictorError: no predictor there, or a file it names is missing.
        """
        p = Path(folder)
        path = p if p.name == PREDICTOR_FILE else p / PREDICTOR_FILE
        try:
            spec = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise PredictorError(f"no readable predictor at {str(path)!r}: {e}") from None
        if not isinstance(spec, dict) or spec.get("kind") != _KIND:
            raise PredictorError(f"{str(path)!r} is not a medauto predictor")
        if spec.get("format_version") != _VERSION:
            raise PredictorError(
                f"{str(path)!r} has predictor format {spec.get('format_version')!r}; this "
                f"medauto reads format {_VERSION}"
            )
        pred = cls(path.parent, spec)
        missing = [m.file for m in pred.members if not (pred.folder / m.file).is_file()]
        if missing:
            raise PredictorError(f"{str(path)!r}: member file(s) missing: {missing}")
        try:
            pred.preprocessing  # noqa: B018 - checked once, here
        except PreprocessingError as e:
            raise PredictorError(f"{str(path)!r}: {e}") from None
        return pred

    @classmethod
    def from_model_file(cls, path: str | os.PathLike[str]) -> Predictor:
        """A one-member predictor over a model file (:func:`medauto.model_file.save_model`),
        uncalibrated, with the file's preprocessing: a single model predicts through the
        same code as an ensemble. Nothing is written.

        Raises:
            ModelFileError: the file cannot be loaded, or names no task or classes.
        """
        p = Path(path)
        lm = load_model(p)
        missing = [k for k in ("task", "class_names") if k not in lm.meta]
        if missing:
            raise ModelFileError(f"{str(p)!r} records no {missing}; it cannot predict labels")
        member = Member(p.name, 1.0, int(lm.meta.get("trial", -1)),
                        int(lm.meta.get("fold", 0)), lm.config.model.backbone)
        spec = {"kind": _KIND, "format_version": _VERSION, "task": lm.meta["task"],
                "class_names": list(lm.meta["class_names"]),
                "input": lm.preprocessing.to_dict(), "calibration": {"threshold": None},
                "members": [member.to_dict()], "source": "model file"}
        pred = cls(p.parent, spec)
        pred._loaded[f"{p.name}@cpu"] = lm
        return pred

    # --------------------------------------------------------------------- prediction
    def _check_images(self, images: np.ndarray) -> None:
        spec = self.input_spec
        want = (int(spec["in_chans"]), *[int(s) for s in spec["image_size"]])
        if images.ndim != 2 + int(spec["spatial_dims"]) or tuple(images.shape[1:]) != want:
            raise PredictorError(
                f"images must have shape (N, {', '.join(map(str, want))}) (channels first, "
                f"uint8), got {tuple(images.shape)}"
            )

    def member_scores(
        self, images: np.ndarray, *, device: str = "cpu", batch_size: int = 256
    ) -> list[np.ndarray]:
        """Each member's uncalibrated scores (medauto's form: binary → positive class)."""
        import numpy as np

        from med_core.data import Split
        from medauto.scoring import eval_loader
        from medauto.scoring import predict_scores

        images = np.asarray(images)
        self._check_images(images)
        split = Split(images.astype(np.uint8, copy=False), np.zeros(len(images), np.int64))
        out = []
        for m in self.members:
            key = f"{m.file}@{device}"
            if key not in self._loaded:
                self._loaded[key] = load_model(self.folder / m.file, device=device)
            lm = self._loaded[key]
            loader = eval_loader(split, lm.config, spatial_dims=int(self.spec["input"][
                "spatial_dims"]), batch_size=batch_size, device=device)
            _, s = predict_scores(lm.model, loader, task=self.task, tta=lm.config.tta)
            out.append(s)
        return out

    def scores(self, images: np.ndarray, *, device: str = "cpu",
               batch_size: int = 256) -> np.ndarray:
        """Calibrated scores in medauto's form (binary: ``(N,)`` positive-class probability;
        others: ``(N, C)``), the form MedMNIST's evaluator reads."""
        import numpy as np

        parts = self.member_scores(images, device=device, batch_size=batch_size)
        w = np.array([m.weight for m in self.members], dtype=np.float64)
        avg = np.tensordot(w / w.sum(), np.stack(parts).astype(np.float64), axes=1)
        t = self.threshold
        if self.task == "binary" and t is not None:
            avg = shift_threshold(avg, t)
        return avg

    def probabilities(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`scores` → class probabilities ``(N, C)`` (binary: both columns)."""
        import numpy as np

        return np.stack([1 - scores, scores], axis=1) if self.task == "binary" else scores

    def decide(self, scores: np.ndarray) -> np.ndarray:
        """:meth:`scores` → class indices ``(N,)`` (multi-label: 0/1 ``(N, L)`` at 0.5)."""
        import numpy as np

        if self.task in ("binary", "multi-label"):
            return (scores >= 0.5).astype(np.int64)
        return np.argmax(scores, axis=1)

    def predict_proba(self, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Class probabilities ``(N, C)`` (scikit-learn's convention)."""
        return self.probabilities(self.scores(images, **kwargs))

    def predict(self, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Class indices ``(N,)`` (multi-label: 0/1 ``(N, L)`` at 0.5)."""
        return self.decide(self.scores(images, **kwargs))

    def evaluate(self, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> dict[str, float]:
        """MedMNIST metrics of the predictor on ``(images, labels)``."""
        return split_metrics(self.task, labels, self.scores(images, **kwargs))

    def __repr__(self) -> str:
        return (f"Predictor({str(self.folder)!r}, task={self.task!r}, "
                f"members={len(self.members)}, threshold={self.threshold})")
