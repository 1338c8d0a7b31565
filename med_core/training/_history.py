"""The :class:`History` of a fit: per-epoch metrics, best epoch, stop reason."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from dataclasses import field
from typing import Any

__all__ = ["History"]


@dataclass
class History:
    """Per-epoch metrics of a fit, the best epoch and why training stopped.

    Iterating, indexing and ``len()`` act on :attr:`epochs`, the list of per-epoch
    dicts with the keys ``epoch`` (0-based), ``train_loss``, ``val_loss``, ``val_auc``,
    ``val_acc``, ``val_balanced_acc``, ``val_macro_f1``, ``lr`` (at the end of the epoch),
    ``epoch_time_s`` (training + validation, seconds) and ``images_per_s`` (training
    images per second over all ranks), plus anything callbacks added.

    Attributes:
        monitor: The metric that selects the best epoch (``TrainConfig.monitor``).
        mode: ``"max"`` or ``"min"``.
        best_epoch: 0-based epoch of the best ``monitor`` value (``None`` if every value
            was NaN).
        best_metric: That value.
        stop_reason: ``"completed"``, ``"early_stopping"`` or ``"callback:<reason>"``;
            ``None`` while training runs.
    """

    monitor: str = "val_auc"
    mode: str = "max"
    epochs: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int | None = None
    best_metric: float | None = None
    stop_reason: str | None = None

    def __len__(self) -> int:
        return len(self.epochs)

    def __iter__(self) -> Iterator[dict[str, float]]:
        return iter(self.epochs)

    def __getitem__(self, i: int) -> dict[str, float]:
        return self.epochs[i]

    def metric(self, name: str) -> list[float]:
        """The per-epoch values of one metric (``NaN`` where an epoch lacks it)."""
        return [float(e.get(name, math.nan)) for e in self.epochs]

    def is_better(self, value: float) -> bool:
        """Whether ``value`` beats :attr:`best_metric` (NaN never does)."""
        if math.isnan(value):
            return False
        if self.best_metric is None:
            return True
        return value > self.best_metric if self.mode == "max" else value < self.best_metric

    def to_dict(self) -> dict[str, Any]:
        """Plain containers only (JSON- and ``weights_only``-safe)."""
        return {
            "monitor": self.monitor,
            "mode": self.mode,
            "epochs": [dict(e) for e in self.epochs],
            "best_epoch": self.best_epoch,
            "best_metric": self.best_metric,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> History:
        """Inverse of :meth:`to_dict`."""
        return cls(
            monitor=d["monitor"],
            mode=d["mode"],
            epochs=[dict(e) for e in d["epochs"]],
            best_epoch=d["best_epoch"],
            best_metric=d["best_metric"],
            stop_reason=d["stop_reason"],
        )
