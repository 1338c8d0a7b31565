"""``AutoMLOptimizer``: the Python entry point of a medauto search.

The constructor only stores its arguments (scikit-learn style); :meth:`optimize` validates
and resolves them (search space, storage, data, device), creates or resumes the study and
runs trials in this process until the study's target is reached. Other processes join the
same study with :meth:`AutoMLOptimizer.from_study` (``medauto worker``).

Example:
    >>> from medauto import AutoMLOptimizer
    >>> opt = AutoMLOptimizer("breastmnist", "fast", n_trials=20, storage="sqlite:///s.db")
    >>> opt.n_trials, opt.pruner
    (20, 'median')

Without a ``space``, the space is chosen from the data's fingerprint
(:mod:`medauto.fingerprint`), and a new study first tries the space's portfolio of strong
configurations. A validation split too small to rank configurations is replaced by k-fold
cross-validation on train+val. At the end, :meth:`optimize` builds the final model: a
greedy ensemble of the trials' models, selected and calibrated on validation or
out-of-fold predictions, saved as one :class:`~medauto.ensemble.Predictor` and tested once
(:mod:`medauto.final`); :meth:`predict` and :meth:`predict_proba` use it.

With a wall-clock ``budget`` (``"15m"``; see :mod:`medauto.budget`) the search runs until
the budget less a small reserve for the final model is spent.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from med_core.device import resolve_device
from medauto.exceptions import MedautoError
from medauto.keys import CONFIG_ATTR
from medauto.keys import PORTFOLIO_ATTR
from medauto.logging import get_logger

if TYPE_CHECKING:
    import numpy as np
    import optuna
    import pandas as pd

    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from medauto.budget import BudgetPlan
    from medauto.ensemble import Predictor
    from medauto.final import FinalResult
    from medauto.fingerprint import DataFingerprint
    from medauto.fingerprint import Selection
    from medauto.retrain import RetrainResult
    from medauto.space import SearchSpace
    from medauto.tracking import BaseTracker
    from medauto.worker import WorkerReport

__all__ = ["METRICS", "AutoMLOptimizer", "OptimizationResult"]

_logger = get_logger(__name__)

#: The epoch metrics a study can optimize (what ``med_core``'s Trainer reports).
METRICS = ("val_auc", "val_acc", "val_balanced_acc", "val_macro_f1", "val_loss", "train_loss")
#: With a final ensemble: the budget's share kept to build and test it, and the longest a
#: trial may train, as a share of the search time.
FINAL_FRACTION, TRIAL_SHARE = 0.05, 1 / 3


@dataclass
class OptimizationResult:
    """What :meth:`AutoMLOptimizer.optimize` returns.

    Attributes:
        study: The Optuna study (all workers' trials).
        best_value: The best validation metric of a COMPLETE trial.
        best_config: The TrainConfig of that trial (ready for ``medauto train``).
        best_trial_number: Its trial number.
        report: What this process's worker ran, and why it stopped.
        final: The final model's result (``None`` with ``final_model=False``).
    """

    study: optuna.Study
    best_value: float
    best_config: TrainConfig
    best_trial_number: int
    report: WorkerReport
    final: FinalResult | None = None


class AutoMLOptimizer:
    """Searches backbones, checkpointing, augmentation and hyperparameters with Optuna.

    Args:
        data: A MedMNIST name (``"breastmnist"``), an ``.npz`` path, an image folder or a CSV
            manifest (see ``med_core.data.load_dataset``).
        space: A search-space name (``"fast"``, ``"default"``, ``"volumetric"``), a YAML path
            or a :class:`~medauto.SearchSpace`; ``None`` → chosen from the data
            (:func:`medauto.fingerprint.choose_space`: ``volumetric`` for 3D data,
            ``default`` for 2D on a GPU, ``fast`` for 2D on a CPU).
        metric: Validation metric to optimize (``"val_auc"``, ``"val_acc"``, ...).
        direction: ``"maximize"``/``"minimize"``; ``None`` infers it from ``metric``.
        study_name: ``None`` → ``"<dataset>-<space name>"``.
        storage: Storage URL; ``None`` → SQLite in ``run_dir``.
        run_dir: Folder for the default storage and run outputs.
        sampler: ``tpe`` (default), ``random``, ``cmaes``, ``gp`` or ``grid``.
        sampler_kwargs: Extra sampler arguments.
        pruner: ``median`` (default), ``percentile``, ``hyperband``, ``successive-halving``,
            ``wilcoxon`` or ``none``.
        pruner_kwargs: Extra pruner arguments.
        n_trials: Finished (complete + pruned) trials the study aims for, over all workers;
            ``None`` → 20, or 10000 with a ``budget`` (the budget then ends the search).
        timeout: Seconds after which this process starts no new trial.
        budget: Wall-clock budget of search + final retrain (``"90s"``, ``"15m"``,
            ``"1h30m"`` or seconds); split by :func:`medauto.budget.plan_budget`.
        budget_seeds: Retrain seeds the budget reserves time for (default 3).
        budget_ensemble: Top-k trials per seed the budget reserves time for (default 1).
        budget_retrain_fraction: Share of the budget (after slack) reserved for retrain.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        seed: Sampler seed (trial training seeds come from the space).
        data_dir: Where MedMNIST names are looked up (``None`` → ``MEDAUTO_DATA_DIR`` or
            ``~/.medmnist``).
        storage_settings: Heartbeat/retry settings (``medauto.storage.StorageSettings``).
        progress: Show a live progress line; ``None`` → when stderr is a TTY.
        trainer_progress: Show per-epoch bars of each trial.
        tracking: MLflow tracking: ``None``/``True`` → a local store ``run_dir/mlflow.db``;
            a tracking URI; ``False`` → off; or a ``medauto.tracking.BaseTracker``.
        oom_retry: Train a trial that runs out of memory again, with gradient
            checkpointing on at the same batch, then at half the batch (up to three times;
            recorded in the ``oom_retry`` user attribute); an OOM on the last rung prunes it
            with reason ``oom``. ``False``: the first OOM prunes it.
        max_failures: Stop with a :class:`~medauto.exceptions.MedautoError` after this many
            trials in a row failed in this process (a broken space or environment would
            otherwise fail trial after trial forever); ``None`` never stops.
        selection: ``"auto"`` (k-fold CV when validation is too small to rank models,
            :func:`medauto.fingerprint.choose_selection`), ``"holdout"`` or ``"cv"``.
        final_model: End :meth:`optimize` with the final ensemble (:mod:`medauto.final`;
            trials keep their models in ``run_dir``); ``False`` in :meth:`from_study`.
        portfolio: Enqueue the space's portfolio when the study is created.
        trials_per_device: Trials trained at once on each visible GPU (more worker
            processes of the study, :mod:`medauto.concurrency`); ``"auto"`` chooses from a
            probe trial (1 on a CPU, at most 3); 1 in :meth:`from_study`.
    """

    def __init__(
        self,
        data: str = "breastmnist",
        space: str | Path | SearchSpace | None = None,
        *,
        metric: str = "val_auc",
        direction: str | None = None,
        study_name: str | None = None,
        storage: str | None = None,
        run_dir: str | Path = "medauto-runs",
        sampler: str = "tpe",
        sampler_kwargs: Mapping[str, Any] | None = None,
        pruner: str = "median",
        pruner_kwargs: Mapping[str, Any] | None = None,
        n_trials: int | None = None,
        timeout: float | None = None,
        budget: str | float | None = None,
        budget_seeds: int = 3,
        budget_ensemble: int = 1,
        budget_retrain_fraction: float = 0.25,
        device: str = "auto",
        seed: int | None = 0,
        data_dir: str | Path | None = None,
        storage_settings: Any = None,
        progress: bool | None = None,
        trainer_progress: bool = False,
        tracking: bool | str | BaseTracker | None = None,
        oom_retry: bool = True,
        max_failures: int | None = 10,
        selection: str = "auto",
        final_model: bool = True,
        portfolio: bool = True,
        trials_per_device: int | str = "auto",
    ) -> None:
        self.data = data
        self.space = space
        self.metric = metric
        self.direction = direction
        self.study_name = study_name
        self.storage = storage
        self.run_dir = run_dir
        self.sampler = sampler
        self.sampler_kwargs = sampler_kwargs
        self.pruner = pruner
        self.pruner_kwargs = pruner_kwargs
        self.n_trials = n_trials
        self.timeout = timeout
        self.budget = budget
        self.budget_seeds = budget_seeds
        self.budget_ensemble = budget_ensemble
        self.budget_retrain_fraction = budget_retrain_fraction
        self.device = device
        self.seed = seed
        self.data_dir = data_dir
        self.storage_settings = storage_settings
        self.progress = progress
        self.trainer_progress = trainer_progress
        self.tracking = tracking
        self.oom_retry = oom_retry
        self.max_failures = max_failures
        self.selection = selection
        self.final_model = final_model
        self.portfolio = portfolio
        self.trials_per_device = trials_per_device
        self.study_: optuna.Study | None = None
        self.final_: FinalResult | None = None
        self.fingerprint_: DataFingerprint | None = None
        self.selection_: Selection | None = None
        self.budget_plan_: BudgetPlan | None = None
        self.budget_start_: float | None = None

    # -- joining an existing study -------------------------------------------------------
    @classmethod
    def from_study(cls, study_name: str, storage: str, **kwargs: Any) -> AutoMLOptimizer:
        """An optimizer that joins the existing study ``study_name`` as one more worker.

        The search space, data, metric and trial target come from the study itself;
        ``kwargs`` set the process-local options (device, sampler, pruner, timeout, ...).

        Raises:
            StorageError: the storage cannot be opened.
            MedautoError: no such study, or it was not created by medauto.
        """
        from medauto.space import SearchSpace
        from medauto.storage import open_storage
        from medauto.study import load_existing_study
        from medauto.study import load_settings

        store = open_storage(storage, kwargs.get("storage_settings"))
        study = load_existing_study(study_name, store)
        settings = load_settings(study)
        kwargs.setdefault("final_model", False)
        kwargs.setdefault("trials_per_device", 1)  # a joining worker is one worker
        kwargs.setdefault("selection", settings.selection)
        return cls(
            settings.data,
            SearchSpace.from_dict(settings.space, source=f"study {study_name!r}"),
            metric=settings.metric,
            direction=settings.direction,
            study_name=study_name,
            storage=storage,
            n_trials=settings.n_trials,
            **kwargs,
        )

    # -- validation and resolution -------------------------------------------------------
    @property
    def target_trials(self) -> int:
        """The finished trials the study aims for: ``n_trials``, else 20 (10000 with a
        budget, which ends the search first)."""
        if self.n_trials is not None:
            return self.n_trials
        return 10_000 if self.budget is not None else 20

    def _plan(self) -> BudgetPlan | None:
        from medauto.budget import plan_budget

        if self.budget is None:
            return None
        if self.final_model:  # no retrain: the final model is made of the trials' models
            return plan_budget(self.budget, seeds=1, ensemble=1,
                               retrain_fraction=FINAL_FRACTION, trial_share=TRIAL_SHARE)
        return plan_budget(self.budget, seeds=self.budget_seeds, ensemble=self.budget_ensemble,
                           retrain_fraction=self.budget_retrain_fraction)

    def _validate(self) -> None:
        n = self.target_trials
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise MedautoError(f"n_trials must be an integer >= 1, got {self.n_trials!r}")
        if self.timeout is not None and self.timeout <= 0:
            raise MedautoError(f"timeout must be > 0 seconds, got {self.timeout!r}")
        if self.direction not in (None, "maximize", "minimize"):
            raise MedautoError(
                f"direction must be 'maximize' or 'minimize', got {self.direction!r}"
            )
        if self.metric not in METRICS:
            import difflib

            close = difflib.get_close_matches(str(self.metric), METRICS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise MedautoError(
                f"metric must be one of {list(METRICS)}, got {self.metric!r}{hint}"
            )
        m = self.max_failures
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < 1):
            raise MedautoError(f"max_failures must be None or an integer >= 1, got {m!r}")
        if self.study_name is not None:
            from medauto.study import validate_study_name

            validate_study_name(self.study_name)
        from medauto.concurrency import parse_trials_per_device
        from medauto.fingerprint import SELECTION_MODES

        parse_trials_per_device(self.trials_per_device)
        if self.selection not in SELECTION_MODES:
            raise MedautoError(
                f"selection must be one of {list(SELECTION_MODES)}, got {self.selection!r}"
            )

    def _direction(self) -> str:
        if self.direction is not None:
            return self.direction
        return "minimize" if self.metric.endswith("loss") else "maximize"

    def _open(self, dataset: MedicalDataset) -> tuple[optuna.Study, SearchSpace, str]:
        from medauto.algorithms import make_sampler
        from medauto.algorithms import make_search_pruner

        # Everything that can be checked is checked before the storage is touched, so a
        # typo leaves no empty database or half-made study behind.
        from medauto.fingerprint import fingerprint_dataset
        from medauto.fingerprint import resolve_selection
        from medauto.fingerprint import resolve_space
        from medauto.storage import default_storage_url
        from medauto.storage import open_storage
        from medauto.study import StudySettings
        from medauto.study import open_study
        from medauto.study import stored_selection
        from medauto.trial_timing import budgeted_selection

        self._validate()
        device = resolve_device(self.device)
        self.fingerprint_ = fp = fingerprint_dataset(dataset)
        space = resolve_space(self.space, fp, device)
        selection = resolve_selection(self.selection, fp)
        grid = space.grid() if self.sampler == "grid" else None
        sampler = functools.partial(make_sampler, self.sampler, self.sampler_kwargs, grid=grid)
        sampler(seed=self.seed)  # validated before the storage is touched, as is the pruner
        make_search_pruner(self.pruner, self.pruner_kwargs, space, selection)
        storage = open_storage(self.storage or default_storage_url(self.run_dir),
                               self.storage_settings)
        name = self.study_name or f"{Path(str(self.data)).stem}-{space.name}"
        stored = stored_selection(storage, name)
        if stored is not None and self.selection in ("auto", stored.mode):
            selection = stored  # a resumed study, or a joining worker, scores alike: same folds
        elif self.selection == "auto" and self.budget_plan_ is not None:
            selection = budgeted_selection(selection, space, dataset, device,
                                           self.budget_plan_.trial_cap_s,
                                           plan=self.budget_plan_)
        self.selection_ = selection
        _logger.info("data: %s; selection on %s", fp.describe(), selection.describe())
        pruner = make_search_pruner(self.pruner, self.pruner_kwargs, space, selection)
        settings = StudySettings(
            space=space.to_dict(),
            fingerprint=space.fingerprint(),
            data=str(self.data),
            metric=self.metric,
            direction=self._direction(),
            n_trials=self.target_trials,
            selection=selection.mode,
            folds=selection.folds if selection.mode == "cv" else None,
        )
        study = open_study(name, storage, settings, sampler=sampler, pruner=pruner, seed=self.seed)
        if self.portfolio and space.portfolio and not study.get_trials(deepcopy=False):
            for entry in space.portfolio:
                study.enqueue_trial(dict(entry.params), user_attrs={PORTFOLIO_ATTR: entry.name},
                                    skip_if_exists=True)
            _logger.info("portfolio: %d configuration(s) enqueued first (%s)",
                         len(space.portfolio), ", ".join(e.name for e in space.portfolio))
        self.study_ = study
        return study, space, device

    def create_study(self) -> optuna.Study:
        """Creates (or resumes) the study with its settings and portfolio, training nothing;
        the data is checked first, so a wrong ``data`` or an unfit space creates no study.
        Its MLflow experiment and parent run are created too (the run SCHEDULED)."""
        from medauto.tracking import make_tracker

        study = self._open(self._load_data())[0]
        make_tracker(self.tracking, self.run_dir).schedule_study(study)
        return study

    # -- running ---------------------------------------------------------------------------
    def optimize(self) -> OptimizationResult:
        """Runs trials in this process until the study has ``n_trials`` finished trials.

        Re-running the same call resumes the study (finished trials are kept).

        Returns:
            An :class:`OptimizationResult`.

        Raises:
            SearchSpaceError, StorageError, StudyConflictError, DataError: bad settings,
                before any trial runs.
            MedautoError: no trial completed (all failed or were pruned), or
                ``max_failures`` trials in a row failed.
            KeyboardInterrupt: Ctrl-C/SIGTERM, after recording the running trial as
                ``interrupted``.
        """
        from medauto._search_run import run_search

        result = run_search(self)
        assert result is not None  # only a search's child worker returns none
        return result

    def _load_data(self) -> MedicalDataset:
        from med_core.config import DataConfig
        from med_core.data import load_dataset

        data_dir = str(self.data_dir) if self.data_dir is not None else None
        return load_dataset(DataConfig(dataset=str(self.data), data_dir=data_dir))

    def _result(self, study: optuna.Study, report: WorkerReport,
                final: FinalResult | None = None) -> OptimizationResult:
        from med_core.config import TrainConfig
        from medauto.partial import stand_in
        from medauto.results import best_trial

        partial = final.partial if final is not None else {}
        if not partial and self.budget_plan_ is not None:  # what retrain() will use, if any
            partial = stand_in(study)
        best = study.trials[partial["trial"]] if partial else best_trial(study)
        return OptimizationResult(
            study=study, best_value=float(partial["value"] if partial else best.value),  # type: ignore[arg-type]
            best_config=TrainConfig.from_dict(best.user_attrs[CONFIG_ATTR]),
            best_trial_number=best.number, report=report, final=final,
        )

    # -- results ---------------------------------------------------------------------------
    @property
    def best_config(self) -> TrainConfig:
        """The TrainConfig of the best completed trial (after :meth:`optimize`)."""
        from medauto.results import best_config

        return best_config(self._study())

    def trials_dataframe(self) -> pd.DataFrame:
        """One row per trial: state, value, params, user attributes (Optuna's dataframe)."""
        return self._study().trials_dataframe()

    def leaderboard(self) -> pd.DataFrame:
        """Completed trials, best first, with their final-ensemble weights
        (:func:`medauto.final.leaderboard`; AutoGluon's ``leaderboard``)."""
        from medauto.final import leaderboard

        return leaderboard(self._study(), self.final_)

    def predictor(self) -> Predictor:
        """The final ensemble :class:`~medauto.ensemble.Predictor` of :meth:`optimize`."""
        from medauto.ensemble import Predictor
        from medauto.final import final_dir

        name = self.final_.study if self.final_ is not None else self._study().study_name
        return Predictor.load(final_dir(self.run_dir, name) / "predictor")

    def predict_proba(self, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Class probabilities ``(N, C)`` of uint8 channels-first images (final model)."""
        return self.predictor().predict_proba(images, **kwargs)

    def predict(self, images: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Class indices of uint8 channels-first images (final model)."""
        return self.predictor().predict(images, **kwargs)

    def evaluate(self, images: np.ndarray, labels: np.ndarray, **kwargs: Any) -> dict[str, float]:
        """MedMNIST ACC/AUC (and balanced accuracy, macro F1) of the final model."""
        return self.predictor().evaluate(images, labels, **kwargs)

    def retrain(
        self, *, out_dir: str | Path | None = None, progress: bool = False, **options: Any
    ) -> RetrainResult:
        """Retrains the best trial (or the top ``ensemble``) and evaluates it once on test.

        A thin call into :func:`medauto.retrain.retrain`; ``options`` are fields of
        :class:`medauto.retrain.RetrainOptions` (``ensemble``, ``seeds``, ``tta``, ...).
        Works after :meth:`optimize` or, given ``study_name``, on an existing study. After
        a budgeted :meth:`optimize`, ``seeds``/``ensemble`` default to the budget's
        (``range(budget_seeds)``, ``budget_ensemble``) and training ends by the budget's
        deadline (start + total - slack); otherwise to :class:`RetrainOptions`' defaults.

        Raises:
            MedautoError: no study yet, or an option is unknown or breaks its rule.
        """
        from medauto.retrain import RetrainOptions
        from medauto.retrain import retrain
        from medauto.storage import default_storage_url
        from medauto.storage import open_storage

        study = self.study_
        if study is None:
            if self.study_name is None:
                raise MedautoError("no study yet: call optimize() first, or pass study_name")
            url = self.storage or default_storage_url(self.run_dir)
            from medauto.study import load_existing_study

            study = load_existing_study(self.study_name, open_storage(url, self.storage_settings))
        plan, start = self.budget_plan_, self.budget_start_
        deadline = None
        if plan is not None and start is not None:
            options = {"seeds": tuple(range(plan.seeds)), "ensemble": plan.ensemble,
                       "partial": True, **options}
            deadline = start + plan.total_s - plan.slack_s
        return retrain(
            study,
            RetrainOptions().updated(**options),
            deadline=deadline,
            out_dir=out_dir,
            device=resolve_device(self.device),
            data_dir=self.data_dir,
            run_dir=self.run_dir,
            tracking=self.tracking,
            progress=progress,
        )

    def _study(self) -> optuna.Study:
        if self.study_ is None:
            raise MedautoError("no study yet: call optimize() first")
        return self.study_

