"""Real `medauto` processes sharing one study on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
from cli_runner import run_cli
from optuna.trial import TrialState

from medauto.storage import open_storage
from medauto.testing.storages import storage_url

pytestmark = pytest.mark.slow


@pytest.fixture(params=["sqlite", "postgresql"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as u:
        yield u


def _medauto(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "medauto.cli", *args],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


def test_two_workers_finish_exactly_the_target(
    url: str, tmp_path: Path, tiny_data_dir: Path, tiny_space: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    env = {**os.environ, "MEDAUTO_DATA_DIR": str(tiny_data_dir), "OMP_NUM_THREADS": "1"}
    common = ["--storage", url, "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress"]
    # `create-study` creates the study and trains nothing (a `search --timeout 1` used to
    # train its first trial here, unless the timeout was spent first on a loaded machine).
    # It runs in this process (one interpreter start less); the workers are real processes.
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(tiny_data_dir))
    code, out = run_cli(["create-study", "--selection", "holdout", "--data", "breastmnist",
                         "--space", str(tiny_space), "--trials", "6", "--study", "shared",
                         *common], tmp_path)
    assert code == 0, out
    assert optuna.load_study(study_name="shared", storage=open_storage(url)).trials == []
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    (scheduled,) = client.search_runs([client.get_experiment_by_name("shared").experiment_id])
    assert scheduled.info.status == "SCHEDULED"  # the parent run, made before any worker

    # Two worker processes: `--trials-per-device 2` starts them on the same device.
    worker = _medauto("worker", "--study", "shared", "--trials-per-device", "2", *common, env=env)
    output = worker.communicate(timeout=300)[0]
    assert worker.returncode == 0, output

    study = optuna.load_study(study_name="shared", storage=open_storage(url))
    trials = study.get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 6
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    others = [t for t in trials if t not in finished]
    assert all(t.user_attrs.get("reason") == "surplus" for t in others), others
    # Each trial ran once, by one process; both workers did some of the work.
    assert len({t.number for t in trials}) == len(trials)
    pids = {t.user_attrs["worker"] for t in finished}
    assert len(pids) == 2, pids
    assert all(t.user_attrs["config"]["data"]["dataset"] == "breastmnist" for t in finished)

    # MLflow: one parent run for the study, one child run per trained trial.
    exp = client.get_experiment_by_name("shared")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("medauto.role") == "study"]
    children = [r for r in runs if r.data.tags.get("medauto.role") == "trial"]
    assert len(parents) == 1
    assert sorted(int(r.data.tags["medauto.trial"]) for r in children) == sorted(
        t.number for t in finished
    )
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status != "RUNNING" for r in children)
