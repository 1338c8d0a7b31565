"""``medauto search`` (create or resume a study and run trials) and ``medauto create-study``."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.cli._command import RESUME_NOTE
from medauto.cli._command import Command
from medauto.cli._hints import next_hint
from medauto.cli._options import add_search_options
from medauto.cli._options import add_store_options
from medauto.cli._options import add_worker_options
from medauto.cli._options import checked_device
from medauto.cli._options import download_data
from medauto.cli._options import worker_kwargs
from medauto.cli._store import StoreRef
from medauto.exceptions import CLIUsageError
from medauto.retrain.options import TTA_MODES
from medauto.retrain.results import RESULTS_FILE

if TYPE_CHECKING:
    from medauto.optimizer import AutoMLOptimizer
    from medauto.optimizer import OptimizationResult

__all__ = ["CreateStudyCommand", "SearchCommand", "print_search_result"]


def print_search_result(result: OptimizationResult, ref: StoreRef) -> None:
    """The study, its best value and trial, and the next commands, on stdout."""
    from medauto.study import load_settings

    study = result.study
    print(f"study: {study.study_name}")
    print(f"best value ({load_settings(study).metric}): {result.best_value:.4f}")
    partial = result.final is not None and result.final.partial
    print(f"best trial: {result.best_trial_number} ({result.best_config.model.backbone})"
          + (" - PARTIAL: no trial completed; see the WARNING below" if partial else ""))
    print(next_hint(ref, study.study_name, ["status", "best > best.yaml"]))


def _optimizer(args: argparse.Namespace, ref: StoreRef, **extra: Any) -> AutoMLOptimizer:
    from medauto.optimizer import AutoMLOptimizer

    device = checked_device(args)  # refused here, before a study exists
    download_data(args, args.data, args.data_dir)
    return AutoMLOptimizer(
        args.data,
        args.space,
        metric=args.metric,
        study_name=args.study,
        storage=ref.given,
        run_dir=args.run_dir,
        n_trials=args.trials,
        selection=args.selection,
        **extra,
        **worker_kwargs(args, device),
    )


class SearchCommand(Command):
    """Create (or resume) a study and run trials in this process.

    Example: medauto search --data breastmnist --trials 20 --space fast
    """

    name = "search"
    on_interrupt = RESUME_NOTE

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_search_options(p)
        p.add_argument("--study", help="study name (default: <data>-<space>)")
        g = p.add_argument_group("wall-clock budget (see docs/search_spaces.md)")
        g.add_argument("--budget", metavar="DURATION",
                       help="search + final model within e.g. 90s, 15m, 1h30m (slack: 2%%, "
                       "5-60 s)")
        g.add_argument("--no-final-model", action="store_true",
                       help="skip the final ensemble; with --budget, retrain the best "
                       "trial instead (the options below)")
        g.add_argument("--budget-seeds", type=int, default=3, metavar="N",
                       help="with --no-final-model: retrain seeds within the budget (default 3)")
        g.add_argument("--budget-ensemble", type=int, default=1, metavar="K",
                       help="with --no-final-model: retrain the top-K trials per seed "
                       "(default 1)")
        g.add_argument("--tta", choices=TTA_MODES, default="auto",
                       help="with --no-final-model: flip TTA of the budget's retrain "
                       "(default auto: chosen per model on validation AUC)")
        p.add_argument(
            "--trials-per-device", default="auto", metavar="K",
            help="trials trained at once on each visible GPU, as more worker processes of "
            "the study (default auto: 1 on a CPU; on a GPU 1-3, chosen from the first "
            "trial's memory and how much of its time the GPU was busy; see "
            "docs/distributed.md)",
        )
        add_store_options(p)
        add_worker_options(p)

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.cli._results import print_retrain_summary
        from medauto.concurrency import parse_trials_per_device
        from medauto.exceptions import MedautoError

        try:
            k = parse_trials_per_device(args.trials_per_device)
        except MedautoError as e:
            raise CLIUsageError(f"--trials-per-device: {e}") from None
        ref = StoreRef.from_args(args)
        opt = _optimizer(args, ref, budget=args.budget, budget_seeds=args.budget_seeds,
                         budget_ensemble=args.budget_ensemble,
                         final_model=not args.no_final_model, trials_per_device=k)
        outcome = opt.optimize()
        print_search_result(outcome, ref)
        if outcome.final is not None:
            from medauto.final import FINAL_FILE
            from medauto.final import final_dir

            print(outcome.final.summary())
            print(f"results: {final_dir(opt.run_dir, outcome.final.study) / FINAL_FILE}")
            return 0
        if args.budget is None:
            return 0
        result = opt.retrain(
            tta=args.tta,
            ensemble_select="val" if args.budget_ensemble > 1 else "fixed",
        )
        print_retrain_summary(result)
        print(f"results: {Path(result.out_dir) / RESULTS_FILE}")
        return 0


class CreateStudyCommand(Command):
    """Create a study with its settings (space, data, metric, target) without training.

    Workers then join it by name (`medauto worker --study NAME`). An existing study with
    the same settings is left as it is (its trial target is updated).

    Example: medauto create-study --data breastmnist --space fast --trials 40 --study bm
    """

    name = "create-study"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_search_options(p)
        p.add_argument("--study", help="study name (default: <data>-<space>)")
        add_store_options(p)
        add_worker_options(p)

    def take_action(self, args: argparse.Namespace) -> int:
        ref = StoreRef.from_args(args)
        study = _optimizer(args, ref).create_study()
        print(f"study: {study.study_name} (storage: {ref.describe()})")
        print(next_hint(ref, study.study_name, ["worker", "status"]))
        return 0
