"""DDP trials: each trial trains on a group of N processes (one per GPU; gloo on CPU).

Rank 0 is an ordinary worker: it owns the Optuna study and trial (ask, heartbeat, report,
prune, tell). Before training a trial it broadcasts the trial number and the suggested
TrainConfig, so every rank trains exactly the same configuration; followers hold a
:class:`FollowerTrial` that records nothing and never prunes by itself. The trainer
broadcasts rank 0's stop request (pruning) every epoch, so all ranks stop at the same
epoch. When rank 0's worker loop ends it broadcasts ``None`` and the followers return.

If any rank crashes, the group breaks and the launcher ends the others; the trial's
heartbeat stops and another worker fails and retries it.
"""

from __future__ import annotations

from dataclasses import dataclass
from dataclasses import field
from typing import TYPE_CHECKING
from typing import Any

import optuna

from medauto.logging import get_logger

if TYPE_CHECKING:
    from med_core.training import DistContext
    from medauto.objective import Objective

__all__ = ["FollowerTrial", "RankLog", "run_ddp_worker", "launch_ddp_worker"]

_logger = get_logger(__name__)


@dataclass
class RankLog:
    """What one rank trained: per trial, the config it used and where it stopped."""

    rank: int
    trials: list[dict[str, Any]] = field(default_factory=list)


class FollowerTrial:
    """The trial-like object of non-zero ranks: the number, and no-op recording."""

    def __init__(self, number: int) -> None:
        self.number = number

    @property
    def user_attrs(self) -> dict[str, Any]:
        """None on followers: rank 0 reads the trial's attributes (its config is broadcast)."""
        return {}

    def set_user_attr(self, key: str, value: Any) -> None:
        """Only rank 0 records attributes."""

    def report(self, value: float, step: int) -> None:
        """Only rank 0 reports to the study."""

    def should_prune(self) -> bool:
        """Followers never decide; they stop when the trainer broadcasts rank 0's decision."""
        return False


class _BroadcastingObjective:
    """Rank 0's objective: suggest, broadcast the config, then train as part of the group."""

    def __init__(self, objective: Objective, dist: DistContext, log: RankLog) -> None:
        self.objective = objective
        self.dist = dist
        self.log = log

    def __call__(self, trial: optuna.Trial) -> float:
        cfg = self.objective.suggest(trial)
        self.dist.broadcast_object((trial.number, cfg.to_dict()), src=0)
        return _train_logged(self.objective, trial, cfg, self.dist, self.log)


def _train_logged(
    objective: Objective, trial: Any, cfg: Any, dist: DistContext, log: RankLog
) -> float:
    entry: dict[str, Any] = {"number": trial.number, "config": cfg.flatten(), "pruned": False}
    log.trials.append(entry)
    try:
        value = objective.train(trial, cfg, dist=dist)
    except optuna.TrialPruned:
        entry["pruned"] = True
        raise
    finally:
        entry["epochs_run"] = objective.last_epochs_run
    entry["value"] = value
    return value


def run_ddp_worker(
    dist: DistContext, study_name: str, storage: str, kwargs: dict[str, Any]
) -> RankLog:
    """One rank of a DDP worker (called by :func:`launch_ddp_worker` or under torchrun)."""
    from med_core.config import TrainConfig
    from med_core.device import resolve_device
    from medauto._search_run import build_objective
    from medauto._search_run import run_search
    from medauto.optimizer import AutoMLOptimizer
    from medauto.space import SearchSpace

    # Every rank must build the same objective: DDP trials select on the validation split.
    opt = AutoMLOptimizer.from_study(study_name, storage, **{"selection": "holdout", **kwargs})
    log = RankLog(rank=dist.rank)
    if dist.is_main_process:
        run_search(opt, wrap=lambda obj: _BroadcastingObjective(obj, dist, log))
        dist.broadcast_object(None, src=0)
        return log
    assert isinstance(opt.space, SearchSpace)  # from_study gives a SearchSpace
    objective = build_objective(opt, opt.space, resolve_device(opt.device),
                                members=opt.final_model)
    while True:
        message = dist.broadcast_object(None, src=0)
        if message is None:
            return log
        number, cfg_dict = message
        try:
            cfg = TrainConfig.from_dict(cfg_dict)
            _train_logged(objective, FollowerTrial(number), cfg, dist, log)
        except optuna.TrialPruned:
            pass


def launch_ddp_worker(
    study_name: str, storage: str, *, gpus_per_trial: int, **kwargs: Any
) -> list[RankLog]:
    """Starts ``gpus_per_trial`` processes that work on ``study_name`` as one DDP worker.

    Returns:
        Each rank's :class:`RankLog`, in rank order.
    """
    from med_core.training import launch

    return launch(run_ddp_worker, gpus_per_trial, args=(study_name, storage, kwargs))
