"""Storage URLs on every real backend: open, share, heartbeat-stale detection and retry."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medauto.exceptions import StorageError
from medauto.storage import StorageSettings
from medauto.storage import default_storage_url
from medauto.storage import open_storage
from medauto.storage import optuna_cli_storage
from medauto.storage import redact_url
from medauto.testing.storages import STORAGE_MODES
from medauto.testing.storages import storage_url

optuna.logging.set_verbosity(optuna.logging.WARNING)


@pytest.fixture(params=STORAGE_MODES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as u:
        yield u


def test_two_handles_share_one_study(url: str) -> None:
    a = optuna.create_study(storage=open_storage(url), study_name="s")
    a.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    b = optuna.load_study(storage=open_storage(url), study_name="s")
    b.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    assert [t.number for t in a.get_trials()] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in a.get_trials())


def test_stale_trial_is_failed_and_retried(url: str) -> None:
    # SQLite stores the beat with 1 s resolution: keep the grace period well above it.
    settings = StorageSettings(heartbeat_interval=1, grace_period=4, max_retry=1)
    study = optuna.create_study(storage=open_storage(url, settings), study_name="s")
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    study._storage.record_heartbeat(trial._trial_id)  # one beat, then the "worker dies"
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING  # still inside the grace period
    time.sleep(5.5)
    optuna.storages.fail_stale_trials(study)
    trials = study.get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.WAITING]
    assert trials[1].params == {"x": x}
    assert trials[1].system_attrs["failed_trial"] == 0
    # The retry is what the next ask() runs.
    retry = study.ask()
    assert retry.number == 1 and retry.params == {"x": x}


def test_live_heartbeat_keeps_trial_running(url: str) -> None:
    settings = StorageSettings(heartbeat_interval=1, grace_period=4)
    study = optuna.create_study(storage=open_storage(url, settings), study_name="s")
    trial = study.ask()
    for _ in range(6):
        study._storage.record_heartbeat(trial._trial_id)
        time.sleep(0.8)
    optuna.storages.fail_stale_trials(study)
    assert study.get_trials()[0].state == TrialState.RUNNING


def test_default_url_is_sqlite_in_run_dir(tmp_path: Path) -> None:
    url = default_storage_url(tmp_path / "runs")
    assert url == f"sqlite:///{(tmp_path / 'runs').resolve()}/medauto.db"
    open_storage(url)
    import sqlite3

    conn = sqlite3.connect(tmp_path / "runs" / "medauto.db")
    assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)


@pytest.mark.parametrize(
    ("bad_url", "fragment"),
    [
        ("study.db", "has no scheme"),
        ("redis://localhost:6379", "unsupported storage URL scheme 'redis'"),
        ("sqlite://", "must name a file"),
        ("journal://", "must name a file"),
        ("sqlite:////proc/forbidden/x.db", "cannot open SQLite storage"),
        ("postgresql+psycopg://bob:hunter2@127.0.0.1:1/db", "cannot open storage"),
    ],
)
def test_bad_urls_raise_storage_error(bad_url: str, fragment: str) -> None:
    with pytest.raises(StorageError, match=fragment) as info:
        open_storage(bad_url)
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("postgresql://bob:s3cret@db:5432/optuna", "postgresql://bob:***@db:5432/optuna"),
        ("mysql+pymysql://u:p%40ss@h/db", "mysql+pymysql://u:***@h/db"),
        ("postgresql://h/db?user=u&password=pw", "postgresql://h/db?user=u&password=***"),
        ("sqlite:///a/b.db", "sqlite:///a/b.db"),
    ],
)
def test_redact_url(raw: str, shown: str) -> None:
    assert redact_url(raw) == shown


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="heartbeat_interval"):
        StorageSettings(heartbeat_interval=0)
    with pytest.raises(ValueError, match="grace_period"):
        StorageSettings(heartbeat_interval=10, grace_period=5)


def _open_at(url: str, start: float) -> None:
    time.sleep(max(0.0, start - time.time() - 0.02))  # then spin: all open at one instant
    while time.time() < start:
        pass
    open_storage(url)


def test_processes_opening_one_new_database_at_once_all_succeed(tmp_path: Path) -> None:
    # Before the retry, 38 of 60 such openers died with "UNIQUE constraint failed:
    # alembic_version.version_num" (the schema-creation race; it also failed the interrupt
    # test when its poller opened the child's new database at the same moment).
    import multiprocessing as mp

    ctx = mp.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path / f'race{round_}.db'}"
        start = time.time() + 0.5
        procs = [ctx.Process(target=_open_at, args=(url, start)) for _ in range(3)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0, 0, 0]


def test_journal_url_is_absolute_wherever_the_worker_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "shared" / "a.journal"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # used to create elsewhere/<tmp_path>/shared/a.journal
    optuna.create_study(storage=open_storage(f"journal:///{target}"), study_name="s")
    assert target.is_file()
    assert not list(elsewhere.rglob("*"))
    # A plain path is the same file, and so is the form the optuna CLI takes.
    monkeypatch.chdir(tmp_path)
    assert optuna.load_study(storage=open_storage("shared/a.journal"), study_name="s")
    assert optuna_cli_storage(f"journal:///{target}") == str(target)
    with pytest.raises(StorageError, match="absolute path"):
        open_storage("journal://relative.journal")


@pytest.mark.parametrize("mode", ["sqlite", "journal"])
def test_optuna_cli_reads_the_study_through_optuna_cli_storage(
    mode: str, tmp_path: Path
) -> None:
    import subprocess
    import sys

    with storage_url(mode, tmp_path) as u:
        optuna.create_study(storage=open_storage(u), study_name="cli-visible")
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("optuna")), "studies", "--storage",
             optuna_cli_storage(u),
             "-f", "json"], capture_output=True, text=True, timeout=120,
        )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "cli-visible" in proc.stdout
