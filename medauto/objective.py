"""One trial: search space → TrainConfig → med_core Trainer with pruning → validation metric.

The objective records, as trial user attributes readable in optuna-dashboard: ``config``
(the full TrainConfig as a nested dict), ``backbone``, ``history`` (per-epoch metrics),
``best_epoch``, ``epochs_run`` and, for a pruned trial, ``pruned_at_epoch`` (epochs are
1-based everywhere: these attributes, the pruner's steps and the MLflow steps). Failures are
classified by :func:`medauto.worker.classify_failure`, not here: the objective lets every
exception propagate.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from collections.abc import Mapping
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

import optuna

from med_core.training.callbacks import Callback as _Callback
from med_core.training.callbacks import KeepBestWeights
from medauto.fingerprint import Selection
from medauto.keys import BACKBONE_ATTR
from medauto.keys import BAGGED_FROM_ATTR
from medauto.keys import BEST_EPOCH_ATTR
from medauto.keys import CONFIG_ATTR
from medauto.keys import EPOCHS_FITTED_ATTR
from medauto.keys import EPOCHS_RUN_ATTR
from medauto.keys import FOLD_VALUES_ATTR
from medauto.keys import HISTORY_ATTR
from medauto.keys import MEMBERS_ATTR
from medauto.keys import PRUNED_AT_EPOCH_ATTR
from medauto.keys import PRUNED_AT_FOLD_ATTR
from medauto.keys import SEED_ATTR
from medauto.keys import TRAIN_S_ATTR
from medauto.logging import get_logger
from medauto.members import member_dir
from medauto.members import model_path
from medauto.members import save_selection_scores
from medauto.oom import OomLadder
from medauto.preprocessing import Preprocessing
from medauto.pruning import PruningCallback
from medauto.trial_timing import EpochProbe
from medauto.trial_timing import fit_epochs
from medauto.trial_timing import timing_key
from medauto.worker import TIMING_ENV
from medauto.worker import record_phase
from medauto.worker import timed

if TYPE_CHECKING:
    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from med_core.training import Callback
    from med_core.training import History
    from med_core.training import Trainer
    from medauto.space import SearchSpace

__all__ = ["ARTIFACT_TRIALS", "Objective", "history_for_attrs", "train_seconds"]

#: Which trials of a search draw and upload their artifacts (``Objective(artifact_trials=)``).
ARTIFACT_TRIALS = ("all", "best")

_logger = get_logger(__name__)


CallbackFactory = Callable[[optuna.trial.BaseTrial, "TrainConfig"], Sequence["Callback"]]


def history_for_attrs(history: History) -> list[dict[str, float]]:
    """Per-epoch metrics as JSON-safe dicts (floats rounded to 6 significant digits), with
    ``epoch`` 1-based, as the pruner's steps and the MLflow steps count epochs."""
    out = []
    for row in history.epochs:
        clean = {k: (float(f"{v:.6g}") if math.isfinite(v) else None) for k, v in row.items()}
        out.append({**clean, "epoch": int(row["epoch"]) + 1})
    return out  # type: ignore[return-value]


def train_seconds(history: History, images: int) -> float:
    """Seconds a fit of ``images`` training images per epoch spent in training steps:
    ``images`` over each epoch's ``images_per_s``, summed (rounded to ms).

    Example:
        >>> from med_core.training import History
        >>> train_seconds(History(epochs=[{"images_per_s": 100.0}, {"images_per_s": 50.0}]), 200)
        6.0
    """
    ips = (row.get("images_per_s", math.nan) for row in history.epochs)
    return round(sum(images / v for v in ips if math.isfinite(v) and v > 0), 3)


class _FitTimer:
    """The timing hook's view of one fit (only built while ``MEDAUTO_TIMING_FILE`` is set).

    :meth:`marker` returns callbacks placed around the trial's own callbacks; each marker's
    ``on_epoch_end`` closes the span since the previous marker, so the pruning report and
    the MLflow logging of every epoch are timed apart. Phases: ``model_setup`` (Trainer
    built up to ``on_fit_start``: model, optimizer, loaders, compile wrapping),
    ``train_steps`` (the epoch's training time as the Trainer measures it; epoch 0 holds
    the compilation and warm-up), ``evaluation`` (the rest of the epoch: validation) and
    one phase per marker label.
    """

    def __init__(self, trial: int, batch_size: int, n_train: int) -> None:
        self.trial = trial
        self.images = (n_train // batch_size) * batch_size if n_train >= batch_size else n_train
        self.last = time.time()

    def marker(self, label: str) -> _Callback:
        timer = self

        class _Marker(_Callback):
            def on_fit_start(self, trainer: Any) -> None:
                if label == "first":
                    timer._close("model_setup")

            def on_epoch_start(self, trainer: Any, epoch: int) -> None:
                if label == "first":
                    timer._close("trainer_bookkeeping")

            def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
                if label == "first":
                    timer._epoch(epoch, metrics)
                else:
                    timer._close(label)

            def on_fit_end(self, trainer: Any, history: Any) -> None:
                if label == "first":
                    timer._close("trainer_bookkeeping")

        return _Marker()

    def _close(self, phase: str) -> None:
        now = time.time()
        record_phase(phase, self.last, now, self.trial)
        self.last = now

    def _epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        now = time.time()
        ips = float(metrics.get("images_per_s", math.nan))
        train = self.images / ips if math.isfinite(ips) and ips > 0 else 0.0
        train = min(train, now - self.last)
        record_phase(f"train_steps:{epoch}", self.last, self.last + train, self.trial)
        record_phase("evaluation", self.last + train, now, self.trial)
        self.last = now


class Objective:
    """Trains one suggested configuration and returns its best validation metric.

    Args:
        space: The search space; ``space.suggest(trial)`` gives the TrainConfig.
        dataset: The loaded dataset, shared by every trial of this process.
        device: Torch device string the trials train on (``"cpu"``, ``"cuda:0"``).
        callbacks: Extra per-trial callbacks (e.g. MLflow tracking), built per trial.
        overrides: Dotted TrainConfig values the space builds on (the study's data spec and
            metric: ``{"data.dataset": ..., "monitor": ...}``).
        out_dir: If given, each trial keeps its checkpoints under ``out_dir/trial_<n>``;
            ``None`` (the default for searches) writes none.
        progress: Show the trainer's per-epoch progress bars.
        artifact_store: If given, trials upload their learning curve and validation
            confusion matrix there (``medauto.artifacts``); which trials says
            ``artifact_trials``.
        artifact_trials: ``"all"``: every trial that trained (complete or pruned);
            ``"best"`` (what a search uses): only a completed trial whose value beats every
            completed trial of the study when it ends, so the plotting (about 0.7 s a
            trial) is paid O(log n) times instead of n times, and the best trial always
            has its pictures.
        oom_retry: On out-of-memory, train the trial again: first with gradient
            checkpointing on at the same batch, then at half the batch, up to
            ``MAX_OOM_RETRIES`` times (:class:`medauto.oom.OomLadder`). The objective remembers
            what ran out of memory, so a later trial of a configuration known not to fit
            starts at the first rung that might. The attempts are recorded in the
            ``oom_retry`` user attribute, and ``config`` holds what was really trained.
            An OOM on the last rung propagates (reason ``oom``).
        selection: How a trial is scored (:class:`~medauto.fingerprint.Selection`):
            holdout on the validation split (default) or k-fold CV on train+val.
        trial_cap_s: If given (a budgeted search), the longest a trial may train. A probe
            fit times two epochs first; when the configured epochs would not fit (all folds
            together), the trial trains the epochs that do, so it completes a whole
            learning-rate schedule instead of being cut mid-way; the ``epochs_fitted``
            user attribute records it.
        search_deadline: If given (a budgeted search), the ``time.monotonic()`` value at
            which the search ends. A trial's cap is then at most the time left to it when
            the trial starts, so a trial that starts late (the last of concurrent trials,
            the search's last minutes) trains the epochs that end by the deadline and
            completes, instead of being stopped there with its folds unfinished.
        members_root: If given (the run folder), each completed trial keeps its best-epoch
            model(s) and its validation (or out-of-fold) predictions in
            :func:`medauto.members.member_dir` for the final ensemble.
    """

    def __init__(
        self,
        space: SearchSpace,
        *,
        dataset: MedicalDataset,
        device: str = "cpu",
        callbacks: CallbackFactory | None = None,
        overrides: Mapping[str, Any] | None = None,
        out_dir: Path | None = None,
        progress: bool = False,
        artifact_store: Any = None,
        oom_retry: bool = True,
        selection: Selection | None = None,
        trial_cap_s: float | None = None,
        search_deadline: float | None = None,
        members_root: Path | None = None,
        artifact_trials: str = "all",
    ) -> None:
        if artifact_trials not in ARTIFACT_TRIALS:
            raise ValueError(f"artifact_trials must be one of {ARTIFACT_TRIALS}, got "
                             f"{artifact_trials!r}")
        self.space = space
        self.dataset = dataset
        self.device = device
        self.callbacks = callbacks
        self.overrides = dict(overrides or {})
        self.out_dir = out_dir
        self.progress = progress
        self.artifact_store = artifact_store
        self.artifact_trials = artifact_trials
        self.oom_retry = oom_retry
        self.selection = selection or Selection()
        self.members_root = members_root
        self.trial_cap_s = trial_cap_s
        self.search_deadline = search_deadline

        self.last_epochs_run = 0
        self._timings: dict[tuple[Any, ...], tuple[float, float]] = {}
        self._oom = OomLadder()  # what ran out of memory in this process

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        cfg = self.suggest(trial)
        if not self.oom_retry:
            return self.train(trial, cfg)
        return self._oom.run(trial, cfg, self.train)

    def suggest(self, trial: optuna.trial.BaseTrial) -> TrainConfig:
        """The trial's TrainConfig: the space's suggestion on top of the overrides."""
        from med_core.config import TrainConfig

        overrides = dict(self.overrides)
        if SEED_ATTR in trial.user_attrs:  # a repeat of the best with a new seed
            overrides["seed"] = int(trial.user_attrs[SEED_ATTR])
        with timed("suggest", trial.number):
            return self.space.suggest(trial, base=TrainConfig.from_flat(overrides))

    def train(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, **trainer_kwargs: Any
    ) -> float:
        """Trains ``cfg`` for ``trial``; raises ``optuna.TrialPruned`` when pruned.

        With holdout selection the value is the best validation metric, reported to the
        pruner after every epoch (not for a seed repeat, :mod:`medauto.bagging`). With
        cross-validated selection every fold trains in turn, the value is the mean of the
        folds' best metrics, and the pruner hears one report per fold (step = folds
        done), so it can stop a weak configuration early.
        """
        n = trial.number
        with timed("trial_attrs", n):
            trial.set_user_attr(BACKBONE_ATTR, cfg.model.backbone)
        with timed("trial_attrs", n):
            trial.set_user_attr(CONFIG_ATTR, cfg.to_dict())
        cfg, probe = self._budget_check(trial, cfg, **trainer_kwargs)
        with timed("tracking_trial_start", n):
            extra = list(self.callbacks(trial, cfg)) if self.callbacks else []
        if self.selection.mode == "cv":
            return self._train_folds(trial, cfg, extra, probe, **trainer_kwargs)
        prune = BAGGED_FROM_ATTR not in trial.user_attrs
        keep = self.members_root is not None or self.artifact_store is not None
        keeper = KeepBestWeights() if keep else None
        trainer, history, pruning = self._fit(
            trial, cfg, self.dataset, per_epoch_pruning=prune, keeper=keeper,
            extra=[probe, *extra] if probe else extra, **trainer_kwargs,
        )
        fitted = self._refit_if_over(trial, cfg, probe, trainer)
        if fitted is not None:  # the first two epochs said: fewer epochs, a whole schedule
            cfg, keeper = fitted, KeepBestWeights() if keeper is not None else None
            trainer, history, pruning = self._fit(  # epochs 1-2 were reported when timed
                trial, cfg, self.dataset, per_epoch_pruning=prune, keeper=keeper,
                extra=extra, report_from=3, **trainer_kwargs,
            )
        self._record(trial, history)
        if self.artifact_trials == "all":
            self._artifacts(trial, trainer, history, keeper)
        # The stop reason, not the callback, says "pruned": on a DDP group only rank 0's
        # callback decides, and the trainer hands its reason to every rank.
        if history.stop_reason == "callback:pruned":
            epoch = (pruning.pruned_at_epoch if pruning else None) or len(history.epochs)
            trial.set_user_attr(PRUNED_AT_EPOCH_ATTR, epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        best = _finite_best(history, cfg)
        if self.artifact_trials == "best" and self._best_so_far(
                trial, best, trainer_kwargs.get("dist")):
            self._artifacts(trial, trainer, history, keeper)
        if self.members_root is not None and keeper is not None and trainer.is_main_process:
            with timed("members", n):
                keeper.restore(trainer)
                y, score = trainer.predict("val", tta=cfg.tta)
                folder = self._member_folder(trial)
                self._save_model(folder, 0, trainer, cfg)
                save_selection_scores(folder, y=y, score=score, kind="val")
                trial.set_user_attr(MEMBERS_ATTR, self._relative(folder))
        return best

    # ------------------------------------------------------------------------- helpers
    def _timing_key(self, cfg: TrainConfig) -> tuple[Any, ...]:
        """A configuration timed before is not timed again (:func:`timing_key`)."""
        return timing_key(cfg, self.selection.folds)

    def _budget_check(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, **trainer_kwargs: Any
    ) -> tuple[TrainConfig, EpochProbe | None]:
        """``cfg`` fitted to the trial cap (at most the time left to the search deadline)
        from a known timing, or ``cfg`` and a probe for its first fit
        (:meth:`_refit_if_over`); ``None`` when there is nothing to check."""
        if self.trial_cap_s is None or cfg.epochs <= 2 or "dist" in trainer_kwargs:
            return cfg, None  # (a DDP group's ranks would time the epoch differently)
        cap = self.trial_cap_s
        if self.search_deadline is not None:
            cap = min(cap, self.search_deadline - time.monotonic())
        cap /= self.selection.folds
        timing = self._timings.get(self._timing_key(cfg))
        if timing is None:
            return cfg, EpochProbe(cap)
        first_s, epoch_s = timing
        if first_s + (cfg.epochs - 1) * epoch_s <= cap:
            return cfg, None
        return self._fitted(trial, cfg, first_s, epoch_s, cap), None

    def _fitted(self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, first_s: float,
                epoch_s: float, cap: float) -> TrainConfig:
        """``cfg`` with the epochs that fit ``cap`` (recorded as ``epochs_fitted``)."""
        from med_core.config import TrainConfig

        epochs = fit_epochs(cfg.epochs, first_s, epoch_s, cap)
        trial.set_user_attr(EPOCHS_FITTED_ATTR, {
            "from": cfg.epochs, "to": epochs, "first_epoch_s": round(first_s, 3),
            "epoch_s": round(epoch_s, 3), "cap_s": round(cap, 3)})
        _logger.info("trial %d: %d epochs (%.1f s, then %.2f s each) would exceed the %.0f s "
                     "cap; training %d", trial.number, cfg.epochs, first_s, epoch_s, cap,
                     epochs)
        fitted = TrainConfig.from_flat({"epochs": epochs}, base=cfg)
        trial.set_user_attr(CONFIG_ATTR, fitted.to_dict())
        return fitted

    def _refit_if_over(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, probe: EpochProbe | None,
        trainer: Trainer,
    ) -> TrainConfig | None:
        """After a first fit timed by ``probe``: the fitted ``cfg`` to train again when the
        probe stopped it (the configured epochs would not fit the cap), else ``None``."""
        if probe is None or probe.first_s is None:
            return None
        self._timings[self._timing_key(cfg)] = (probe.first_s, probe.epoch_s or probe.first_s)
        if not probe.over:
            return None
        trainer.close()
        assert probe.cap_s is not None
        return self._fitted(trial, cfg, probe.first_s, probe.epoch_s or probe.first_s,
                            probe.cap_s)

    def _fit(
        self,
        trial: optuna.trial.BaseTrial,
        cfg: TrainConfig,
        dataset: MedicalDataset,
        *,
        per_epoch_pruning: bool,
        extra: list[Any],
        keeper: KeepBestWeights | None = None,
        fold: str = "",
        report_from: int = 1,
        **trainer_kwargs: Any,
    ) -> tuple[Trainer, History, PruningCallback | None]:
        """One fit of ``cfg`` on ``dataset`` with the trial's callbacks (``extra``: built
        once per trial, so a cross-validated trial has one tracking run, not one a fold).

        Its epoch lines are logged at ``DEBUG``, as ``trial N[ fold]: epoch ...``."""
        from med_core.training import Trainer

        n = trial.number
        pruning = (PruningCallback(trial, cfg.monitor, report_from=report_from)
                   if per_epoch_pruning else None)
        own: list[Any] = [c for c in (pruning, keeper) if c is not None]
        callbacks: list[Any] = [*own, *extra]
        if os.environ.get(TIMING_ENV):
            timer = _FitTimer(n, cfg.batch_size, len(dataset.train))
            callbacks = [
                timer.marker("first"), *own, timer.marker("pruning_report"),
                *extra, timer.marker("tracking_epoch_log"),
            ]
        out_dir = self.out_dir / f"trial_{trial.number}" if self.out_dir else None
        trainer = Trainer(
            cfg,
            dataset=dataset,
            device=self.device,
            callbacks=callbacks,
            out_dir=out_dir,
            progress=self.progress,
            epoch_log_level=logging.DEBUG,
            log_prefix=f"trial {n}{fold}: ",
            **trainer_kwargs,
        )
        self.last_epochs_run = 0
        history = trainer.fit()
        self.last_epochs_run = len(history.epochs)
        spent = train_seconds(history, len(dataset.train))
        trial.set_user_attr(TRAIN_S_ATTR, [*trial.user_attrs.get(TRAIN_S_ATTR, []), spent])
        return trainer, history, pruning

    def _record(self, trial: optuna.trial.BaseTrial, history: History) -> None:
        """The trial's history attributes (epochs 1-based)."""
        n = trial.number
        best = None if history.best_epoch is None else history.best_epoch + 1
        with timed("trial_attrs", n):
            trial.set_user_attr(HISTORY_ATTR, history_for_attrs(history))
            trial.set_user_attr(EPOCHS_RUN_ATTR, len(history.epochs))
            trial.set_user_attr(BEST_EPOCH_ATTR, best)

    def _best_so_far(self, trial: optuna.trial.BaseTrial, value: float,
                     dist: Any = None) -> bool:
        """Whether a trial that completed with ``value`` beats every completed trial of
        its study (``artifact_trials="best"``). On a DDP group (``dist``) rank 0 decides
        and tells the others, since every rank takes part in the drawing's prediction."""
        study = getattr(trial, "study", None)
        best_so_far = self.artifact_store is not None
        if best_so_far and study is not None:
            with timed("best_so_far", trial.number):
                try:
                    best = study.best_value
                except ValueError:  # no completed trial yet
                    best = None
            maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
            best_so_far = best is None or (value > best if maximize else value < best)
        if dist is not None:
            best_so_far = bool(dist.broadcast_object(best_so_far, src=0))
        return best_so_far

    def _artifacts(
        self, trial: optuna.trial.BaseTrial, trainer: Trainer, history: History,
        keeper: KeepBestWeights | None,
    ) -> None:
        """The trial's artifacts: the learning curve, and the confusion matrix of the best
        epoch's weights (``keeper``'s, which are restored first), the epoch the trial's
        value comes from. Never raises; every DDP rank calls it."""
        if self.artifact_store is None:
            return
        from medauto.artifacts import trial_artifacts

        best = None if history.best_epoch is None else history.best_epoch + 1
        restored = keeper is not None and keeper.restore(trainer)
        with timed("artifacts", trial.number):
            trial_artifacts(trial, trainer, history, artifact_store=self.artifact_store,
                            weights_epoch=best if restored else None)

    def _train_folds(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, extra: list[Any],
        probe: EpochProbe | None, **trainer_kwargs: Any,
    ) -> float:
        """Cross-validated selection: k fits, out-of-fold scores, one report per fold."""
        import numpy as np

        from med_core.data import cross_validation_folds

        k, n = self.selection.folds, trial.number
        pool_y = np.concatenate([self.dataset.train.labels, self.dataset.val.labels])
        oof: np.ndarray | None = None
        values: list[float] = []
        folder = self._member_folder(trial) if self.members_root is not None else None
        folds = cross_validation_folds(self.dataset, k, seed=self.selection.seed)
        for j, (val_idx, fold_ds) in enumerate(folds):
            keeper = KeepBestWeights()
            timed_fit = probe if j == 0 else None  # the first fold times the epochs
            trainer, history, _ = self._fit(
                trial, cfg, fold_ds, per_epoch_pruning=False, keeper=keeper,
                extra=[timed_fit, *extra] if timed_fit else extra,
                fold=f" fold {j + 1}/{k}", **trainer_kwargs,
            )
            fitted = self._refit_if_over(trial, cfg, timed_fit, trainer)
            if fitted is not None:
                cfg, keeper = fitted, KeepBestWeights()
                trainer, history, _ = self._fit(
                    trial, cfg, fold_ds, per_epoch_pruning=False, extra=extra, keeper=keeper,
                    fold=f" fold {j + 1}/{k}", **trainer_kwargs,
                )
            if j == 0:
                self._record(trial, history)
                if self.artifact_trials == "all":
                    self._artifacts(trial, trainer, history, keeper)
            if history.stop_reason == "callback:pruned":  # the search's time is spent
                trial.set_user_attr(PRUNED_AT_FOLD_ATTR, j + 1)
                raise optuna.TrialPruned(f"pruned in fold {j + 1} of {k}")
            values.append(_finite_best(history, cfg))
            if j + 1 == k and self.artifact_trials == "best" and self._best_so_far(
                    trial, float(np.mean(values))):
                self._artifacts(trial, trainer, history, keeper)  # the last fold's fit
            keeper.restore(trainer)
            _, score = trainer.predict("val", tta=cfg.tta)
            if oof is None:
                oof = np.zeros((len(pool_y), *score.shape[1:]), dtype=np.float32)
            oof[val_idx] = score
            if folder is not None:
                with timed("members", n):
                    self._save_model(folder, j, trainer, cfg)
            trainer.close()
            trial.set_user_attr(FOLD_VALUES_ATTR, [float(f"{v:.6g}") for v in values])
            trial.report(values[-1], step=j + 1)
            if j + 1 < k and trial.should_prune():
                trial.set_user_attr(PRUNED_AT_FOLD_ATTR, j + 1)
                raise optuna.TrialPruned(f"pruned after fold {j + 1} of {k}")
        if folder is not None and oof is not None:
            save_selection_scores(folder, y=pool_y, score=oof, kind="oof")
            trial.set_user_attr(MEMBERS_ATTR, self._relative(folder))
        return float(np.mean(values))

    def _member_folder(self, trial: optuna.trial.BaseTrial) -> Path:
        root = Path(self.members_root or ".")
        study = getattr(getattr(trial, "study", None), "study_name", "study")
        return member_dir(root, study, trial.number)

    def _relative(self, folder: Path) -> str:
        return Path(os.path.relpath(folder, self.members_root or ".")).as_posix()

    def _save_model(self, folder: Path, index: int, trainer: Trainer, cfg: TrainConfig) -> None:
        from medauto.model_file import save_model

        info = self.dataset.info
        size = cfg.data.img_size or list(info.image_size)
        save_model(
            model_path(folder, index), trainer.model, cfg, task=info.task,
            num_classes=info.num_classes, in_chans=info.in_chans,
            spatial_dims=info.spatial_dims, img_size=size,
            class_names=list(info.class_names), dataset=info.name, fold=index,
            preprocessing=Preprocessing.for_dataset(info, size),
        )


def _finite_best(history: History, cfg: TrainConfig) -> float:
    best = history.best_metric
    if best is None or not math.isfinite(best):
        raise ValueError(f"trial produced no finite {cfg.monitor!r} (got {best!r})")
    return float(best)
