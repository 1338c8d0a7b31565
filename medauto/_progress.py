"""A live one-line view of a search: trials done/target, pruned, failed, best, elapsed."""

from __future__ import annotations

import sys
import time
from typing import Any

import optuna
from optuna.trial import TrialState

__all__ = ["SearchProgress"]


class SearchProgress:
    """A tqdm bar over the study's finished trials (off when stderr is not a TTY).

    Args:
        target: Finished trials the study aims for.
        enabled: ``None`` → on when stderr is a TTY.
    """

    def __init__(self, target: int, *, enabled: bool | None = None) -> None:
        from tqdm.auto import tqdm

        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self._start = time.monotonic()
        self._bar: Any = tqdm(
            total=target, desc="trials", unit="trial", disable=not self.enabled, leave=True
        )

    def update(self, study: optuna.Study) -> None:
        """Re-reads the study's counts and redraws the line."""
        if not self.enabled:
            return
        trials = study.get_trials(deepcopy=False)
        states = [t.state for t in trials]
        done = states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED)
        best = None
        try:
            best = study.best_value
        except ValueError:
            pass
        self._bar.n = done
        self._bar.set_postfix(
            pruned=states.count(TrialState.PRUNED),
            failed=states.count(TrialState.FAIL),
            running=states.count(TrialState.RUNNING),
            best="-" if best is None else f"{best:.4f}",
            refresh=False,
        )
        self._bar.refresh()

    def close(self) -> None:
        """Ends the bar's line."""
        self._bar.close()
