"""Wall-clock budgets: ``"15m"`` → seconds → a plan for search and final retrain.

A budget covers one whole run: the search **and** the final retrain (several seeds of the
best trial, optionally of the top-k). :func:`plan_budget` splits it:

* ``slack_s`` is kept back for what neither phase can bound exactly (the last epoch of a
  stopped model, writing results): 2 % of the budget, at least 5 s, at most 60 s;
* ``retrain_s`` = ``retrain_fraction`` of the rest (default 25 %) is reserved for the final
  retrain of ``seeds × ensemble`` models;
* ``search_s`` is what is left; a running trial is stopped when it runs out, and no trial
  starts in its last ``MIN_START_SHARE`` of a trial cap (``last_start_s``): a trial with
  less time than that trains a few epochs of its schedule, a model no better than chance
  that costs the final model its time and the ensemble a useless member.

A trial is only useful if its configuration can be retrained ``seeds × ensemble`` times
within ``retrain_s``, so a trial longer than ``trial_cap_s = retrain_s / (seeds ×
ensemble)`` is stopped once it has used that time and completes with what it trained
(:class:`BudgetCallback`; the ``budget_stop`` user attribute says why); a trial still
running when the search time is spent is pruned.
Retrain itself runs under a deadline too (:class:`DeadlineCallback`): a model still training
when its share of the retrain time is spent keeps its best-validation weights so far.
Together, a budgeted run ends within ``budget + slack`` plus one epoch of the slowest
model.

Example:
    >>> parse_budget("1h30m"), parse_budget("90s"), parse_budget(120)
    (5400.0, 90.0, 120.0)
    >>> plan = plan_budget("15m")
    >>> plan.total_s, plan.search_s + plan.retrain_s + plan.slack_s == plan.total_s
    (900.0, True)
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass
from typing import Any

from med_core.training.callbacks import Callback
from medauto.exceptions import MedautoError
from medauto.keys import BUDGET_STOP_ATTR

__all__ = [
    "BudgetCallback",
    "BudgetError",
    "BudgetPlan",
    "DeadlineCallback",
    "format_seconds",
    "parse_budget",
    "plan_budget",
]

_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0}
_FORM = re.compile(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
#: Budgets below this cannot train anything useful and are refused.
MIN_BUDGET_S = 10.0
#: No trial starts when less than this share of a trial cap is left to the search. Measured
#: on BreastMNIST (4-fold CV, fast space): a schedule cut to a quarter of its epochs scored an
#: out-of-fold AUC of 0.52-0.58, a model near chance (docs/search_quality.md).
MIN_START_SHARE = 0.25


class BudgetError(MedautoError, ValueError):
    """A budget string or number that cannot be used."""


def parse_budget(value: str | float | int) -> float:
    """Seconds of a budget: ``90s``, ``15m``, ``1h``, ``1h30m``, ``2.5m`` or a plain number.

    Units must appear in the order h, m, s, each at most once; a bare number is seconds.

    Raises:
        BudgetError: an empty, negative, malformed or too small (< 10 s) budget.
    """
    if isinstance(value, bool):
        raise BudgetError(f"budget must be a duration such as 90s, 15m or 1h30m, got {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    else:
        text = str(value).strip().lower().replace(" ", "")
        try:
            seconds = float(text)
        except ValueError:
            match = _FORM.fullmatch(text)
            if not text or match is None or not any(match.groups()):
                raise BudgetError(
                    f"budget must be a duration such as 90s, 15m, 1h or 1h30m (units h, m, s "
                    f"in that order), got {value!r}"
                ) from None
            seconds = sum(
                float(g) * _UNITS[u] for g, u in zip(match.groups(), "hms", strict=True) if g
            )
    if not math.isfinite(seconds) or seconds < MIN_BUDGET_S:
        raise BudgetError(f"budget must be at least {MIN_BUDGET_S:g} s, got {value!r}")
    return seconds


def format_seconds(seconds: float) -> str:
    """``5400`` → ``"1h30m"``, ``95`` → ``"1m35s"``, ``42.4`` → ``"42s"``."""
    s = int(round(seconds))
    h, rest = divmod(s, 3600)
    m, s = divmod(rest, 60)
    parts = [f"{h}h" if h else "", f"{m}m" if m else "", f"{s}s" if s or not (h or m) else ""]
    return "".join(parts)


@dataclass(frozen=True)
class BudgetPlan:
    """How a wall-clock budget is spent (all in seconds).

    Attributes:
        total_s: The whole budget.
        search_s: Search time: a running trial is stopped at it; no trial starts after
            ``last_start_s``.
        retrain_s: Reserved for the final retrain.
        slack_s: Held back for the last epoch of a stopped model and writing results.
        seeds: Retrain seeds the plan reserves time for.
        ensemble: Top-k trials retrained per seed.
        trial_cap_s: Longest a trial may train (``retrain_s / (seeds * ensemble)``), so the
            winners can be retrained in ``retrain_s``.
    """

    total_s: float
    search_s: float
    retrain_s: float
    slack_s: float
    seeds: int
    ensemble: int
    trial_cap_s: float

    @property
    def last_start_s(self) -> float:
        """Seconds into the search after which no trial starts: the search time less
        :data:`MIN_START_SHARE` of a trial cap."""
        return max(0.0, self.search_s - MIN_START_SHARE * self.trial_cap_s)

    def budget_for_search(self, search_s: float) -> float:
        """The budget, split like this one, whose search time is ``search_s`` seconds.

        Example:
            >>> plan = plan_budget("10m")
            >>> round(plan_budget(plan.budget_for_search(2 * plan.search_s)).search_s)
            882
        """
        usable = search_s * (self.total_s - self.slack_s) / max(self.search_s, 1e-9)
        total = usable + self.slack_s
        for _ in range(8):  # the slack grows with the budget: a fixed point, reached fast
            total = usable + _slack(total)
        return total

    def describe(self, *, final_model: bool) -> str:
        """One log line: how the budget is split, and how long a trial may train."""
        after = ("final model" if final_model
                 else f"retrain ({self.seeds} seed(s) x {self.ensemble})")
        return (f"budget {format_seconds(self.total_s)}: search {self.search_s:.0f} s, {after} "
                f"{self.retrain_s:.0f} s, slack {self.slack_s:.0f} s; a trial may train "
                f"{self.trial_cap_s:.0f} s, and none starts in the search's last "
                f"{self.search_s - self.last_start_s:.0f} s")

    def to_dict(self) -> dict[str, float]:
        """The plan as a JSON-ready dict."""
        return {
            "total_s": self.total_s, "search_s": self.search_s, "retrain_s": self.retrain_s,
            "slack_s": self.slack_s, "seeds": self.seeds, "ensemble": self.ensemble,
            "trial_cap_s": self.trial_cap_s,
        }


def plan_budget(
    budget: str | float | int,
    *,
    seeds: int = 3,
    ensemble: int = 1,
    retrain_fraction: float = 0.25,
    trial_share: float | None = None,
) -> BudgetPlan:
    """Splits ``budget`` between search and the final retrain of ``seeds × ensemble`` models.

    Args:
        budget: The whole budget (see :func:`parse_budget`).
        seeds: Retrain seeds to reserve time for.
        ensemble: Top-k trials retrained per seed.
        retrain_fraction: Share of the budget (after slack) kept after the search.
        trial_share: If given, a trial may train for this share of the search time instead
            of ``retrain_s / (seeds × ensemble)`` (a final model built from the trials'
            own models needs no retrain, so the retrain share no longer bounds a trial).

    Raises:
        BudgetError: a bad budget, ``seeds`` or ``ensemble`` < 1, or ``retrain_fraction``
            or ``trial_share`` outside (0, 1).
    """
    total = parse_budget(budget)
    for name, n in (("seeds", seeds), ("ensemble", ensemble)):
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise BudgetError(f"{name} must be an integer >= 1, got {n!r}")
    if not 0.0 < retrain_fraction < 1.0:
        raise BudgetError(f"retrain_fraction must be in (0, 1), got {retrain_fraction!r}")
    if trial_share is not None and not 0.0 < trial_share <= 1.0:
        raise BudgetError(f"trial_share must be in (0, 1], got {trial_share!r}")
    slack = _slack(total)
    usable = total - slack
    retrain = retrain_fraction * usable
    search = usable - retrain
    cap = retrain / (seeds * ensemble) if trial_share is None else trial_share * search
    return BudgetPlan(
        total_s=total, search_s=search, retrain_s=retrain, slack_s=slack,
        seeds=seeds, ensemble=ensemble, trial_cap_s=cap,
    )


def _slack(total_s: float) -> float:
    """Seconds of a ``total_s`` budget held back as slack: 2 %, within 5 s to 60 s."""
    return min(60.0, max(5.0, 0.02 * total_s))


class DeadlineCallback(Callback):
    """Asks the trainer to stop when the next epoch would end after ``deadline``.

    The next epoch is assumed to take as long as the last one, so training ends at the
    deadline within the error of that estimate, not one whole epoch after it.

    Args:
        deadline: A ``time.monotonic()`` value.
        reason: The stop reason the trainer records (``history.stop_reason`` is
            ``"callback:<reason>"``).
    """

    def __init__(self, deadline: float, *, reason: str = "deadline") -> None:
        self.deadline = deadline
        self.reason = reason
        self.stopped_at_epoch: int | None = None
        self._epoch_start = 0.0

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if now + (now - self._epoch_start) >= self.deadline:
            self.stopped_at_epoch = epoch + 1
            trainer.request_stop(self.reason)


class BudgetCallback(Callback):
    """Stops a search trial that cannot finish within the budget.

    After each epoch the trial stops when the next epoch (as long as the last one; after
    the first epoch: none) would end after the search deadline, or when its projected full
    training time (the first epoch plus the mean time of the later epochs times the epochs
    left) exceeds ``trial_cap_s``. The first epoch carries one-off warm-up (lazy
    initialisation, kernel selection), so after it alone the trial stops only when it
    already took more than twice the cap.

    * Stopped by the **search deadline**: reason ``"pruned"`` (the objective raises
      ``optuna.TrialPruned``; retrain never selects it).
    * Stopped by the **trial cap**: reason ``"budget"``: the trial completes with the best
      value of the epochs it trained. That is what the budget can afford for one model:
      the retrain gives each model the same time (its own deadline keeps the
      best-validation weights), so such a trial is a fair candidate. Pruning it instead
      left searches whose every trial is longer than the cap (3D volumes, large models)
      with no completed trial at all.

    Either way the trial's ``budget_stop`` user attribute says why and after which epoch.

    Args:
        trial: The Optuna trial (``None`` on non-zero DDP ranks: nothing is done there).
        search_deadline: ``time.monotonic()`` value at which the search ends.
        trial_cap_s: Longest a trial may train, in seconds.
    """

    def __init__(self, trial: Any, *, search_deadline: float, trial_cap_s: float) -> None:
        self.trial = trial
        self.search_deadline = search_deadline
        self.trial_cap_s = trial_cap_s
        self._start = 0.0
        self._first_epoch_end = 0.0
        self._epoch_start = 0.0

    def on_fit_start(self, trainer: Any) -> None:
        self._start = time.monotonic()

    def on_epoch_start(self, trainer: Any, epoch: int) -> None:
        self._epoch_start = time.monotonic()

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        if self.trial is None:
            return
        now = time.monotonic()
        if epoch == 0:
            self._first_epoch_end = now
        if trainer.stop_requested is not None:
            return  # an earlier callback stops this fit already (pruned, or re-timed)
        elapsed = now - self._start
        why, reason = None, "budget"
        # after the first (warm-up) epoch, its length says little about the next one
        next_epoch = now - self._epoch_start if epoch >= 1 else 0.0
        if now + next_epoch >= self.search_deadline:
            why, reason = "search budget spent", "pruned"
        elif epoch == 0 and elapsed > 2 * self.trial_cap_s:
            why = f"first epoch {elapsed:.0f} s > 2 x cap {self.trial_cap_s:.0f} s"
        elif epoch >= 1:
            per_epoch = (now - self._first_epoch_end) / epoch
            projected = (self._first_epoch_end - self._start) + per_epoch * (
                trainer.cfg.epochs - 1
            )
            # stop before the epoch that would cross the cap, not after
            if elapsed + per_epoch > self.trial_cap_s and projected > self.trial_cap_s:
                why = f"projected trial time {projected:.0f} s > cap {self.trial_cap_s:.0f} s"
        if why is not None and epoch + 1 < trainer.cfg.epochs:
            self.trial.set_user_attr(BUDGET_STOP_ATTR, f"{why} (after epoch {epoch + 1})")
            trainer.request_stop(reason)
