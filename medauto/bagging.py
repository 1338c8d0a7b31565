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
and greedy selection decides their weight on the validation split. Time they leave over
goes back to the sampler.

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
from medauto.keys import SEED_ATTR
from medauto.logging import get_logger
from medauto.results import best_trial

if TYPE_CHECKING:
    from medauto.budget import BudgetPlan
    from medauto.fingerprint import Selection

TrialEnd = Callable[[optuna.Study, FrozenTrial], None]

__all__ = ["BAG_SHARE", "MAX_SEEDS", "SeedBagger", "with_seed_bagging"]

_logger = get_logger(__name__)

#: Share of a budgeted holdout search's time kept for seeds of its best configuration.
BAG_SHARE = 0.3
#: The most repeats of the best configuration.
MAX_SEEDS = 4


class SeedBagger:
    """Enqueues new seeds of the best trial once, near the end of a budgeted search.

    Args:
        deadline: Clock time (``clock()``) at which the search starts no more trials.
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
        base = int(best.user_attrs.get(SEED_ATTR, 0))
        for k in range(1, n + 1):
            study.enqueue_trial(dict(best.params), skip_if_exists=False,
                                user_attrs={SEED_ATTR: base + k, BAGGED_FROM_ATTR: best.number})
            self.enqueued.append(base + k)
        if n:
            _logger.info("seed bagging: %d more seed(s) of trial %d (%s, %.0f s each) in the "
                         "last %.0f s", n, best.number, best.user_attrs.get(BACKBONE_ATTR, "?"),
                         took, self.deadline - now)


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
