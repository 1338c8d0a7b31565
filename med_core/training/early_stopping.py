"""Early stopping as a :class:`~med_core.training.Callback`."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from typing import Any

from med_core.training.callbacks import Callback

if TYPE_CHECKING:
    from med_core.training.trainer import Trainer

__all__ = ["EarlyStopping"]


class EarlyStopping(Callback):
    """Stops training when ``monitor`` has not improved for ``patience`` epochs.

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (greater for ``mode="max"``, smaller for ``"min"``). A NaN value never improves. After
    ``patience`` epochs in a row without improvement the callback calls
    ``trainer.request_stop("early_stopping")``; the history's ``stop_reason`` becomes
    ``"early_stopping"``. Its counters are saved in trainer checkpoints, so a resumed run
    stops at the same epoch as an uninterrupted one.

    Args:
        monitor:
            Metric name in the epoch's metrics (e.g. ``"val_auc"``, ``"val_loss"``).
        patience:
            Epochs without improvement before stopping (>= 1).
        mode:
            ``"max"`` or ``"min"``; default ``"min"`` for names ending in ``loss``, else
            ``"max"``.
        min_delta:
            Minimum change that counts as an improvement (>= 0).

    Raises:
        ValueError: ``patience < 1``, a negative ``min_delta`` or an unknown ``mode``.

    Example:
        >>> class _T:
        ...     stop = None
        ...     def request_stop(self, reason): self.stop = reason
        >>> es, t = EarlyStopping("val_auc", patience=2), _T()
        >>> for epoch, auc in enumerate([0.6, 0.7, 0.69, 0.7]):
        ...     es.on_epoch_end(t, epoch, {"val_auc": auc})
        >>> t.stop, es.stopped_epoch
        ('early_stopping', 3)
    """

    def __init__(
        self,
        monitor: str = "val_auc",
        *,
        patience: int = 5,
        mode: str | None = None,
        min_delta: float = 0.0,
    ) -> None:
        if not isinstance(patience, int) or patience < 1:
            raise ValueError(f"patience must be an integer >= 1, got {patience!r}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta!r}")
        mode = mode or ("min" if monitor.endswith("loss") else "max")
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        self.monitor = monitor
        self.patience = patience
        self.mode = mode
        self.min_delta = float(min_delta)
        self.best: float | None = None
        self.wait = 0
        self.stopped_epoch: int | None = None

    def _improves(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.best is None:
            return True
        if self.mode == "max":
            return value > self.best + self.min_delta
        return value < self.best - self.min_delta

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if self.monitor not in metrics:
            raise KeyError(
                f"EarlyStopping monitors {self.monitor!r}, which is not among the epoch's "
                f"metrics {sorted(metrics)}"
            )
        value = float(metrics[self.monitor])
        if self._improves(value):
            self.best = value
            self.wait = 0
            return
        self.wait += 1
        if self.wait >= self.patience:
            self.stopped_epoch = epoch
            trainer.request_stop("early_stopping")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "wait": self.wait, "stopped_epoch": self.stopped_epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best = state["best"]
        self.wait = int(state["wait"])
        self.stopped_epoch = state["stopped_epoch"]
