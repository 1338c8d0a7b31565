"""Helpers of the fault-injection suite (issue 6): processes, storages, MLflow, checksums.

Faults are injected from the test side only (no product hook): a child process is started
as ``python -c BOOT <medauto argv>``, where :data:`BOOT` calls the real
``medauto.cli.main`` after installing the fault named by ``MEDAUTO_TEST_FAULT``
(``stall``: the training step hangs, so the trial is reliably "mid-trial" when the test
signals or kills the process). In-process tests patch the training step with
``monkeypatch`` instead.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]

#: Heartbeat settings of the crash tests: short, so a dead worker is noticed in seconds
#: (SQLite stores a beat with 1 s resolution, so the grace period keeps a margin above it).
HEARTBEAT_S = 1
GRACE_S = 4
#: The worker loop's poll interval while other workers finish (``run_worker`` default).
POLL_S = 2.0

#: ``python -c BOOT args...`` is ``medauto args...`` with an optional injected fault:
#: ``stall``: the training step hangs (a wedged data loader or kernel), so the trial stays
#: RUNNING and keeps its heartbeat until a signal or SIGKILL ends the process;
#: ``stall-first``: only the first of the processes sharing ``MEDAUTO_TEST_FAULT_MARKER``
#: to reach a training step hangs; it writes its pid into that file, the others train.
BOOT = r"""
import faulthandler, os, signal, sys, time
faulthandler.register(signal.SIGUSR1)  # a hung child dumps its stacks into its log
# A process started with SIGINT ignored (as background jobs of a non-interactive shell
# are, and as a test-runner process can leave it) passes that on, and Python then
# installs no KeyboardInterrupt handler: restore the interactive default, as a user has.
signal.signal(signal.SIGINT, signal.default_int_handler)
fault = os.environ.get("MEDAUTO_TEST_FAULT", "")
if fault in ("stall", "stall-first"):
    from med_core.training import _loop

    real_loss = _loop.training_loss
    mine = [fault == "stall" or None]

    def _maybe_stalled(*args, **kwargs):
        if mine[0] is None:
            try:
                fd = os.open(os.environ["MEDAUTO_TEST_FAULT_MARKER"],
                             os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                mine[0] = False
            else:
                os.write(fd, str(os.getpid()).encode())
                os.close(fd)
                mine[0] = True
        while mine[0]:
            time.sleep(0.05)
        return real_loss(*args, **kwargs)

    _loop.training_loss = _maybe_stalled
elif fault:
    raise SystemExit(f"unknown MEDAUTO_TEST_FAULT {fault!r}")
from medauto.cli import main
sys.exit(main(sys.argv[1:]))
"""


# -- studies and storages -----------------------------------------------------------


def create_study(url: str, name: str, space_path: Path, n_trials: int) -> Any:
    """Creates a medauto study exactly as ``medauto search`` does, without running a trial."""
    from medauto.space import SearchSpace
    from medauto.storage import open_storage
    from medauto.study import StudySettings
    from medauto.study import open_study

    space = SearchSpace.from_yaml(space_path)
    settings = StudySettings(
        space=space.to_dict(), fingerprint=space.fingerprint(), data="breastmnist",
        metric="val_auc", direction="maximize", n_trials=n_trials,
    )
    return open_study(name, open_storage(url), settings)


_READERS: dict[tuple[str, str], Any] = {}


def load_trials(url: str, study: str) -> list[Any]:
    """The study's trials, read fresh from storage (one storage handle per URL, reused:
    opening a storage costs far more than a read, and tests poll this)."""
    import optuna

    from medauto.storage import open_storage

    key = (url, study)
    if key not in _READERS:
        _READERS[key] = optuna.load_study(study_name=study, storage=open_storage(url))
    return list(_READERS[key].get_trials(deepcopy=False))


# -- MLflow ------------------------------------------------------------------------------


def seed_mlflow(run_dir: Path, template: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(template, run_dir / "mlflow.db")


def mlflow_runs(run_dir: Path, experiment: str) -> list[Any]:
    """Every MLflow run of ``experiment`` in the run directory's local store."""
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{run_dir / 'mlflow.db'}")
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"no MLflow experiment {experiment!r} in {run_dir}"
    return list(client.search_runs([exp.experiment_id], max_results=10_000))


# -- processes ---------------------------------------------------------------------------


def child_env(data_dir: Path | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child process: one thread, the repo importable, unbuffered."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
    }
    env.pop("MEDAUTO_STORAGE", None)
    env.pop("MEDAUTO_TRACKING_URI", None)
    if data_dir is not None:
        env["MEDAUTO_DATA_DIR"] = str(data_dir)
    env.update(extra)
    return env


def spawn_medauto(
    args: list[str], log: Path, *, env: dict[str, str], fault: str = "",
    marker: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Starts ``medauto ARGS`` (through :data:`BOOT`) with stdout+stderr going to ``log``."""
    if fault:
        env = {**env, "MEDAUTO_TEST_FAULT": fault}
    if marker is not None:
        env = {**env, "MEDAUTO_TEST_FAULT_MARKER": str(marker)}
    with open(log, "wb") as out:
        return subprocess.Popen(
            [sys.executable, "-c", BOOT, *args], cwd=REPO, env=env, stdout=out,
            stderr=subprocess.STDOUT,
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    """Kills a child this test started, if it is still running (test clean-up)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)


def wait_until(
    what: str, predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25,
    procs: tuple[subprocess.Popen[bytes], ...] = (), logs: tuple[Path, ...] = (),
) -> Any:
    """Polls ``predicate`` until it returns something truthy; fails with the logs."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > deadline:
            tails = "\n".join(f"--- {p}:\n{p.read_text(errors='replace')[-3000:]}" for p in logs)
            why = f"process exited with {dead[0].returncode}" if dead else f"{timeout} s passed"
            pytest.fail(f"waiting for {what}: {why}\n{tails}")
        time.sleep(interval)


# -- "untouched" checks ------------------------------------------------------------------


def _sqlite_digest(path: Path) -> str:
    """A digest of an SQLite database's content (independent of WAL/page layout)."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        h = hashlib.sha256()
        for line in conn.iterdump():
            h.update(line.encode())
        return "sqlite:" + h.hexdigest()
    finally:
        conn.close()


def tree_digest(root: Path) -> dict[str, str]:
    """``relative path -> sha256`` of every file under ``root``.

    SQLite databases are hashed by their content (``iterdump``); their ``-wal``/``-shm``
    side files, which a reader may create, are left out. Folders are listed too, so a new
    empty folder also counts as a change.
    """
    out: dict[str, str] = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.name.endswith(("-wal", "-shm", "-journal")) or "__pycache__" in p.parts:
            continue
        if p.is_dir():
            out[rel + "/"] = "dir"
        elif p.suffix == ".db":
            out[rel] = _sqlite_digest(p)
        else:
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out
