"""Optuna pruning inside a med_core fit: :class:`PruningCallback` reports each epoch to the
trial and stops a pruned one.

medauto's other med_core callbacks live with the concept they serve: the budget's in
:mod:`medauto.budget`, the MLflow run of a trial in :mod:`medauto.tracking`.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from med_core.training.callbacks import Callback

if TYPE_CHECKING:
    import optuna

    from med_core.training import Trainer

__all__ = ["PruningCallback"]


class PruningCallback(Callback):
    """Reports the monitored metric to an Optuna trial after every epoch; stops pruned trials.

    The step reported is the number of epochs done (1, 2, ...), the resource Hyperband and
    successive halving count in. On a DDP group only rank 0 holds a trial (``trial=None``
    elsewhere); the trainer broadcasts rank 0's stop request so every rank stops at the same
    epoch.

    Args:
        trial: The trial to report to (``None`` on non-zero DDP ranks).
        monitor: Metric name in the epoch's metrics (e.g. ``"val_auc"``).
        report_from: The first step to report: a trial fitted again after its first two
            epochs were timed and reported (:mod:`medauto.trial_timing`) starts at 3.
    """

    def __init__(self, trial: optuna.trial.BaseTrial | None, monitor: str, *,
                 report_from: int = 1) -> None:
        self.trial = trial
        self.monitor = monitor
        self.report_from = report_from
        self.pruned_at_epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.trial is None:
            return
        value = metrics.get(self.monitor)
        if value is None:
            raise KeyError(
                f"monitored metric {self.monitor!r} not in epoch metrics {sorted(metrics)}"
            )
        if math.isfinite(value) and epoch + 1 >= self.report_from:
            self.trial.report(float(value), step=epoch + 1)
        if self.trial.should_prune():
            self.pruned_at_epoch = epoch + 1
            trainer.request_stop("pruned")
