"""Reading results back from a study: best config, state counts, per-trial summaries."""

from __future__ import annotations

from collections import Counter
from typing import Any

import optuna
from optuna.trial import TrialState

from med_core.config import TrainConfig
from medauto.exceptions import MedautoError

__all__ = ["best_config", "status_summary"]


def best_config(study: optuna.Study) -> TrainConfig:
    """The TrainConfig of the study's best COMPLETE trial (from its ``config`` attribute).

    Raises:
        MedautoError: no trial has completed yet.
    """
    try:
        best = study.best_trial
    except ValueError:
        raise MedautoError(f"study {study.study_name!r} has no completed trial yet") from None
    return TrainConfig.from_dict(best.user_attrs["config"])


def status_summary(study: optuna.Study) -> dict[str, Any]:
    """Counts by state, best value/trial, the running trials with their workers, reasons."""
    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    reasons = Counter(
        t.user_attrs.get("reason", "worker lost (heartbeat stale)")
        for t in trials
        if t.state == TrialState.FAIL
    )
    try:
        best: dict[str, Any] | None = {
            "number": study.best_trial.number,
            "value": study.best_value,
            "backbone": study.best_trial.user_attrs.get("backbone"),
        }
    except ValueError:
        best = None
    target = study.user_attrs.get("medauto:settings", {}).get("n_trials")
    return {
        "study": study.study_name,
        "target": target,
        "finished": counts["COMPLETE"] + counts["PRUNED"],
        "counts": {s.name: counts[s.name] for s in TrialState},
        "best": best,
        "running": [
            {
                "number": t.number,
                "worker": t.user_attrs.get("worker"),
                "device": t.user_attrs.get("device"),
                "backbone": t.user_attrs.get("backbone"),
                "epochs_reported": len(t.intermediate_values),
            }
            for t in trials
            if t.state == TrialState.RUNNING
        ],
        "fail_reasons": dict(reasons),
    }
