"""The search's console: a live tqdm line, logging routed through it, one line per trial.

:class:`SearchProgress` shows the study's finished trials out of the target (or, with a
wall-clock budget, the search time elapsed and left) with pruned/failed/running counts
and the best value. While it is shown, the console log handlers of medauto, med_core,
Optuna and MLflow write through :func:`tqdm.contrib.logging.logging_redirect_tqdm`, so a
log line never breaks the bar. :func:`trial_summary` is the one INFO line per finished
trial (the epoch lines of a trial are ``DEBUG``: ``-v`` shows them).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from types import TracebackType
from typing import IO
from typing import Any

import optuna
from optuna.trial import TrialState

from medauto.keys import BACKBONE_ATTR
from medauto.keys import DURATION_ATTR
from medauto.keys import EPOCHS_RUN_ATTR
from medauto.keys import REASON_ATTR
from medauto.logging import ROOT_LOGGERS

__all__ = ["CONSOLE_LOGGERS", "SearchProgress", "trial_summary"]

#: The loggers whose console output goes through the bar while it is shown.
CONSOLE_LOGGERS = (*ROOT_LOGGERS, "optuna", "mlflow")


def trial_summary(
    study: optuna.Study, trial: optuna.trial.FrozenTrial, *, metric_names: list[str] | None = None
) -> str:
    """The one line that says how a finished trial went.

    Example: ``trial 3 COMPLETE: mobilenet_v3_small, 2 epochs, val_auc 0.8123, 4.2 s``;
    a pruned or failed trial names its reason: ``trial 4 PRUNED (nan_loss): resnet18,
    1 epoch, 3.0 s``. ``metric_names``: the study's (:attr:`optuna.Study.metric_names`),
    when the caller has read them already (``None``: read from the storage here).
    """
    reason = trial.user_attrs.get(REASON_ATTR)
    head = f"trial {trial.number} {trial.state.name}" + (f" ({reason})" if reason else "")
    parts = [str(trial.user_attrs.get(BACKBONE_ATTR, "-"))]
    epochs = trial.user_attrs.get(EPOCHS_RUN_ATTR, len(trial.intermediate_values))
    parts.append(f"{epochs} epoch{'' if epochs == 1 else 's'}")
    if trial.value is not None:
        names = study.metric_names if metric_names is None else metric_names
        parts.append(f"{names[0] if names else 'value'} {trial.value:.4f}")
    if DURATION_ATTR in trial.user_attrs:
        parts.append(f"{float(trial.user_attrs[DURATION_ATTR]):.1f} s")
    return f"{head}: {', '.join(parts)}"


class SearchProgress:
    """The live line of a search (off when stderr is not a TTY); a context manager.

    Args:
        target: Finished trials the study aims for.
        enabled: ``None`` → on when stderr is a TTY.
        budget_s: With a wall-clock budget, the seconds of its search phase: the line then
            shows the time elapsed and left (redrawn every ``refresh_s``), not a trial count.
        start: ``time.monotonic()`` when the budget started (default: now).
        refresh_s: Seconds between redraws of a budget's time.
    """

    def __init__(
        self,
        target: int,
        *,
        enabled: bool | None = None,
        budget_s: float | None = None,
        start: float | None = None,
        refresh_s: float = 1.0,
    ) -> None:
        from tqdm.auto import tqdm

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.budget_s = budget_s
        self._start = time.monotonic() if start is None else start
        self._tqdm = tqdm
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._counts = "trials 0"
        self._refresh_s = refresh_s
        self._thread: threading.Thread | None = None
        self._redirect: contextlib.ExitStack | None = None
        if budget_s is None:
            self._bar: Any = tqdm(total=target, desc="trials", unit="trial",
                                  disable=not self.enabled, leave=True)
        else:
            self._bar = tqdm(total=max(1, round(budget_s)), desc="search", unit="s",
                             bar_format="{desc} |{bar}| {percentage:3.0f}%{postfix}",
                             disable=not self.enabled, leave=True)

    def __enter__(self) -> SearchProgress:
        if not self.enabled:
            return self
        from tqdm.contrib.logging import logging_redirect_tqdm

        # only loggers that write to the console now (a Python user's own set-up, e.g. a
        # propagating med_core logger without handlers, is left as it is)
        loggers = [lg for lg in map(logging.getLogger, CONSOLE_LOGGERS)
                   if any(isinstance(h, logging.StreamHandler)
                          and h.stream in (sys.stdout, sys.stderr) for h in lg.handlers)]
        self._redirect = contextlib.ExitStack()
        self._redirect.enter_context(logging_redirect_tqdm(loggers=loggers,
                                                           tqdm_class=self._tqdm))
        if self.budget_s is not None:
            self._draw()
            self._thread = threading.Thread(target=self._tick, name="medauto-progress",
                                            daemon=True)
            self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._bar.close()
        if self._redirect is not None:
            self._redirect.close()

    def update(self, study: optuna.Study) -> None:
        """Re-reads the study's counts and redraws the line."""
        if not self.enabled:
            return
        states = [t.state for t in study.get_trials(deepcopy=False)]
        done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        try:
            best = f"{study.best_value:.4f}"
        except ValueError:
            best = "-"
        counts = {
            "pruned": states.count(TrialState.PRUNED),
            "failed": states.count(TrialState.FAIL),
            "running": states.count(TrialState.RUNNING),
        }
        with self._lock:
            if self.budget_s is None:
                self._bar.n = done
                self._bar.set_postfix(**counts, best=best, refresh=False)
                self._bar.refresh()
                return
            self._counts = (f"trials {done} ("
                            + ", ".join(f"{k} {v}" for k, v in counts.items())
                            + f"), best {best}")
        self._draw()

    def relay(self, stream: IO[bytes]) -> None:
        """Writes each line of ``stream`` (a child worker's stderr) above the bar, until
        the stream ends."""
        for raw in stream:
            self._tqdm.write(raw.decode(errors="replace").rstrip("\n"), file=sys.stderr)

    def _tick(self) -> None:
        while not self._stop.wait(self._refresh_s):
            self._draw()

    def _draw(self) -> None:
        """A budget's line: search time elapsed and left, then the trial counts."""
        assert self.budget_s is not None
        fmt = self._tqdm.format_interval
        elapsed = time.monotonic() - self._start
        left = max(0.0, self.budget_s - elapsed)
        with self._lock:
            self._bar.n = min(self._bar.total, round(elapsed))
            self._bar.set_description_str(
                f"search: {fmt(elapsed)} elapsed, {fmt(left)} left of {fmt(self.budget_s)}",
                refresh=False)
            self._bar.set_postfix_str(self._counts, refresh=False)
            self._bar.refresh()
