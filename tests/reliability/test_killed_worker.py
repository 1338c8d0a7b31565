"""A ``medauto worker`` SIGKILLed mid-trial: its trial is failed by the heartbeat within the
grace period, re-run with the same params, and the study still ends at exactly its target.

Two real ``medauto worker`` processes share one study (SQLite, then the real PostgreSQL
server) with a 1 s heartbeat and a 4 s grace period. The first of them to start training
hangs in its training step (injected ``stall-first`` fault): it keeps beating, so the
other worker — which trains the study's other trial and then waits for this one — must
*not* fail the trial while its worker is alive, however long it takes. Then the hung
worker is SIGKILLed, and the survivor must fail the trial within grace + one poll,
re-enqueue it and train the retry.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState
from reliability_helpers import GRACE_S
from reliability_helpers import HEARTBEAT_S
from reliability_helpers import POLL_S
from reliability_helpers import child_env
from reliability_helpers import create_study
from reliability_helpers import load_trials
from reliability_helpers import mlflow_runs
from reliability_helpers import seed_mlflow
from reliability_helpers import spawn_medauto
from reliability_helpers import stop
from reliability_helpers import wait_until

pytestmark = pytest.mark.slow

TARGET = 2
#: Extra seconds allowed on a loaded 2-core machine, on top of grace + one poll.
SLACK_S = 4.0

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": "worker process SIGKILLed mid-trial",
        "backends": ["sqlite", "postgresql"],
        "expected": "trial FAIL within grace period + one poll; re-enqueued with the same "
        "params (system attr failed_trial); study ends at exactly its target; the dead "
        "worker's MLflow run closed as FAILED",
    },
    {
        "fault": "training step hangs longer than the grace period (worker alive)",
        "backends": ["sqlite", "postgresql"],
        "expected": "heartbeat keeps the trial RUNNING; nobody fails it",
    },
]


def _worker_argv(url: str, run_dir: Path) -> list[str]:
    return [
        "worker", "--study", "crash", "--storage", url, "--run-dir", str(run_dir),
        "--device", "cpu", "--no-progress",
        "--heartbeat-interval", str(HEARTBEAT_S), "--grace-period", str(GRACE_S),
    ]


def test_sigkilled_worker_trial_is_failed_retried_and_target_is_exact(
    backend_url: str, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    mlflow_template: Path,
) -> None:
    create_study(backend_url, "crash", micro_space, n_trials=TARGET)
    seed_mlflow(tmp_path / "run", mlflow_template)
    env = child_env(micro_data_dir)
    argv = _worker_argv(backend_url, tmp_path / "run")
    marker = tmp_path / "stalled.pid"
    logs = (tmp_path / "w0.log", tmp_path / "w1.log")
    procs = tuple(spawn_medauto(argv, log, env=env, fault="stall-first", marker=marker)
                  for log in logs)
    try:
        def stalled() -> object:
            if not marker.is_file() or not marker.read_text():
                return None
            pid = int(marker.read_text())
            for t in load_trials(backend_url, "crash"):
                worker = t.user_attrs.get("worker", "")
                if t.state == TrialState.RUNNING and worker.endswith(f":{pid}"):
                    return pid, t
            return None

        # One worker is mid-trial: config recorded, training step entered (and hung).
        pid, victim = wait_until("a worker to hang in its training step", stalled,
                                 timeout=120, procs=procs, logs=logs)
        hung_since = time.monotonic()
        (dead,) = [p for p in procs if p.pid == pid]
        (survivor,) = [p for p in procs if p.pid != pid]
        # The survivor trains the other trial, then waits (finished + running == target)
        # and polls, failing stale trials as it goes.
        wait_until(
            "the other worker to finish a trial",
            lambda: any(t.state == TrialState.COMPLETE for t in load_trials(backend_url, "crash")),
            timeout=120, procs=procs, logs=logs,
        )
        # The hung worker has now been stuck for longer than the grace period, with the
        # survivor polling, but its heartbeat is alive: nobody may fail its trial.
        time.sleep(max(0.0, hung_since + GRACE_S + POLL_S - time.monotonic()))
        (still,) = [t for t in load_trials(backend_url, "crash") if t.number == victim.number]
        assert still.state == TrialState.RUNNING, "a live (beating) trial was failed"

        killed_at = time.monotonic()
        dead.send_signal(signal.SIGKILL)
        dead.wait(30)

        def failed() -> bool:
            trials = load_trials(backend_url, "crash")
            return next(t for t in trials if t.number == victim.number).state == TrialState.FAIL

        wait_until("the dead worker's trial to be failed", failed,
                   timeout=GRACE_S + POLL_S + 60, interval=0.2, procs=(survivor,), logs=logs)
        detected_s = time.monotonic() - killed_at
        # Not before its last beat is grace old (it beat at most one interval before the
        # kill; SQLite keeps beats to the second), and no later than grace + one poll of
        # the survivor's loop (+ slack for a loaded machine).
        earliest = GRACE_S - HEARTBEAT_S - 1.0 - 0.5
        assert earliest <= detected_s <= GRACE_S + POLL_S + SLACK_S, detected_s

        assert survivor.wait(180) == 0, [log.read_text() for log in logs]
    finally:
        for p in procs:
            stop(p)

    trials = load_trials(backend_url, "crash")
    by_number = {t.number: t for t in trials}
    assert len(by_number) == len(trials)  # no duplicated numbers
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == TARGET, [(t.number, t.state) for t in trials]
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert by_number[victim.number].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == victim.number]
    assert retry.state == TrialState.COMPLETE
    assert retry.params == victim.params  # the same configuration, re-run
    assert retry.system_attrs["retry_history"] == [victim.number]
    assert retry.user_attrs["worker"].endswith(f":{survivor.pid}")  # run by the survivor
    others = [t for t in trials if t.number not in (victim.number, retry.number)]
    assert all(t.state == TrialState.COMPLETE or t.user_attrs.get("reason") == "surplus"
               for t in others)

    # The dead worker's MLflow run was closed by the survivor when it failed the trial.
    runs = {r.info.run_id: r for r in mlflow_runs(tmp_path / "run", "crash")}
    orphan = runs[by_number[victim.number].user_attrs["mlflow_run_id"]]
    assert orphan.info.status == "FAILED"
    assert orphan.data.tags["medauto.reason"] == "worker lost (heartbeat stale)"
    assert [r.info.status for r in runs.values() if r.info.status == "RUNNING"] == []
