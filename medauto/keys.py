"""The string keys medauto stores on Optuna studies and trials: one owner for every name.

A study or trial attribute is written by one module and read by others (the worker, the
objective, status, the report, retrain, tracking, the dashboard); each name is defined
here once, so a writer and its readers cannot drift apart. The module imports nothing,
so every module may import it.

Study attributes:

* :data:`SETTINGS_ATTR` (user): the :class:`~medauto.study.StudySettings` dict.
* :data:`PARENT_RUN_ATTR` (user): the MLflow parent run of the study.
* :data:`HEARTBEAT_ATTR` (system, a prefix): ``medauto:heartbeat:<trial id>`` holds a
  journal trial's last beat (Unix time). It is a study attribute, not a trial one, so it
  stays out of ``Study.trials_dataframe()`` and a retried trial (a new trial id) cannot
  inherit it.

Trial user attributes are the ``*_ATTR`` names below; :data:`ATTEMPT_ATTRS` are those of
a failed attempt that its retry does not inherit.
"""

from __future__ import annotations

__all__ = [
    "ATTEMPT_ATTRS",
    "BACKBONE_ATTR",
    "BAGGED_FROM_ATTR",
    "BEST_EPOCH_ATTR",
    "BUDGET_STOP_ATTR",
    "CONFIG_ATTR",
    "DEVICE_ATTR",
    "DURATION_ATTR",
    "EPOCHS_FITTED_ATTR",
    "EPOCHS_RUN_ATTR",
    "FOLD_VALUES_ATTR",
    "HEARTBEAT_ATTR",
    "HISTORY_ATTR",
    "MEMBERS_ATTR",
    "MLFLOW_RUN_ATTR",
    "OOM_RETRY_ATTR",
    "PARENT_RUN_ATTR",
    "PORTFOLIO_ATTR",
    "PRUNED_AT_EPOCH_ATTR",
    "PRUNED_AT_FOLD_ATTR",
    "REASON_ATTR",
    "RETRIED_FROM_ATTR",
    "SEED_ATTR",
    "SETTINGS_ATTR",
    "TRACEBACK_ATTR",
    "TRAIN_S_ATTR",
    "WORKER_ATTR",
]

# ------------------------------------------------------------------------------ studies
#: The study's settings (space, data, metric, direction, target, selection).
SETTINGS_ATTR = "medauto:settings"
#: The MLflow run every trial's run is a child of.
PARENT_RUN_ATTR = "medauto:mlflow_parent_run_id"
#: Prefix of the journal backend's heartbeat study system attributes.
HEARTBEAT_ATTR = "medauto:heartbeat"

# ------------------------------------------------------------------------------- trials
#: ``host:pid`` of the process that runs the trial. Set when the trial is created, so its
#: presence marks a medauto trial (one that must beat; a foreign client's trial has none).
WORKER_ATTR = "worker"
#: The device the trial trained on (``"cpu"``, ``"cuda:0"``, ...).
DEVICE_ATTR = "device"
#: The trial's full ``TrainConfig.to_dict()`` (what retrain and the final model rebuild).
CONFIG_ATTR = "config"
#: ``cfg.model.backbone``, for tables and the dashboard.
BACKBONE_ATTR = "backbone"
#: Why the trial failed or was pruned (``"pruned"``, ``"oom"``, ``"nan_loss"``, ...).
REASON_ATTR = "reason"
#: The last lines of a failed trial's traceback.
TRACEBACK_ATTR = "traceback"
#: Wall seconds the trial ran.
DURATION_ATTR = "duration_s"
#: The trial's MLflow child run.
MLFLOW_RUN_ATTR = "mlflow_run_id"
#: Epochs trained (the first fold's with cross-validation).
EPOCHS_RUN_ATTR = "epochs_run"
#: ``history.best_epoch`` of the trial's fit (the first fold's with cross-validation).
BEST_EPOCH_ATTR = "best_epoch"
#: Per-epoch metrics (``history_for_attrs``).
HISTORY_ATTR = "history"
#: Seconds each fit of the trial spent in training steps (one entry per fit: every fold
#: of a cross-validated trial, and a fit the budget probe stopped), from the images per
#: second of its epochs.
TRAIN_S_ATTR = "train_s"
#: The epoch after which the pruner stopped the trial.
PRUNED_AT_EPOCH_ATTR = "pruned_at_epoch"
#: 1-based fold at which a cross-validated trial was pruned.
PRUNED_AT_FOLD_ATTR = "pruned_at_fold"
#: Each fold's value of a cross-validated trial.
FOLD_VALUES_ATTR = "fold_values"
#: Epochs the budget probe found to fit the trial's time cap.
EPOCHS_FITTED_ATTR = "epochs_fitted"
#: Why and when the budget stopped the trial.
BUDGET_STOP_ATTR = "budget_stop"
#: Whether the trial is an OOM retry at a smaller batch size.
OOM_RETRY_ATTR = "oom_retry"
#: The name of the portfolio entry the trial was enqueued from.
PORTFOLIO_ATTR = "portfolio"
#: The trial's saved members folder (relative to the run folder).
MEMBERS_ATTR = "members"
#: An enqueued seed repeat of the best trial (:mod:`medauto.bagging`): its training seed.
SEED_ATTR = "seed"
#: An enqueued seed repeat: the number of the trial it repeats.
BAGGED_FROM_ATTR = "bagged_from"

# ------------------------------------------------------------------------ Optuna's own
#: System attribute Optuna's stale-trial retry callback writes on a re-enqueued trial: the
#: number of the trial it retries (what ``RetryFailedTrialCallback.retried_trial_number``
#: reads, an experimental function that warns on every call).
RETRIED_FROM_ATTR = "failed_trial"

#: User attributes of a failed attempt that its retry does not inherit.
ATTEMPT_ATTRS = (REASON_ATTR, TRACEBACK_ATTR, MLFLOW_RUN_ATTR, DURATION_ATTR, TRAIN_S_ATTR)
