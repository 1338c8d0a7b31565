"""Parameter importances of a study: the numbers the report and optuna-dashboard both show.

optuna-dashboard computes its importances itself, with Optuna's PED-ANOVA evaluator
(``PedAnovaImportanceEvaluator()``, defaults) over the completed trials, on the objective
turned into a loss (negated for ``maximize``), and offers no setting to change that. So
the report computes them exactly that way too, through :func:`param_importances`, the one
place medauto computes importances: a reader who compares the report with the dashboard
sees the same ranking and the same values.

Where the dashboard would show something meaningless, the report shows nothing and says
why: fewer than two completed trials, or no parameter that varies (the dashboard then
draws equal bars).

Example:
    >>> import optuna
    >>> param_importances(optuna.create_study())
    ({}, 'Parameter importances need at least 2 completed trials; this study has 0.')
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import optuna
from optuna.importance import PedAnovaImportanceEvaluator
from optuna.importance import get_param_importances
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial
from optuna.trial import TrialState

from medauto.logging import get_logger

__all__ = ["EVALUATOR_NAME", "param_importances"]

_logger = get_logger(__name__)

#: What the importance figures are labelled with.
EVALUATOR_NAME = "PED-ANOVA"


def _as_loss(study: optuna.Study) -> Callable[[FrozenTrial], float]:
    """The objective as PED-ANOVA wants it (lower is better), as the dashboard turns it."""
    if study.direction == StudyDirection.MAXIMIZE:
        return lambda t: -float(t.value)  # type: ignore[arg-type]
    return lambda t: float(t.value)  # type: ignore[arg-type]


def param_importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Parameter importances over the completed trials (the dashboard's), and a note.

    PED-ANOVA also rates conditional parameters (e.g. ``momentum`` only for SGD) over the
    trials that have them; one it cannot rate is named in the note. With fewer than two
    completed trials, or no parameter that varies, the dict is empty and the note says
    why; this never raises.
    """
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 2:
        return {}, (
            f"Parameter importances need at least 2 completed trials; this study has "
            f"{len(complete)}."
        )
    names = [set(t.params) for t in complete]
    common = names[0].intersection(*names[1:])
    if not any(len({repr(t.params[p]) for t in complete}) > 1 for p in common):
        return {}, ("No parameter varies across the completed trials, so there is nothing "
                    "to attribute.")
    try:
        with warnings.catch_warnings():  # PED-ANOVA warns whenever a target is passed
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes")
            imp = get_param_importances(study, target=_as_loss(study),
                                        evaluator=PedAnovaImportanceEvaluator())
    except (RuntimeError, ValueError, ZeroDivisionError) as e:
        _logger.info("parameter importances unavailable: %s", e)
        return {}, f"Parameter importances are not available: {e}."
    left_out = sorted(set().union(*names) - set(imp))
    note = ("Parameters not rated (too few completed trials have them): "
            + ", ".join(left_out) + ".") if left_out else ""
    return {k: float(v) for k, v in imp.items()}, note
