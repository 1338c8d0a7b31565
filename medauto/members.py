"""Ensemble candidates: what each finished trial leaves behind for the final model.

Every trial that completes writes, under ``<run_dir>/members/<study>/trial_<n>/``:

* ``selection.npz``: ``y`` and ``score``, the labels and the trial's predictions on the
  selection set: the validation split (holdout selection), or every train+val sample
  predicted by the fold model that did not train on it (cross-validated selection, the
  *out-of-fold* predictions); ``kind`` says which;
* ``model_<j>.pt``: the model file (:mod:`medauto.model_file`) of fold ``j`` (holdout:
  ``model_0.pt``), with the weights of its best validation epoch.

The trial's ``members`` user attribute names that folder (relative to the run folder), so
any process that shares the run folder finds them. :func:`load_candidates` reads them back
for ensemble selection (:mod:`medauto.ensemble`). Nothing here reads the test split.

Example:
    >>> member_dir("runs", "breastmnist-default", 7).as_posix()
    'runs/members/breastmnist-default/trial_7'
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from medauto.keys import BACKBONE_ATTR
from medauto.keys import MEMBERS_ATTR
from medauto.logging import get_logger
from medauto.model_file import atomic_write_bytes

if TYPE_CHECKING:
    import numpy as np
    import optuna

__all__ = [
    "Candidate",
    "consistent",
    "load_candidates",
    "member_dir",
    "model_path",
    "save_selection_scores",
]

_logger = get_logger(__name__)

_SCORES = "selection.npz"


def member_dir(run_dir: str | Path, study_name: str, trial_number: int) -> Path:
    """Where trial ``trial_number`` of ``study_name`` keeps its candidate models."""
    return Path(run_dir) / "members" / study_name / f"trial_{trial_number}"


def model_path(folder: Path, index: int) -> Path:
    """The model file of fold ``index`` (holdout: 0) in a member folder."""
    return folder / f"model_{index}.pt"


def save_selection_scores(folder: Path, *, y: np.ndarray, score: np.ndarray, kind: str) -> None:
    """Writes the trial's selection-set labels and scores (atomically)."""
    import numpy as np

    buf = io.BytesIO()
    np.savez(buf, y=np.asarray(y), score=np.asarray(score, dtype=np.float32), kind=kind)
    atomic_write_bytes(folder / _SCORES, buf.getvalue())


@dataclass(frozen=True)
class Candidate:
    """A finished trial that can join the final ensemble.

    Attributes:
        trial: Its trial number.
        value: Its objective value.
        backbone: Its backbone (for logs and the report).
        models: Its model files (one per fold; one for holdout).
        y: Labels of the selection set.
        score: Its predictions on the selection set.
        kind: ``"val"`` or ``"oof"``.
    """

    trial: int
    value: float
    backbone: str
    models: tuple[Path, ...]
    y: np.ndarray
    score: np.ndarray
    kind: str


def load_candidates(
    study: optuna.Study, run_dir: str | Path, *, limit: int | None = None
) -> list[Candidate]:
    """The COMPLETE trials of ``study`` with readable member files, best value first.

    Trials without members (foreign trials, trials from before this feature, trials whose
    files are gone) are skipped with a debug message. ``limit`` keeps the best ``limit``.
    """
    import numpy as np
    from optuna.study import StudyDirection
    from optuna.trial import TrialState

    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    trials = [
        t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if isinstance(t.user_attrs.get(MEMBERS_ATTR), str)
        and t.value is not None and math.isfinite(t.value)
    ]
    trials.sort(key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    out: list[Candidate] = []
    for t in trials:
        folder = Path(run_dir) / str(t.user_attrs[MEMBERS_ATTR])
        models = tuple(sorted(folder.glob("model_*.pt"), key=lambda p: int(p.stem[6:])))
        try:
            with np.load(folder / _SCORES) as z:
                y, score, kind = z["y"], z["score"], str(z["kind"])
        except (OSError, KeyError, ValueError) as e:
            _logger.debug("trial %d: no readable member scores (%s)", t.number, e)
            continue
        if not models:
            _logger.debug("trial %d: no member model files in %s", t.number, folder)
            continue
        out.append(Candidate(
            trial=t.number, value=float(t.value),  # type: ignore[arg-type]
            backbone=str(t.user_attrs.get(BACKBONE_ATTR, "?")), models=models, y=y,
            score=score, kind=kind,
        ))
        if limit is not None and len(out) >= limit:
            break
    return out


def consistent(candidates: Sequence[Candidate]) -> list[Candidate]:
    """The candidates whose selection labels equal the first one's (same split, same folds)."""
    import numpy as np

    if not candidates:
        return []
    ref = candidates[0]
    keep = [c for c in candidates if c.kind == ref.kind and np.array_equal(c.y, ref.y)]
    if len(keep) < len(candidates):
        _logger.warning("%d candidate(s) predicted another selection set; left out",
                        len(candidates) - len(keep))
    return keep
