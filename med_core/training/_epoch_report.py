"""What one epoch of a fit shows and records: its progress bar, its stop reason, its log line.

:meth:`Trainer._run_epoch <med_core.training.Trainer>` trains and evaluates; this module
turns what it measured into the tqdm bar, the ``history.stop_reason`` name and the one
line per epoch, so the trainer keeps the order of the steps and nothing of their display.
"""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Callable
from types import TracebackType
from typing import Any

__all__ = ["EpochBar", "log_epoch", "stop_reason"]


class EpochBar:
    """The tqdm bar of one training epoch; a no-op when it is not shown (a context manager).

    Args:
        show: ``None`` shows it when stderr is a TTY, ``True`` always, ``False`` never.
        main_process: Only the main process shows one.
        desc: The bar's label, e.g. ``"epoch 1/10"``.
        total: Batches in the epoch.

    Example:
        >>> with EpochBar(False, main_process=True, desc="epoch 1/1", total=3) as bar:
        ...     bar.on_window is None
        True
    """

    def __init__(self, show: bool | None, *, main_process: bool, desc: str, total: int) -> None:
        visible = show if show is not None else sys.stderr.isatty()
        self._bar: Any = None
        if visible and main_process:
            from tqdm.auto import tqdm

            self._bar = tqdm(
                total=total, desc=desc, unit="batch", file=sys.stderr, dynamic_ncols=True,
                leave=True,
            )

    @property
    def on_window(self) -> Callable[[int, float], None] | None:
        """``train_epoch``'s ``on_window``: moves the bar to ``steps`` and shows the running
        loss; ``None`` when the bar is not shown (the loop then skips the call)."""
        return None if self._bar is None else self._update

    def _update(self, steps: int, mean_loss: float) -> None:
        self._bar.update(steps - self._bar.n)
        self._bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)

    def finish(self, train_loss: float, monitor: str, value: float) -> None:
        """Fills the bar and shows the epoch's training loss and monitored metric."""
        if self._bar is not None:
            self._bar.update(self._bar.total - self._bar.n)
            self._bar.set_postfix({"loss": f"{train_loss:.4f}", monitor: f"{value:.4f}"})

    def __enter__(self) -> EpochBar:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()


def stop_reason(request: str | None, *, completed: bool) -> str | None:
    """``history.stop_reason`` after an epoch: the agreed stop request, else ``"completed"``
    once the last epoch ran, else ``None`` (training goes on).

    Example:
        >>> stop_reason("time budget", completed=False), stop_reason(None, completed=True)
        ('callback:time budget', 'completed')
        >>> stop_reason("early_stopping", completed=True)
        'early_stopping'
    """
    if request is None:
        return "completed" if completed else None
    if request == "early_stopping" or request.startswith("callback:"):
        return request
    return f"callback:{request}"


def log_epoch(
    logger: logging.Logger,
    level: int,
    epoch: int,
    metrics: dict[str, float],
    *,
    prefix: str,
    epochs: int,
    monitor: str,
    reason: str | None,
) -> None:
    """Logs the one line of epoch ``epoch`` (0-based; shown 1-based): losses, the monitored
    metric, time, speed and, on the last one, why training stopped."""
    logger.log(
        level,
        "%sepoch %d/%d: train_loss=%.4f val_loss=%.4f %s=%.4f (%.1f s, %.0f img/s)%s",
        prefix,
        epoch + 1,
        epochs,
        metrics["train_loss"],
        metrics["val_loss"],
        monitor,
        float(metrics.get(monitor, math.nan)),
        metrics["epoch_time_s"],
        metrics["images_per_s"],
        f" -> stop: {reason}" if reason else "",
    )
