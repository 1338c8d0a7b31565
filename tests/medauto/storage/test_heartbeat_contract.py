"""The heartbeat contract of docs/distributed.md, enforced on SQLite, PostgreSQL and journal.

One suite, parametrized over the real backends: which RUNNING trials are stale (medauto
trials that beat and stopped, or never beat; foreign trials only if they beat and stopped),
retries that start clean, the heartbeat kept out of ``trials_dataframe()``, and a real
worker process SIGKILLed between ``ask`` and its first heartbeat.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medauto import _optuna_compat as compat
from medauto.storage import StorageSettings
from medauto.storage import open_storage
from medauto.testing.storages import STORAGE_MODES
from medauto.testing.storages import plain_optuna_storage
from medauto.testing.storages import storage_url
from medauto.worker import LOST_REASON
from medauto.worker import fail_stale_trials
from medauto.worker import run_worker

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[3]

#: SQLite stores a beat with 1 s resolution, hence whole seconds and a margin. The grace
#: period also covers the asks before the first check on a loaded 2-core machine (with 2 s,
#: five asks and two beats on SQLite once took longer, and live trials read as stale).
SETTINGS = StorageSettings(heartbeat_interval=1, grace_period=4, max_retry=2)
PAST_GRACE_S = 5.3


@pytest.fixture(params=STORAGE_MODES)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as u:
        yield u


def _stale_numbers(study: optuna.Study) -> set[int]:
    storage = compat.study_storage(study)
    ids = set(compat.stale_trial_ids(storage, compat.study_id(study)))  # type: ignore[arg-type]
    return {t.number for t in study.get_trials(deepcopy=False) if compat.trial_id(t) in ids}


def test_one_staleness_rule_for_medauto_and_foreign_trials(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url, SETTINGS), study_name="s")
    foreign = optuna.load_study(study_name="s", storage=plain_optuna_storage(url))
    storage = compat.study_storage(study)

    never_beat = study.ask()  # 0: medauto trial, its worker died before the first beat
    beat_once = study.ask()  # 1: medauto trial that beat once, then died
    storage.record_heartbeat(compat.trial_id(beat_once))  # type: ignore[attr-defined]
    live = study.ask()  # 2: medauto trial still beating
    plain = foreign.ask()  # 3: plain Optuna ask/tell client, never beats
    plain_beat = foreign.ask()  # 4: plain Optuna client with heartbeats on, stopped
    storage.record_heartbeat(compat.trial_id(plain_beat))  # type: ignore[attr-defined]
    assert "worker" not in study.get_trials()[plain.number].user_attrs  # no medauto marker
    assert _stale_numbers(study) == set()  # everyone is inside the grace period

    time.sleep(PAST_GRACE_S)
    storage.record_heartbeat(compat.trial_id(live))  # type: ignore[attr-defined]
    assert _stale_numbers(study) == {never_beat.number, beat_once.number, plain_beat.number}

    # The plain client's trial was left alone: its tell still works, on every backend.
    foreign.tell(plain, 0.5)
    assert study.get_trials()[plain.number].state == TrialState.COMPLETE


def test_retry_starts_clean_and_is_not_failed_again(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url, SETTINGS), study_name="s")
    storage = compat.study_storage(study)
    trial = study.ask()
    x = trial.suggest_float("x", 0, 1)
    trial.set_user_attr("mlflow_run_id", "run-of-the-dead-attempt")
    storage.record_heartbeat(compat.trial_id(trial))  # type: ignore[attr-defined]
    time.sleep(PAST_GRACE_S)

    (lost,) = fail_stale_trials(study)
    assert lost.number == 0 and lost.user_attrs["reason"] == LOST_REASON
    retry = study.ask()  # a worker picks the retry up and has not beaten yet
    assert retry.params == {"x": x}
    frozen = study.get_trials()[retry.number]
    assert frozen.system_attrs["failed_trial"] == 0
    assert "reason" not in frozen.user_attrs and "mlflow_run_id" not in frozen.user_attrs
    assert not any("heartbeat" in k for k in frozen.system_attrs)
    # The journal defect: the retry inherited the old beat and was failed again at once.
    assert fail_stale_trials(study) == []
    assert study.get_trials()[retry.number].state == TrialState.RUNNING


def test_heartbeat_stays_out_of_trials_dataframe(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url, SETTINGS), study_name="s")
    trial = study.ask()
    compat.study_storage(study).record_heartbeat(compat.trial_id(trial))  # type: ignore[attr-defined]
    study.tell(trial, 1.0)
    columns = [str(c) for c in study.trials_dataframe().columns]
    assert not [c for c in columns if "heartbeat" in c], columns


_ASK_AND_HANG = """
import sys, time, optuna
from medauto.storage import StorageSettings, open_storage
settings = StorageSettings(heartbeat_interval=1, grace_period=2)
study = optuna.load_study(study_name="s", storage=open_storage(sys.argv[1], settings))
study.ask()
print("asked", flush=True)
time.sleep(120)  # SIGKILLed here: after ask, before any heartbeat
"""


def test_worker_killed_between_ask_and_first_beat_does_not_hang(url: str) -> None:
    study = optuna.create_study(storage=open_storage(url, SETTINGS), study_name="s")
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.Popen([sys.executable, "-c", _ASK_AND_HANG, url], stdout=subprocess.PIPE,
                            env=env, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "asked"
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    assert [t.state for t in study.get_trials()] == [TrialState.RUNNING]

    started = time.monotonic()
    report = run_worker(study, lambda t: t.suggest_float("x", 0, 1), target=1,
                        poll_interval=0.2, timeout=30)
    assert report.stop_reason == "target reached"
    assert time.monotonic() - started < 15
    trials = study.get_trials()
    assert trials[0].state == TrialState.FAIL and trials[0].user_attrs["reason"] == LOST_REASON
    assert [t.state for t in trials[1:]] == [TrialState.COMPLETE]
