"""Reading results back from a study: the one trial-selection rule, state counts, reasons.

A study may hold trials that medauto did not create: from a plain Optuna ``study.tell``,
``study.add_trial``, the ``optuna`` CLI or optuna-dashboard. They are first-class members
of the study (counted, shown, never altered), but only :func:`is_selectable` trials are
chosen as results, by :func:`ranked_trials` — the one rule that ``best``, ``search`` /
``worker`` results, ``retrain``'s trial selection and the report all use.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import optuna
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from med_core.config import TrainConfig
from medauto.exceptions import MedautoError
from medauto.keys import BACKBONE_ATTR
from medauto.keys import CONFIG_ATTR
from medauto.keys import DEVICE_ATTR
from medauto.keys import REASON_ATTR
from medauto.keys import WORKER_ATTR
from medauto.study import load_settings_dict

__all__ = [
    "best_config",
    "best_trial",
    "is_selectable",
    "ranked_trials",
    "status_summary",
]


def is_selectable(trial: FrozenTrial) -> bool:
    """Whether ``trial`` may be chosen as a result: COMPLETE, a finite value, and a medauto
    ``config`` user attribute (a foreign trial has no config to retrain or report)."""
    return (
        trial.state == TrialState.COMPLETE
        and isinstance(trial.user_attrs.get(CONFIG_ATTR), dict)
        and trial.value is not None
        and math.isfinite(trial.value)
    )


def ranked_trials(study: optuna.Study) -> list[FrozenTrial]:
    """Every :func:`is_selectable` trial, best first; ties keep the earlier trial first."""
    done = [t for t in study.get_trials(deepcopy=False) if is_selectable(t)]
    sign = -1.0 if study.direction == StudyDirection.MAXIMIZE else 1.0
    done.sort(key=lambda t: (sign * float(t.value), t.number))  # type: ignore[arg-type]
    return done


def best_trial(study: optuna.Study) -> FrozenTrial:
    """The best selectable trial (:func:`ranked_trials`); foreign trials are passed over.

    Raises:
        MedautoError: no medauto trial has completed yet (the message counts the foreign
            COMPLETE trials it passed over).
    """
    ranked = ranked_trials(study)
    if ranked:
        return ranked[0]
    foreign = sum(
        t.state == TrialState.COMPLETE for t in study.get_trials(deepcopy=False)
    )
    extra = (
        f" ({foreign} completed trial(s) from other Optuna clients have no medauto config)"
        if foreign else ""
    )
    raise MedautoError(f"study {study.study_name!r} has no completed medauto trial yet{extra}")


def best_config(study: optuna.Study) -> TrainConfig:
    """The TrainConfig of :func:`best_trial` (from its ``config`` attribute).

    Raises:
        MedautoError: no medauto trial has completed yet.
    """
    return TrainConfig.from_dict(best_trial(study).user_attrs[CONFIG_ATTR])


def status_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, the best trial (:func:`best_trial`), running trials, reasons.

    ``fail_reasons`` counts FAIL trials by their ``reason``; ``pruned_reasons`` counts
    PRUNED trials whose reason is not plain pruning (``nan_loss``, ``oom``); ``foreign``
    counts trials that no medauto worker ran (other Optuna clients).
    """
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    reasons = Counter(
        t.user_attrs.get(REASON_ATTR, "no reason recorded")
        for t in trials
        if t.state == TrialState.FAIL
    )
    pruned = Counter(
        str(t.user_attrs[REASON_ATTR])
        for t in trials
        if t.state == TrialState.PRUNED and t.user_attrs.get(REASON_ATTR, "pruned") != "pruned"
    )
    ranked = ranked_trials(study)
    best: dict[str, Any] | None = (
        {
            "number": ranked[0].number,
            "value": ranked[0].value,
            "backbone": ranked[0].user_attrs.get(BACKBONE_ATTR),
        }
        if ranked else None
    )
    target = load_settings_dict(study).get("n_trials")
    return {
        "study": study.study_name,
        "target": target,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "counts": {s.name: counts[s.name] for s in TrialState},
        "best": best,
        "running": [
            {
                "number": t.number,
                "worker": t.user_attrs.get(WORKER_ATTR),
                "device": t.user_attrs.get(DEVICE_ATTR),
                "backbone": t.user_attrs.get(BACKBONE_ATTR),
                "epochs_reported": len(t.intermediate_values),
            }
            for t in trials
            if t.state == TrialState.RUNNING
        ],
        "fail_reasons": dict(reasons),
        "pruned_reasons": dict(pruned),
        "foreign": sum(
            CONFIG_ATTR not in t.user_attrs and WORKER_ATTR not in t.user_attrs for t in trials
        ),
    }
