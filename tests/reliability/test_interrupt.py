"""Ctrl-C (SIGINT) and SIGTERM during a trial of ``medauto search``.

The process must exit within a few seconds with code 130, record the running trial as FAIL
with reason ``interrupted``, leave no MLflow run RUNNING, and the same command, run again,
must resume the study to its target.
"""

from __future__ import annotations

import datetime
import signal
import subprocess
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from reliability_helpers import child_env
from reliability_helpers import load_trials
from reliability_helpers import mlflow_runs
from reliability_helpers import seed_mlflow
from reliability_helpers import spawn_medauto
from reliability_helpers import stop
from reliability_helpers import wait_until

from medauto.cli import main

pytestmark = pytest.mark.slow

#: Seconds from the signal until the trial is recorded as interrupted (and the MLflow runs
#: closed): what a user waits for. Then the process must exit, not hang (a lost interrupt
#: used to leave it training for ever); most of that time is the interpreter tearing down
#: torch/MLflow, which is CPU-bound: ~1 s on an idle machine, 10-11 s in 7 of 21 runs on
#: the 2-core machine shared by four test sessions (load average 8), so the exit bound is
#: a hang detector with a margin, not a speed goal (those live in benchmarks/).
RECORDED_WITHIN_S = 3.0
EXIT_WITHIN_S = 30.0
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM}

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": f"{name} during a trial of `medauto search`",
        "backends": ["sqlite"],
        "expected": f"trial FAIL reason interrupted within {RECORDED_WITHIN_S:g} s, exit 130 "
        f"within {EXIT_WITHIN_S:g} s; no "
        "MLflow run left RUNNING; the same command resumes to the target",
    }
    for name in SIGNALS
]


@pytest.mark.parametrize("signame", list(SIGNALS))
def test_signal_during_trial_exits_cleanly_and_the_same_command_resumes(
    signame: str, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    mlflow_template: Path,
) -> None:
    run = tmp_path / "run"
    seed_mlflow(run, mlflow_template)
    url = f"sqlite:///{run / 'medauto.db'}"
    argv = [
        "search", "--selection", "holdout", "--no-final-model",
        "--data", "breastmnist", "--data-dir", str(micro_data_dir),
        "--space", str(micro_space), "--trials", "1", "--study", "intr",
        "--run-dir", str(run), "--device", "cpu", "--no-progress",
    ]
    log = tmp_path / "search.log"
    proc = spawn_medauto(argv, log, env=child_env(), fault="stall")
    try:
        def training() -> bool:
            if not (run / "medauto.db").is_file():
                return False
            try:
                trials = load_trials(url, "intr")
            except KeyError:  # the study is not created yet
                return False
            # Training has started and its MLflow child run exists.
            return any("config" in t.user_attrs and "mlflow_run_id" in t.user_attrs
                       for t in trials if t.state == TrialState.RUNNING)

        wait_until("the search to start training", training, timeout=120, procs=(proc,),
                   logs=(log,))
        sent = time.monotonic()
        sent_at = datetime.datetime.now()  # Optuna stores naive local times
        proc.send_signal(SIGNALS[signame])
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)  # every thread's stack into the log
            time.sleep(2)
            pytest.fail(f"no exit 60 s after {signame}; the child's log with its stacks:\n"
                        + log.read_text()[-6000:])
        took = time.monotonic() - sent
    finally:
        stop(proc)
    output = log.read_text()
    assert code == 130, output
    assert took <= EXIT_WITHIN_S, took
    assert "interrupted" in output and "Re-run the same command" in output

    (trial,) = load_trials(url, "intr")
    assert trial.state == TrialState.FAIL
    assert trial.user_attrs["reason"] == "interrupted"
    assert (trial.datetime_complete - sent_at).total_seconds() <= RECORDED_WITHIN_S
    runs = mlflow_runs(run, "intr")
    assert [r.info.status for r in runs if r.info.status == "RUNNING"] == []
    by_role = {r.data.tags["medauto.role"]: r for r in runs}
    assert by_role["study"].info.status == "KILLED"
    assert by_role["trial"].info.status == "FAILED"
    assert by_role["trial"].data.tags["medauto.reason"] == "interrupted"

    # The same command again (no fault this time) resumes to the target.
    assert main(argv) == 0
    trials = load_trials(url, "intr")
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    runs = mlflow_runs(run, "intr")
    assert all(r.info.status != "RUNNING" for r in runs), [r.info.status for r in runs]
    parents = [r for r in runs if r.data.tags["medauto.role"] == "study"]
    children = [r for r in runs if r.data.tags["medauto.role"] == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["medauto.trial"]) for r in children) == [0, 1]
