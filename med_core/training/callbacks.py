"""Training callbacks: the only way outside code (pruning, tracking) hooks into a fit.

Every hook is a no-op by default; subclass :class:`Callback` and override what you need.
A callback asks the trainer to stop with ``trainer.request_stop(reason)``; the trainer
finishes the current epoch's bookkeeping and returns from ``fit()`` with
``history.stop_reason`` set. Callbacks must not swallow ``KeyboardInterrupt`` or
out-of-memory errors: they reach the caller.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING
from typing import Any

if TYPE_CHECKING:
    from med_core.training.trainer import History
    from med_core.training.trainer import Trainer

__all__ = ["Callback", "KeepBestWeights"]


class Callback:
    """Base class of trainer callbacks (all hooks are no-ops).

    Hooks run on every DDP rank; use ``trainer.is_main_process`` to act on rank 0 only.
    ``metrics`` holds the epoch's training and validation metrics, already reduced over
    all ranks (e.g. ``{"train_loss": 0.41, "val_auc": 0.88, "lr": 1e-3, ...}``).
    """

    def on_fit_start(self, trainer: Trainer) -> None:
        """Called once before the first epoch (after a resume, before the next epoch)."""

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        """Called before each training epoch (``epoch`` counts from 0)."""

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        """Called after each epoch's validation; may call ``trainer.request_stop(reason)``.

        ``metrics`` is the very dict the trainer records in its history: entries a
        callback adds (custom metrics) are kept. Callbacks run in order, and the best
        epoch and the checkpoints are decided after all of them.
        """

    def on_fit_end(self, trainer: Trainer, history: History) -> None:
        """Called once after the last epoch, also when a callback stopped training early."""

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        """Called when fit() raises (NaN loss, OOM, interrupt); the exception propagates."""

    def state_dict(self) -> dict[str, Any]:
        """State saved into trainer checkpoints so a resumed run continues identically."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restores what :meth:`state_dict` returned."""


class KeepBestWeights(Callback):
    """Keeps a CPU copy of the weights whenever ``cfg.monitor`` improves.

    It decides with the history's own rule (``History.is_better``: NaN never improves), so
    the kept epoch is the one ``best.pt`` would hold, without writing checkpoints. After
    ``fit()``, :meth:`restore` loads them into the trainer's model.

    Attributes:
        state: The best epoch's ``state_dict`` on CPU (``None`` until one improved).
        epoch: That epoch (0-based).
    """

    def __init__(self) -> None:
        self.state: dict[str, Any] | None = None
        self.epoch: int | None = None

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        value = float(metrics.get(trainer.cfg.monitor, math.nan))
        if trainer.history is not None and trainer.history.is_better(value):
            self.state = {
                k: v.detach().to("cpu", copy=True) for k, v in trainer.model.state_dict().items()
            }
            self.epoch = epoch

    def restore(self, trainer: Trainer) -> bool:
        """Loads the kept weights into ``trainer.model``; ``False`` if none was kept."""
        if self.state is None:
            return False
        trainer.model.load_state_dict(self.state)
        return True
