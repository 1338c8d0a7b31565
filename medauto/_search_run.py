"""The body of :meth:`medauto.AutoMLOptimizer.optimize`: build the objective, open the
study, run this process's worker loop next to its concurrent workers
(:mod:`medauto.concurrency`), then build the final model.

:func:`run_search` also runs a search's child worker (:mod:`medauto._search_child`),
given its :class:`ChildRole`: the parent's budget plan and start, no final model, no
seed bagging, no children of its own.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.logging import get_logger

if TYPE_CHECKING:
    import optuna

    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from med_core.training import Callback
    from medauto.budget import BudgetPlan
    from medauto.concurrency import ConcurrentTrials
    from medauto.objective import Objective
    from medauto.optimizer import AutoMLOptimizer
    from medauto.optimizer import OptimizationResult
    from medauto.space import SearchSpace
    from medauto.tracking import BaseTracker

__all__ = ["ChildRole", "build_objective", "run_search"]

_logger = get_logger(__name__)


@dataclass(frozen=True)
class ChildRole:
    """What a search's child worker takes from its parent.

    Attributes:
        plan: The parent's budget plan (``None``: no budget), before scaling for ``k``.
        start: The parent's ``time.monotonic()`` at its start (the budget's start).
        timeout_at: ``time.monotonic()`` after which no trial starts (``None``: none).
        members: Keep each trial's models for the parent's final ensemble.
        k: Trials per device in force (scales the plan's trial cap).
    """

    plan: BudgetPlan | None
    start: float
    timeout_at: float | None
    members: bool
    k: int


def build_objective(
    opt: AutoMLOptimizer, space: SearchSpace, device: str, tracker: BaseTracker | None = None,
    dataset: MedicalDataset | None = None, *, members: bool,
) -> Objective:
    """The search's objective. Its budget callbacks read ``opt.budget_plan_`` when a trial
    starts, so a plan scaled for concurrent trials applies from the next trial on."""
    from medauto.artifacts import artifact_store_for
    from medauto.objective import Objective

    data_dir = str(opt.data_dir) if opt.data_dir is not None else None
    if dataset is None:
        dataset = opt._load_data()
    overrides = {"data.dataset": str(opt.data), "data.data_dir": data_dir, "monitor": opt.metric}
    start, selection = opt.budget_start_, opt.selection_
    folds = selection.folds if selection is not None else 1

    def callbacks(trial: optuna.trial.BaseTrial, cfg: TrainConfig) -> list[Callback]:
        cb = tracker.trial_callback(trial, cfg) if tracker is not None else None
        out = [] if cb is None else [cb]
        plan = opt.budget_plan_
        deadline = _search_deadline(plan, start)
        if plan is not None and deadline is not None:
            from medauto.budget import BudgetCallback

            # each fold of a cross-validated trial gets its share of the trial cap
            out.append(BudgetCallback(trial, search_deadline=deadline,
                                      trial_cap_s=plan.trial_cap_s / folds))
        return out

    plan = opt.budget_plan_
    return Objective(
        space, dataset=dataset, device=device, overrides=overrides, callbacks=callbacks,
        progress=opt.trainer_progress, artifact_store=artifact_store_for(opt.run_dir),
        artifact_trials="best", oom_retry=opt.oom_retry, selection=selection,
        trial_cap_s=plan.trial_cap_s if plan is not None else None,
        search_deadline=_search_deadline(plan, start),
        members_root=Path(opt.run_dir) if members else None,
    )


def _child_job(opt: AutoMLOptimizer, study: optuna.Study, plan: BudgetPlan | None,
               timeout_at: float | None) -> dict[str, Any]:
    """The JSON job of the search's children (:mod:`medauto._search_child`), without the
    per-child ``seed``, ``device`` and ``plan_k``."""
    import logging

    from medauto.storage import default_storage_url
    from medauto.tracking import tracking_uri

    settings = opt.storage_settings
    return {
        "study": study.study_name, "storage": opt.storage or default_storage_url(opt.run_dir),
        "kwargs": {
            "run_dir": str(opt.run_dir), "data_dir": None if opt.data_dir is None
            else str(opt.data_dir), "sampler": opt.sampler, "sampler_kwargs": opt.sampler_kwargs,
            "pruner": opt.pruner, "pruner_kwargs": opt.pruner_kwargs, "oom_retry": opt.oom_retry,
            "max_failures": opt.max_failures,
            "tracking": tracking_uri(opt.tracking, opt.run_dir) or False,
            "storage_settings": None if settings is None else dataclasses.asdict(settings)},
        "plan": None if plan is None else plan.to_dict(), "start": opt.budget_start_,
        "timeout_at": timeout_at, "members": opt.final_model,
        "verbosity": logging.getLogger("medauto").getEffectiveLevel(),
    }


def _devices(device: str) -> list[str]:
    """One slot per visible GPU for a plain ``cuda`` search, else the one device."""
    import torch

    if device.startswith("cuda") and ":" not in device and torch.cuda.device_count() > 1:
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return [device if device != "cuda" else "cuda:0"]


def run_search(
    opt: AutoMLOptimizer, *, wrap: Callable[[Objective], Callable[[optuna.Trial], float]] | None
    = None, child: ChildRole | None = None,
) -> OptimizationResult | None:
    """Opens the study and runs the worker loop; ``wrap`` adapts the objective (DDP).
    Returns the search's result; ``None`` for a child, whose parent reports."""
    from medauto._progress import SearchProgress
    from medauto.bagging import with_seed_bagging
    from medauto.concurrency import ConcurrentTrials
    from medauto.concurrency import scaled_plan
    from medauto.tracking import make_tracker
    from medauto.worker import run_worker

    # a bad budget fails before anything runs
    plan = opt._plan() if child is None else scaled_plan(child.plan, child.k)
    opt.budget_plan_ = plan
    opt.budget_start_ = start = time.monotonic() if child is None else child.start
    # The data is loaded first: a wrong --data must not create (and so pin the data
    # spec of) a study, nor start an MLflow run.
    dataset = opt._load_data()
    study, space, device = opt._open(dataset)
    tracker = make_tracker(opt.tracking, opt.run_dir)
    tracker.start_study(study)
    members = opt.final_model if child is None else child.members
    objective = build_objective(opt, space, device, tracker, dataset=dataset, members=members)
    progress = SearchProgress(opt.target_trials, enabled=False if child else opt.progress,
                              start=start, budget_s=plan.search_s if plan is not None else None)
    # `timeout` counts from the start of the worker loop (the children get the same instant)
    timeout_at = child.timeout_at if child is not None else (
        None if opt.timeout is None else time.monotonic() + opt.timeout)
    concurrent: ConcurrentTrials | None = None
    if child is None and wrap is None:
        concurrent = ConcurrentTrials(
            opt.trials_per_device, _devices(device), _child_job(opt, study, plan, timeout_at),
            seed=opt.seed,
            relay=progress.relay if progress.enabled else None)
        _use_plan(opt, objective, concurrent.start(plan))
    if opt.budget_plan_ is not None and child is None:
        _logger.info("%s", opt.budget_plan_.describe(final_model=opt.final_model))
    end_trial = tracker.end_trial if child is not None else with_seed_bagging(
        tracker.end_trial, start=start, plan=plan, selection=opt.selection_,
        final_model=opt.final_model)
    report = None
    try:
        with progress:
            report = run_worker(
                study, wrap(objective) if wrap else objective, target=opt.target_trials,
                timeout=_timeout(opt.budget_plan_, start, timeout_at), device=device,
                on_trial_end=_with_probe(end_trial, concurrent, opt, objective, plan),
                progress=progress, max_failures=opt.max_failures,
            )
            if concurrent is not None:
                concurrent.wait(on_poll=lambda: progress.update(study))
                progress.update(study)
    except BaseException:
        if concurrent is not None:
            concurrent.stop()
        raise
    finally:
        done = report is not None and report.stop_reason == "target reached"
        tracker.end_study(study, finished=done)
    if child is not None:
        return None
    final = None
    if opt.final_model:  # no completed trial: built from the best partial one
        from medauto.final import build_final
        from medauto.final import final_dir
        from medauto.final import selection_metric

        final = opt.final_ = build_final(study, dataset, run_dir=opt.run_dir, device=device,
                                         metric=selection_metric(opt.metric))
        tracker.log_final(study, final, final_dir(opt.run_dir, study.study_name))
    return opt._result(study, report, final)


def _timeout(plan: BudgetPlan | None, start: float, timeout_at: float | None) -> float | None:
    """Seconds from now after which this worker starts no trial (budget and timeout)."""
    ends = [t for t in (timeout_at, None if plan is None else start + plan.last_start_s)
            if t is not None]
    return max(1e-3, min(ends) - time.monotonic()) if ends else None


def _search_deadline(plan: BudgetPlan | None, start: float | None) -> float | None:
    """The ``time.monotonic()`` value at which a budgeted search ends (``None``: no budget)."""
    return None if plan is None or start is None else start + plan.search_s


def _use_plan(opt: AutoMLOptimizer, objective: Objective, plan: BudgetPlan | None) -> None:
    opt.budget_plan_ = plan
    objective.trial_cap_s = plan.trial_cap_s if plan is not None else None
    objective.search_deadline = _search_deadline(plan, opt.budget_start_)


def _with_probe(
    end_trial: Callable[[optuna.Study, optuna.trial.FrozenTrial], None],
    concurrent: ConcurrentTrials | None, opt: AutoMLOptimizer, objective: Objective,
    plan: BudgetPlan | None,
) -> Callable[[optuna.Study, optuna.trial.FrozenTrial], None]:
    """``end_trial``, then the probe of ``trials_per_device="auto"``: when it chooses K,
    this worker's trial cap is scaled for K from the next trial on."""
    if concurrent is None or concurrent.k is not None:
        return end_trial
    from medauto.concurrency import scaled_plan

    def hook(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        end_trial(study, trial)
        k = concurrent.after_trial(study, trial)
        if k is not None:
            _use_plan(opt, objective, scaled_plan(plan, k))

    return hook
