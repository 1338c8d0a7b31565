"""Seed bagging: a budgeted holdout search spends its last part on new seeds of its best.

A search scored on the validation split trains one model per configuration. The final
ensemble (:mod:`medauto.final`) can only average what the trials left, and a small
search leaves few strong members: on PneumoniaMNIST the fixed recipe's 5-seed ensemble
(test AUC 0.987) beat every single recipe model (0.982 ± 0.002) and an 8-minute search
whose ensemble was one recipe model plus weak ones (0.983). Cross-validated selection
already bags (each trial leaves k fold models), so this applies to holdout only.

:class:`SeedBagger` is the worker's ``on_trial_end`` hook. Once one more trial as long
as the best would end past ``1 - share`` of the search's time, it enqueues the best
configuration again with new seeds (the ``seed`` user attribute), as many as the time
left can train at the best trial's measured duration, at most :data:`MAX_SEEDS`. The
repeats are ordinary trials: Optuna serves enqueued trials first, they are not pruned
(``bagged_from``), their models and validation predictions become ensemble candidates,
and greedy selection decides their weight on the validation split. Portfolio entries
still waiting then are served after the repeats: Optuna serves waiting trials oldest
first, so each is taken, recorded as FAIL with reason ``deferred``, and enqueued again
behind them (on PneumoniaMNIST a waiting 150 s portfolio entry took the time the repeats
were given). Time the repeats leave over goes to those entries, then to the sampler.

Example:
    >>> SeedBagger(deadline=100.0, share_s=30.0).opens_at
    70.0
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import optuna
from optuna.trial import FrozenTrial

from medauto.exceptions import MedautoError
from medauto.keys import BACKBONE_ATTR
from medauto.keys import BAGGED_FROM_ATTR
from medauto.keys import PORTFOLIO_ATTR
from medauto.keys import REASON_ATTR
from medauto.keys import SEED_ATTR
from medauto.logging import get_logger
from medauto.results import best_trial
from medauto.space import SearchSpace
from medauto.study import load_settings
from medauto.worker import ask

if TYPE_CHECKING:
    from medauto.budget import BudgetPlan
    from medauto.fingerprint import Selection

TrialEnd = Callable[[optuna.Study, FrozenTrial], None]

__all__ = ["BAG_SHARE", "DEFERRED", "MAX_SEEDS", "SeedBagger", "with_seed_bagging"]

_logger = get_logger(__name__)

#: Share of a budgeted holdout search's time kept for seeds of its best configuration.
BAG_SHARE = 0.3
#: The most repeats of the best configuration.
MAX_SEEDS = 4
#: The ``reason`` of a waiting portfolio trial moved behind the repeats.
DEFERRED = "deferred"


class SeedBagger:
    """Enqueues new seeds of the best trial once, near the end of a budgeted search.

    Args:
        deadline: Clock time (``clock()``) at which the search ends.
        share_s: Seconds before ``deadline`` from which repeats are enqueued.
        max_seeds: The most repeats.
        clock: The clock of ``deadline`` (default :func:`time.monotonic`).
    """

    def __init__(self, *, deadline: float, share_s: float, max_seeds: int = MAX_SEEDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline = deadline
        self.opens_at = deadline - share_s
        self.max_seeds = max_seeds
        self.clock = clock
        self.enqueued: list[int] = []
        self._done = False

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        """The ``on_trial_end`` hook: enqueues the repeats the first time it is due."""
        now = self.clock()
        if self._done:
            return
        try:
            best = best_trial(study)
        except MedautoError:
            return  # nothing completed yet
        if best.datetime_start is None or best.datetime_complete is None:
            return
        took = (best.datetime_complete - best.datetime_start).total_seconds()
        if now + took < self.opens_at:  # another trial still ends before the bagging share
            return
        self._done = True
        n = min(self.max_seeds, int((self.deadline - now) // max(took, 1e-9)))
        if not n:
            return
        deferred = _take_waiting_portfolio(study)
        base = int(best.user_attrs.get(SEED_ATTR, 0))
        for k in range(1, n + 1):
            study.enqueue_trial(dict(best.params), skip_if_exists=False,
                                user_attrs={SEED_ATTR: base + k, BAGGED_FROM_ATTR: best.number})
            self.enqueued.append(base + k)
        for name, params in deferred:
            study.enqueue_trial(params, skip_if_exists=False, user_attrs={PORTFOLIO_ATTR: name})
        _logger.info("seed bagging: %d more seed(s) of trial %d (%s, %.0f s each) in the last "
                     "%.0f s%s", n, best.number, best.user_attrs.get(BACKBONE_ATTR, "?"), took,
                     self.deadline - now, f"; then the portfolio's {[d[0] for d in deferred]}"
                     if deferred else "")


def _take_waiting_portfolio(study: optuna.Study) -> list[tuple[str, dict[str, object]]]:
    """Takes the waiting portfolio trials out of the queue (each recorded FAIL, reason
    :data:`DEFERRED`) and returns their ``(name, params)``, oldest first. Only when every
    waiting trial is a portfolio entry: any other waiting trial (a retry) keeps its place.
    """
    from optuna.trial import TrialState

    waiting = study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
    if not waiting or any(PORTFOLIO_ATTR not in t.user_attrs for t in waiting):
        return []
    entries = {e.name: dict(e.params)
               for e in SearchSpace.from_dict(load_settings(study).space).portfolio}
    taken = []
    for _ in waiting:
        trial = ask(study)  # Optuna serves the oldest waiting trial
        name = trial.user_attrs.get(PORTFOLIO_ATTR)
        trial.set_user_attr(REASON_ATTR, DEFERRED)
        study.tell(trial, state=TrialState.FAIL)
        if name in entries:  # else another worker took the last one: this one was sampled
            taken.append((name, entries[name]))
    return taken


def with_seed_bagging(
    end_trial: TrialEnd, *, start: float | None, plan: BudgetPlan | None,
    selection: Selection | None, final_model: bool,
) -> TrialEnd:
    """``end_trial``, followed by a :class:`SeedBagger` when the search is budgeted
    (``plan``, started at monotonic ``start``), scored on the validation split, and ends
    with a final model; otherwise ``end_trial`` itself."""
    if plan is None or start is None or not final_model or selection is None \
            or selection.mode != "holdout":
        return end_trial
    bagger = SeedBagger(deadline=start + plan.search_s, share_s=BAG_SHARE * plan.search_s)

    def hook(study: optuna.Study, trial: FrozenTrial) -> None:
        end_trial(study, trial)
        bagger(study, trial)

    return hook
