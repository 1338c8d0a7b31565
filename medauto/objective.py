"""One trial: search space → TrainConfig → med_core Trainer with pruning → validation metric.

The objective records, as trial user attributes readable in optuna-dashboard: ``config``
(the full TrainConfig as a nested dict), ``backbone``, ``history`` (per-epoch metrics),
``best_epoch``, ``epochs_run`` and, for a pruned trial, ``pruned_at_epoch``. Failures are
classified by :func:`medauto._worker.classify_failure`, not here: the objective lets every
exception propagate.
"""

from __future__ import annotations

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
from medauto._worker import TIMING_ENV
from medauto._worker import record_phase
from medauto._worker import timed
from medauto.callbacks import PruningCallback
from medauto.logging import get_logger

if TYPE_CHECKING:
    from med_core.config import TrainConfig
    from med_core.data import MedicalDataset
    from med_core.training import Callback
    from med_core.training import History
    from medauto.space import SearchSpace

__all__ = ["Objective", "history_for_attrs"]

_logger = get_logger(__name__)

CallbackFactory = Callable[[optuna.trial.BaseTrial, "TrainConfig"], Sequence["Callback"]]


def history_for_attrs(history: History) -> list[dict[str, float]]:
    """Per-epoch metrics as JSON-safe dicts (floats rounded to 6 significant digits)."""
    out = []
    for row in history.epochs:
        out.append(
            {k: (float(f"{v:.6g}") if math.isfinite(v) else None) for k, v in row.items()}
        )
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

        self.last_epochs_run = 0

    def __call__(self, trial: optuna.trial.BaseTrial) -> float:
        cfg = self.suggest(trial)
        if not self.oom_retry:
            return self.train(trial, cfg)
        from medauto._worker import _is_oom
        from medauto._worker import _release_memory

        try:
            return self.train(trial, cfg)
        except Exception as exc:
            smaller = _oom_fallback(cfg) if _is_oom(exc) else None
            if smaller is None:
                raise
            first_error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        # Outside the except block, so the first attempt's frames and tensors can be freed.
        _release_memory()
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
        """Trains ``cfg`` for ``trial``; raises ``optuna.TrialPruned`` when pruned."""
        from med_core.training import Trainer

        n = trial.number
        with timed("trial_attrs", n):
            trial.set_user_attr("config", cfg.to_dict())
            trial.set_user_attr("backbone", cfg.model.backbone)
        pruning = PruningCallback(trial, cfg.monitor)
        with timed("tracking_trial_start", n):
            extra = list(self.callbacks(trial, cfg)) if self.callbacks else []
        callbacks: list[Any] = [pruning, *extra]
        if os.environ.get(TIMING_ENV):
            timer = _FitTimer(n, cfg.batch_size, len(self.dataset.train))
            callbacks = [
                timer.marker("first"), pruning, timer.marker("pruning_report"),
                *extra, timer.marker("tracking_epoch_log"),
            ]
        out_dir = self.out_dir / f"trial_{trial.number}" if self.out_dir else None
        trainer = Trainer(
            cfg,
            dataset=self.dataset,
            device=self.device,
            callbacks=callbacks,
            out_dir=out_dir,
            progress=self.progress,
            **trainer_kwargs,
        )
        self.last_epochs_run = 0
        history = trainer.fit()
        self.last_epochs_run = len(history.epochs)
        with timed("trial_attrs", n):
            trial.set_user_attr("history", history_for_attrs(history))
            trial.set_user_attr("epochs_run", len(history.epochs))
            trial.set_user_attr("best_epoch", history.best_epoch)
        if self.artifact_store is not None:  # never raises; every DDP rank calls it
            from medauto.artifacts import trial_artifacts

            with timed("artifacts", n):
                trial_artifacts(trial, trainer, history, artifact_store=self.artifact_store)
        # The stop reason, not the callback, says "pruned": on a DDP group only rank 0's
        # callback decides, and the trainer hands its reason to every rank.
        if history.stop_reason == "callback:pruned":
            epoch = pruning.pruned_at_epoch or len(history.epochs)
            trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"pruned after epoch {epoch}")
        best = history.best_metric
        if best is None or not math.isfinite(best):
            raise ValueError(f"trial produced no finite {cfg.monitor!r} (got {best!r})")
        return float(best)
