"""One trial: search space → TrainConfig → med_core Trainer with pruning → validation metric.

The objective records, as trial user attributes readable in optuna-dashboard: ``config``
(the full TrainConfig as a nested dict), ``backbone``, ``history`` (per-epoch metrics),
``best_epoch``, ``epochs_run`` and, for a pruned trial, ``pruned_at_epoch`` (epochs are
1-based everywhere: these attributes, the pruner's steps and the MLflow steps). Failures are
classified by :func:`medauto._worker.classify_failure`, not here: the objective lets every
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
from medauto._worker import TIMING_ENV
from medauto._worker import record_phase
from medauto._worker import timed
from medauto.fingerprint import Selection
from medauto.logging import get_logger
from medauto.members import MEMBERS_ATTR
from medauto.members import member_dir
from medauto.members import model_path
from medauto.members import save_selection_scores
from medauto.pruning import PruningCallback

if TYPE_CHECKING:
    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from med_core.training import Callback
    from med_core.training import History
    from med_core.training import Trainer
    from medauto.space import SearchSpace

__all__ = ["Objective", "history_for_attrs"]

_logger = get_logger(__name__)

#: Stop reason of the epoch probe (it always stops after timing two epochs).
PROBED = "epoch_probe"

CallbackFactory = Callable[[optuna.trial.BaseTrial, "TrainConfig"], Sequence["Callback"]]


def history_for_attrs(history: History) -> list[dict[str, float]]:
    """Per-epoch metrics as JSON-safe dicts (floats rounded to 6 significant digits), with
    ``epoch`` 1-based, as the pruner's steps and the MLflow steps count epochs."""
    out = []
    for row in history.epochs:
        clean = {k: (float(f"{v:.6g}") if math.isfinite(v) else None) for k, v in row.items()}
        out.append({**clean, "epoch": int(row["epoch"]) + 1})
    return out  # type: ignore[return-value]


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


class _EpochProbe(_Callback):
    """Times the first two epochs of a fit, then always stops it.

    The first epoch carries one-off set-up (model build, kernel selection), so the
    projection of a fit of ``E`` epochs is ``first + (E - 1) * second``.
    """

    def __init__(self) -> None:
        self.first_s: float | None = None
        self.epoch_s: float | None = None
        self._mark = 0.0

    def on_fit_start(self, trainer: Any) -> None:
        self._mark = time.monotonic()

    def on_epoch_end(self, trainer: Any, epoch: int, metrics: dict[str, float]) -> None:
        now = time.monotonic()
        if epoch == 0:
            self.first_s = now - self._mark
        else:
            self.epoch_s = now - self._mark
        self._mark = now
        if epoch >= 1 or trainer.cfg.epochs <= 2:
            trainer.request_stop(PROBED)

    def projected(self, epochs: int) -> float:
        """Seconds a fit of ``epochs`` epochs would take."""
        first = self.first_s or 0.0
        return first + (epochs - 1) * (self.epoch_s if self.epoch_s is not None else first)


def fit_epochs(epochs: int, first_s: float, epoch_s: float, cap_s: float) -> int:
    """The most epochs (1 to ``epochs``) whose projected time fits ``cap_s``.

    Example:
        >>> fit_epochs(100, first_s=5.0, epoch_s=1.0, cap_s=50.0)
        46
    """
    return max(1, min(epochs, int((cap_s - first_s) / max(epoch_s, 1e-9)) + 1))


def _oom_fallback(cfg: TrainConfig) -> TrainConfig | None:
    """``cfg`` with gradient checkpointing on and half the batch; ``None`` if no smaller."""
    from med_core.config import TrainConfig

    segments = cfg.model.checkpoint_segments
    batch = max(1, cfg.batch_size // 2)
    if segments is not None and batch == cfg.batch_size:
        return None
    changes: dict[str, Any] = {"batch_size": batch}
    if segments is None:
        changes["model.checkpoint_segments"] = 0  # the backbone family's default
    return TrainConfig.from_flat(changes, base=cfg)


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
        artifact_store: If given, each trial that trained (complete or pruned) uploads its
            learning curve and validation confusion matrix there (``medauto.artifacts``).
        oom_retry: On out-of-memory, train the trial once more with gradient checkpointing
            on (the backbone's default segments) and half the batch size; the retry's
            settings are recorded in the ``oom_retry`` user attribute, and ``config``
            holds what was really trained. A second OOM propagates (reason ``oom``).
        selection: How a trial is scored (:class:`~medauto.fingerprint.Selection`):
            holdout on the validation split (default) or k-fold CV on train+val.
        trial_cap_s: If given (a budgeted search), the longest a trial may train. A probe
            fit times two epochs first; when the configured epochs would not fit (all folds
            together), the trial trains the epochs that do, so it completes a whole
            learning-rate schedule instead of being cut mid-way; the ``epochs_fitted``
            user attribute records it.
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
        oom_retry: bool = False,
        selection: Selection | None = None,
        trial_cap_s: float | None = None,
        members_root: Path | None = None,
    ) -> None:
        self.space = space
        self.dataset = dataset
        self.device = device
        self.callbacks = callbacks
        self.overrides = dict(overrides or {})
        self.out_dir = out_dir
        self.progress = progress
        self.artifact_store = artifact_store
        self.oom_retry = oom_retry
        self.selection = selection or Selection()
        self.members_root = members_root
        self.trial_cap_s = trial_cap_s

        self.last_epochs_run = 0

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        cfg = self.suggest(trial)
        if not self.oom_retry:
            return self.train(trial, cfg)
        from med_core.device import is_oom
        from med_core.device import release_memory

        try:
            return self.train(trial, cfg)
        except Exception as exc:
            smaller = _oom_fallback(cfg) if is_oom(exc) else None
            if smaller is None:
                raise
            first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # Outside the except block, so the first attempt's frames and tensors can be freed.
        release_memory()
        retry = {
            "batch_size": smaller.batch_size,
            "checkpoint_segments": smaller.model.checkpoint_segments,
            "first_error": first_error[:300],
        }
        _logger.warning(
            "trial %d ran out of memory; retrying once with gradient checkpointing on and "
            "batch_size %d", trial.number, smaller.batch_size,
        )
        trial.set_user_attr("oom_retry", retry)
        return self.train(trial, smaller)

    def suggest(self, trial: optuna.trial.BaseTrial) -> TrainConfig:
        """The trial's TrainConfig: the space's suggestion on top of the overrides."""
        from med_core.config import TrainConfig

        with timed("suggest", trial.number):
            return self.space.suggest(trial, base=TrainConfig.from_flat(self.overrides))

    def train(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, **trainer_kwargs: Any
    ) -> float:
        """Trains ``cfg`` for ``trial``; raises ``optuna.TrialPruned`` when pruned.

        With holdout selection the value is the best validation metric, reported to the
        pruner after every epoch. With cross-validated selection every fold trains in
        turn, the value is the mean of the folds' best metrics, and the pruner hears one
        report per fold (step = folds done), so it can stop a weak configuration early.
        """
        n = trial.number
        with timed("trial_attrs", n):
            trial.set_user_attr("backbone", cfg.model.backbone)
        cfg = self._fit_to_budget(trial, cfg, **trainer_kwargs)
        with timed("trial_attrs", n):
            trial.set_user_attr("config", cfg.to_dict())
        with timed("tracking_trial_start", n):
            extra = list(self.callbacks(trial, cfg)) if self.callbacks else []
        if self.selection.mode == "cv":
            return self._train_folds(trial, cfg, extra, **trainer_kwargs)
        keep = self.members_root is not None or self.artifact_store is not None
        keeper = KeepBestWeights() if keep else None
        trainer, history, pruning = self._fit(
            trial, cfg, self.dataset, per_epoch_pruning=True, extra=extra, keeper=keeper,
            **trainer_kwargs,
        )
        self._record(trial, trainer, history, keeper)
        # The stop reason, not the callback, says "pruned": on a DDP group only rank 0's
        # callback decides, and the trainer hands its reason to every rank.
        if history.stop_reason == "callback:pruned":
            epoch = (pruning.pruned_at_epoch if pruning else None) or len(history.epochs)
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        best = _finite_best(history, cfg)
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
    def _fit_to_budget(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, **trainer_kwargs: Any
    ) -> TrainConfig:
        """``cfg``, or ``cfg`` with fewer epochs when one epoch says it cannot fit the cap."""
        from med_core.config import TrainConfig
        from med_core.training import Trainer

        if self.trial_cap_s is None or cfg.epochs <= 1 or "dist" in trainer_kwargs:
            return cfg  # (a DDP group's ranks would time the epoch differently)
        cap = self.trial_cap_s / self.selection.folds
        probe = _EpochProbe()
        data = self.dataset
        if self.selection.mode == "cv":  # a fold's size, not train's
            from med_core.data import cross_validation_folds

            _, data = next(iter(cross_validation_folds(data, self.selection.folds,
                                                       seed=self.selection.seed)))
        with timed("epoch_probe", trial.number):
            trainer = Trainer(cfg, dataset=data, device=self.device, callbacks=[probe],
                              progress=False, epoch_log_level=logging.DEBUG,
                              log_prefix=f"trial {trial.number} (epoch probe): ",
                              **trainer_kwargs)
            trainer.fit()
            trainer.close()
        if probe.first_s is None or probe.projected(cfg.epochs) <= cap:
            return cfg
        epochs = fit_epochs(cfg.epochs, probe.first_s, probe.epoch_s or probe.first_s, cap)
        trial.set_user_attr("epochs_fitted", {
            "from": cfg.epochs, "to": epochs, "first_epoch_s": round(probe.first_s, 3),
            "epoch_s": round(probe.epoch_s or probe.first_s, 3), "cap_s": round(cap, 3)})
        _logger.info("trial %d: %d epochs (%.1f s, then %.2f s each) would exceed the %.0f s "
                     "cap; training %d", trial.number, cfg.epochs, probe.first_s,
                     probe.epoch_s or probe.first_s, cap, epochs)
        return TrainConfig.from_flat({"epochs": epochs}, base=cfg)

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
        **trainer_kwargs: Any,
    ) -> tuple[Trainer, History, PruningCallback | None]:
        """One fit of ``cfg`` on ``dataset`` with the trial's callbacks (``extra``: built
        once per trial, so a cross-validated trial has one tracking run, not one a fold).

        Its epoch lines are logged at ``DEBUG``, as ``trial N[ fold]: epoch ...``."""
        from med_core.training import Trainer

        n = trial.number
        pruning = PruningCallback(trial, cfg.monitor) if per_epoch_pruning else None
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
        return trainer, history, pruning

    def _record(
        self, trial: optuna.trial.BaseTrial, trainer: Trainer, history: History,
        keeper: KeepBestWeights | None,
    ) -> None:
        """The trial's history attributes (epochs 1-based) and its artifacts: the learning
        curve, and the confusion matrix of the best epoch's weights (``keeper``'s, which
        are restored first), the epoch the trial's value comes from."""
        n = trial.number
        best = None if history.best_epoch is None else history.best_epoch + 1
        with timed("trial_attrs", n):
            trial.set_user_attr("history", history_for_attrs(history))
            trial.set_user_attr("epochs_run", len(history.epochs))
            trial.set_user_attr("best_epoch", best)
        if self.artifact_store is not None:  # never raises; every DDP rank calls it
            from medauto.artifacts import trial_artifacts

            restored = keeper is not None and keeper.restore(trainer)
            with timed("artifacts", n):
                trial_artifacts(trial, trainer, history, artifact_store=self.artifact_store,
                                weights_epoch=best if restored else None)

    def _train_folds(
        self, trial: optuna.trial.BaseTrial, cfg: TrainConfig, extra: list[Any],
        **trainer_kwargs: Any,
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
            trainer, history, _ = self._fit(
                trial, cfg, fold_ds, per_epoch_pruning=False, extra=extra, keeper=keeper,
                fold=f" fold {j + 1}/{k}", **trainer_kwargs,
            )
            if j == 0:
                self._record(trial, trainer, history, keeper)
            if history.stop_reason == "callback:pruned":  # the search's time is spent
                trial.set_user_attr("pruned_at_fold", j + 1)
                raise optuna.TrialPruned(f"pruned in fold {j + 1} of {k}")
            values.append(_finite_best(history, cfg))
            keeper.restore(trainer)
            _, score = trainer.predict("val", tta=cfg.tta)
            if oof is None:
                oof = np.zeros((len(pool_y), *score.shape[1:]), dtype=np.float32)
            oof[val_idx] = score
            if folder is not None:
                with timed("members", n):
                    self._save_model(folder, j, trainer, cfg)
            trainer.close()
            trial.set_user_attr("fold_values", [float(f"{v:.6g}") for v in values])
            trial.report(values[-1], step=j + 1)
            if j + 1 < k and trial.should_prune():
                trial.set_user_attr("pruned_at_fold", j + 1)
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
        save_model(
            model_path(folder, index), trainer.model, cfg, task=info.task,
            num_classes=info.num_classes, in_chans=info.in_chans,
            spatial_dims=info.spatial_dims, img_size=cfg.data.img_size or list(info.image_size),
            class_names=list(info.class_names), dataset=info.name, fold=index,
        )


def _finite_best(history: History, cfg: TrainConfig) -> float:
    best = history.best_metric
    if best is None or not math.isfinite(best):
        raise ValueError(f"trial produced no finite {cfg.monitor!r} (got {best!r})")
    return float(best)
