"""Budget parsing and splitting (medauto.budget) and the CLI's --budget errors."""

from __future__ import annotations

import pytest

from medauto.budget import MIN_START_SHARE
from medauto.budget import BudgetCallback
from medauto.budget import BudgetError
from medauto.budget import DeadlineCallback
from medauto.budget import format_seconds
from medauto.budget import parse_budget
from medauto.budget import plan_budget


@pytest.mark.parametrize(("text", "seconds"), [
    ("90s", 90.0), ("15m", 900.0), ("1h", 3600.0), ("1h30m", 5400.0), ("2.5m", 150.0),
    ("1h0m30s", 3630.0), (" 15M ", 900.0), ("120", 120.0), (45, 45.0), (60.5, 60.5),
])
def test_parse_budget_accepts_durations(text: str | float, seconds: float) -> None:
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("bad", ["", "15", "abc", "15x", "m15", "30s1m", "1h1h", "-5m",
                                 "5s", True, float("nan"), float("inf")])
def test_parse_budget_rejects_bad_input(bad: object) -> None:
    if bad == "15":  # a bare number is seconds, and 15 s is a (tiny) valid budget
        assert parse_budget(bad) == 15.0
        return
    with pytest.raises(BudgetError, match="budget must"):
        parse_budget(bad)  # type: ignore[arg-type]


def test_format_round_trips() -> None:
    for s in (90.0, 900.0, 5400.0, 3630.0):
        assert parse_budget(format_seconds(s)) == s


def test_plan_splits_everything_and_caps_trials() -> None:
    plan = plan_budget("15m", seeds=3)
    assert plan.total_s == 900.0
    assert plan.slack_s == pytest.approx(18.0)  # 2 %
    assert plan.search_s + plan.retrain_s + plan.slack_s == pytest.approx(900.0)
    assert plan.retrain_s == pytest.approx(0.25 * (900 - 18))
    assert plan.trial_cap_s == pytest.approx(plan.retrain_s / 3)
    assert plan_budget("15m", seeds=3, ensemble=2).trial_cap_s == pytest.approx(
        plan.retrain_s / 6)
    assert plan_budget("30s").slack_s == 5.0 and plan_budget("10h").slack_s == 60.0


def test_no_trial_starts_in_the_last_quarter_of_a_trial_cap() -> None:
    """A trial started with a few seconds left trained 1 of 12 epochs (a CPU README run:
    out-of-fold AUC 0.50, yet a member of the final ensemble)."""
    plan = plan_budget("3m", retrain_fraction=0.05, trial_share=1 / 3)
    assert plan.last_start_s == pytest.approx(plan.search_s - MIN_START_SHARE * plan.trial_cap_s)
    assert plan.last_start_s == pytest.approx(plan.search_s * (1 - MIN_START_SHARE / 3))
    left = plan.search_s - plan.last_start_s
    assert f"none starts in the search's last {left:.0f} s" in plan.describe(final_model=True)
    whole = plan_budget("3m", retrain_fraction=0.05, trial_share=1.0)  # one trial: all of it
    assert whole.last_start_s == pytest.approx(0.75 * whole.search_s)


@pytest.mark.parametrize("kwargs", [{"seeds": 0}, {"ensemble": 0}, {"retrain_fraction": 1.0},
                                    {"retrain_fraction": 0.0}])
def test_plan_rejects_bad_settings(kwargs: dict[str, float]) -> None:
    with pytest.raises(BudgetError):
        plan_budget("15m", **kwargs)  # type: ignore[arg-type]


class _FakeTrainer:
    def __init__(self, epochs: int = 10) -> None:
        self.stopped: str | None = None
        self.stop_requested: str | None = None  # no other callback asked to stop
        self.cfg = type("Cfg", (), {"epochs": epochs})()

    def request_stop(self, reason: str) -> None:
        self.stopped = reason


def test_deadline_callback_stops_when_the_next_epoch_would_overrun() -> None:
    import time

    trainer = _FakeTrainer()
    cb = DeadlineCallback(time.monotonic() + 3600)
    cb.on_epoch_start(trainer, 0)
    cb.on_epoch_end(trainer, 0, {})
    assert trainer.stopped is None
    cb = DeadlineCallback(time.monotonic() - 1)
    cb.on_epoch_start(trainer, 0)
    cb.on_epoch_end(trainer, 0, {})
    assert trainer.stopped == "deadline" and cb.stopped_at_epoch == 1


class _Trial:
    def __init__(self) -> None:
        self.user_attrs: dict[str, object] = {}

    def set_user_attr(self, key: str, value: object) -> None:
        self.user_attrs[key] = value


def _run_epochs(cb: BudgetCallback, trainer: _FakeTrainer, epoch_s: float) -> int:
    """Runs epochs of ``epoch_s`` seconds until the callback stops; returns epochs run."""
    import time

    cb.on_fit_start(trainer)
    for epoch in range(trainer.cfg.epochs):
        cb.on_epoch_start(trainer, epoch)
        time.sleep(epoch_s)
        cb.on_epoch_end(trainer, epoch, {})
        if trainer.stopped:
            return epoch + 1
    return trainer.cfg.epochs


def test_trial_over_the_cap_completes_with_the_epochs_it_trained() -> None:
    import time

    trainer, trial = _FakeTrainer(epochs=20), _Trial()
    cb = BudgetCallback(trial, search_deadline=time.monotonic() + 3600, trial_cap_s=0.25)
    epochs = _run_epochs(cb, trainer, 0.05)
    # stopped before the epoch that would cross the cap: about 0.25 / 0.05 = 5 epochs
    assert 3 <= epochs <= 5, epochs
    assert trainer.stopped == "budget"  # not "pruned": the trial completes
    assert "cap" in str(trial.user_attrs["budget_stop"])


def test_trial_at_the_end_of_the_search_is_pruned() -> None:
    import time

    trainer, trial = _FakeTrainer(epochs=20), _Trial()
    cb = BudgetCallback(trial, search_deadline=time.monotonic() + 0.2, trial_cap_s=3600)
    assert _run_epochs(cb, trainer, 0.05) < 20
    assert trainer.stopped == "pruned"
    assert "search budget spent" in str(trial.user_attrs["budget_stop"])


def test_trial_within_budget_is_left_alone() -> None:
    import time

    trainer, trial = _FakeTrainer(epochs=4), _Trial()
    cb = BudgetCallback(trial, search_deadline=time.monotonic() + 3600, trial_cap_s=3600)
    assert _run_epochs(cb, trainer, 0.01) == 4
    assert trainer.stopped is None and not trial.user_attrs


def test_cli_rejects_a_bad_budget(capsys: pytest.CaptureFixture[str], tmp_path) -> None:
    from medauto.cli import main

    code = main(["search", "--budget", "15 minutes", "--run-dir", str(tmp_path),
                 "--device", "cpu", "--no-tracking"])
    assert code == 1
    assert "budget must be a duration such as 90s" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing created
