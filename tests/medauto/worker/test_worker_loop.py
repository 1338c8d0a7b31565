"""The worker loop on real storages: exact study-wide targets, failure reasons, interrupts.

The objective here is a cheap function of the params (no training), so the tests exercise
the loop's bookkeeping — which is what they are about — against real SQLite, journal and
PostgreSQL storages and real OS processes.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from med_core.exceptions import NonFiniteLossError
from medauto import _optuna_compat as compat
from medauto.storage import StorageSettings
from medauto.storage import open_storage
from medauto.testing.storages import STORAGE_MODES
from medauto.testing.storages import storage_url
from medauto.worker import classify_failure
from medauto.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=STORAGE_MODES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as u:
        yield u


def _sleepy(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    time.sleep(0.05)
    return x


def _worker_process(url: str, target: int) -> None:
    study = optuna.load_study(study_name="s", storage=open_storage(url))
    run_worker(study, _sleepy, target=target, poll_interval=0.1)


# Journal only: on SQLite and PostgreSQL the same loop in more processes (4 workers, 40
# trials) with the same and stricter checks is
# tests/reliability/test_concurrency.py::test_four_workers_forty_trials_one_study.
@pytest.mark.parametrize("url", ["journal"], indirect=True)
def test_parallel_workers_reach_exactly_the_target(url: str) -> None:
    optuna.create_study(study_name="s", storage=open_storage(url))
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_worker_process, args=(url, 12)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    trials = optuna.load_study(study_name="s", storage=open_storage(url)).get_trials()
    states = [t.state for t in trials]
    assert states.count(TrialState.COMPLETE) == 12
    assert states.count(TrialState.RUNNING) == 0
    # Any extra trial is a surplus ask closed without training, never a 13th result.
    extra = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.user_attrs.get("reason") == "surplus" for t in extra)
    assert sorted(t.number for t in trials) == list(range(len(trials)))
    workers = {t.user_attrs["worker"] for t in trials if t.state == TrialState.COMPLETE}
    assert len(workers) >= 2  # the work really was shared


def test_resume_counts_existing_trials(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    study = optuna.create_study(study_name="s", storage=open_storage(url))
    run_worker(study, _sleepy, target=3)
    report = run_worker(study, _sleepy, target=5)
    assert len(report.trials["complete"]) == 2
    assert len(study.get_trials()) == 5


def _raise(exc: BaseException):  # type: ignore[no-untyped-def]
    def objective(trial: optuna.Trial) -> float:
        trial.suggest_float("x", 0, 1)
        raise exc

    return objective


@pytest.mark.parametrize(
    ("exc", "state", "reason"),
    [
        (optuna.TrialPruned(), TrialState.PRUNED, "pruned"),
        (
            NonFiniteLossError("nan", epoch=0, step=3, value=float("nan")),
            TrialState.PRUNED,
            "nan_loss",
        ),
        (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), TrialState.PRUNED, "oom"),
        (ValueError("bad things"), TrialState.FAIL, "error: ValueError: bad things"),
    ],
)
def test_failures_are_recorded_and_study_goes_on(
    tmp_path: Path, exc: BaseException, state: TrialState, reason: str
) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    calls = {"n": 0}

    def objective(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] == 1:
            return _raise(exc)(trial)
        return _sleepy(trial)

    run_worker(study, objective, target=2)
    first = study.get_trials()[0]
    assert first.state == state
    assert first.user_attrs["reason"] == reason
    assert study.get_trials()[-1].state == TrialState.COMPLETE  # the study went on


def test_oom_type_is_classified() -> None:
    import torch

    assert classify_failure(torch.OutOfMemoryError("boom")) == (TrialState.PRUNED, "oom")


def test_interrupt_marks_trial_and_propagates(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, _raise(KeyboardInterrupt()), target=3)
    (trial,) = study.get_trials()
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "interrupted"


class _InterruptAfterAsk:
    """A progress hook (the loop calls it between ``ask`` and training) that raises
    ``KeyboardInterrupt`` once a trial is RUNNING: a Ctrl-C or SIGTERM landing there."""

    def update(self, study: optuna.Study) -> None:
        if any(t.state == TrialState.RUNNING for t in study.get_trials(deepcopy=False)):
            raise KeyboardInterrupt


def test_interrupt_between_ask_and_training_records_the_trial(tmp_path: Path) -> None:
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    with pytest.raises(KeyboardInterrupt):
        run_worker(study, _sleepy, target=3, progress=_InterruptAfterAsk())
    (trial,) = study.get_trials()  # it was RUNNING, no reason, until the next run's reaping
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "interrupted"


def test_heartbeat_is_recorded_while_training(tmp_path: Path) -> None:
    url = f"journal:///{tmp_path / 's.journal'}"
    settings = StorageSettings(heartbeat_interval=1, grace_period=3)
    study = optuna.create_study(storage=open_storage(url, settings))
    beats = []

    def objective(trial: optuna.Trial) -> float:
        for _ in range(3):
            time.sleep(0.7)
            attrs = compat.study_storage(study).get_study_system_attrs(compat.study_id(study))
            beats.append(attrs.get(f"medauto:heartbeat:{compat.trial_id(trial)}"))
        return 0.0

    run_worker(study, objective, target=1)
    assert beats[0] is not None
    assert beats[-1] > beats[0]  # the beat advanced during the trial


def _half_pruned(trial: optuna.Trial) -> float:
    x = trial.suggest_float("x", 0, 1)
    if trial.number % 2:
        raise optuna.TrialPruned()
    return x


@pytest.mark.parametrize("kind", ["sqlite", "journal", "in-memory"])
def test_each_trial_attribute_is_written_once_and_the_told_trial_is_handed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """A medauto storage creates a trial with its ``worker`` attribute, so the loop does
    not write it again (one storage round trip a trial); a plain Optuna storage gets it
    from the loop. ``on_trial_end`` sees the trial exactly as it is stored once told."""
    from medauto.storage import worker_id

    storage: object = {
        "sqlite": lambda: open_storage(f"sqlite:///{tmp_path / 's.db'}"),
        "journal": lambda: open_storage(f"journal:///{tmp_path / 's.journal'}"),
        "in-memory": optuna.storages.InMemoryStorage,
    }[kind]()
    study = optuna.create_study(storage=storage)  # type: ignore[arg-type]
    written: list[tuple[int, str]] = []
    set_user_attr = optuna.Trial.set_user_attr

    def spy(trial: optuna.Trial, key: str, value: object) -> None:
        written.append((trial.number, key))
        set_user_attr(trial, key, value)

    monkeypatch.setattr(optuna.Trial, "set_user_attr", spy)
    handed: list[optuna.trial.FrozenTrial] = []
    run_worker(
        study,
        _half_pruned,
        target=4,
        device="cpu",
        on_trial_end=lambda s, frozen: handed.append(frozen),
    )
    assert sorted(written) == sorted(set(written))  # no attribute written twice
    workers = [n for n, key in written if key == "worker"]
    assert workers == ([] if kind != "in-memory" else [0, 1, 2, 3])
    stored = study.get_trials()
    assert [t.user_attrs["worker"] for t in stored] == [worker_id()] * 4
    assert [t.user_attrs["device"] for t in stored] == ["cpu"] * 4
    assert [(t.number, t.state, t.value, t.user_attrs) for t in handed] == [
        (t.number, t.state, t.value, t.user_attrs) for t in stored
    ]
    assert [t.user_attrs.get("reason") for t in stored] == [None, "pruned", None, "pruned"]
    assert all("duration_s" in t.user_attrs for t in stored)


def test_trial_line_names_the_studys_metric(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The loop reads the metric names once; every trial's INFO line still shows them."""
    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    study.set_metric_names(["val_auc"])
    with caplog.at_level("INFO", logger="medauto"):
        run_worker(study, _sleepy, target=2)
    lines = [r.getMessage() for r in caplog.records if " COMPLETE: " in r.getMessage()]
    assert len(lines) == 2 and all(" val_auc 0." in line for line in lines)
