"""Four workers on one study: SQLite and PostgreSQL, 40 short trials; MLflow on the side.

The cheap variant runs the real worker loop (``medauto.worker.run_worker``) in 4 OS
processes with an objective that does not train, so each storage sees 40 trials' worth of
concurrent asks, heartbeats, tells and surplus closures in seconds. The real-training
variant runs 4 worker processes that each do what ``medauto worker`` does —
``AutoMLOptimizer.from_study(...).optimize()``: real training, artifacts and MLflow
tracking — so the MLflow store gets concurrent writers too. They are forked from one
interpreter that imported torch, MLflow and medauto once (a ``forkserver`` with those
modules preloaded): four fresh interpreters would spend most of this test importing.

Either way: no process may fail (no "database is locked"), no trial number may repeat,
every trial is accounted for (exactly the target COMPLETE, the rest closed as ``surplus``
without training, none left RUNNING/WAITING), and — with tracking — MLflow holds exactly
one child run per trained trial under the single parent run.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import re
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState
from reliability_helpers import REPO
from reliability_helpers import child_env
from reliability_helpers import create_study
from reliability_helpers import load_trials
from reliability_helpers import mlflow_runs
from reliability_helpers import seed_mlflow
from reliability_helpers import stop

from medauto.storage import StorageSettings
from medauto.storage import open_storage
from medauto.tracking import MlflowTracker

pytestmark = pytest.mark.slow

N_WORKERS = 4
N_TRIALS = 40
N_REAL_TRIALS = 4
#: What a worker must never print: lock errors, tracebacks, a tracker that switched off.
BAD_OUTPUT = re.compile(r"database is locked|Traceback|MLflow tracking .* failed|unexpected error")

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": f"{N_WORKERS} worker processes writing one study at once ({N_TRIALS} trials, "
        "real worker loop, trivial objective)",
        "backends": ["sqlite", "postgresql"],
        "expected": "no 'database is locked'; no duplicated trial numbers; exactly the target "
        "COMPLETE, the rest 'surplus', none RUNNING/WAITING",
    },
    {
        "fault": f"{N_WORKERS} worker processes (`AutoMLOptimizer.from_study().optimize()`, as "
        f"`medauto worker`) training one study with MLflow tracking ({N_REAL_TRIALS} trials)",
        "backends": ["sqlite"],
        "expected": "the same accounting; MLflow child runs = trained trials, one parent",
    },
]

#: One cheap worker process: argv = storage URL, sampler seed, trial target.
CHEAP_WORKER = r"""
import json, sys, time
import optuna
import medauto.worker
from medauto.worker import run_worker
from medauto.storage import StorageSettings, open_storage

# Nothing to free after a trivial trial; the loop's full gc.collect() per trial would only
# slow this test down. test_memory.py covers the release of memory between trials.
medauto.worker._release_memory = lambda *args: None

url, seed = sys.argv[1], int(sys.argv[2])
storage = open_storage(url, StorageSettings(heartbeat_interval=1, grace_period=5))
study = optuna.load_study(study_name="conc", storage=storage,
                          sampler=optuna.samplers.RandomSampler(seed=seed))

def objective(trial):
    x = trial.suggest_float("x", 0.0, 1.0)
    time.sleep(0.05)
    return x

report = run_worker(study, objective, target=int(sys.argv[3]), poll_interval=0.1)
print("REPORT " + json.dumps({"trials": report.trials, "stop": report.stop_reason}))
"""


def _check_accounting(url: str, target: int) -> list[optuna.trial.FrozenTrial]:
    trials = load_trials(url, "conc")
    numbers = [t.number for t in trials]
    assert sorted(numbers) == list(range(len(trials))), "duplicated or missing trial numbers"
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == target
    rest = [t for t in trials if t.state != TrialState.COMPLETE]
    assert all(t.state == TrialState.FAIL and t.user_attrs.get("reason") == "surplus"
               for t in rest), [(t.number, t.state, t.user_attrs.get("reason")) for t in rest]
    workers = {t.user_attrs["worker"] for t in complete}
    assert len(workers) >= 2, workers  # the work really was shared
    return complete


def _check_mlflow(run_dir: Path, complete: list[optuna.trial.FrozenTrial]) -> None:
    runs = mlflow_runs(run_dir, "conc")
    parents = [r for r in runs if r.data.tags.get("medauto.role") == "study"]
    children = [r for r in runs if r.data.tags.get("medauto.role") == "trial"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(int(r.data.tags["medauto.trial"]) for r in children) == sorted(
        t.number for t in complete
    ), "MLflow child runs != trained trials"
    assert all(r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in children)
    assert all(t.user_attrs["mlflow_run_id"] in {r.info.run_id for r in children}
               for t in complete)


def test_four_workers_forty_trials_one_study(backend_url: str, tmp_path: Path) -> None:
    optuna.create_study(
        study_name="conc", direction="maximize",
        storage=open_storage(backend_url, StorageSettings(heartbeat_interval=1, grace_period=5)),
    )
    logs = [tmp_path / f"w{k}.log" for k in range(N_WORKERS)]
    procs = []
    for k, log in enumerate(logs):
        with open(log, "wb") as sink:
            procs.append(subprocess.Popen(
                [sys.executable, "-c", CHEAP_WORKER, backend_url, str(k), str(N_TRIALS)],
                cwd=REPO, env=child_env(), stdout=sink, stderr=subprocess.STDOUT,
            ))
    try:
        codes = [p.wait(240) for p in procs]
    finally:
        for p in procs:
            stop(p)
    outputs = [log.read_text(errors="replace") for log in logs]
    assert codes == [0] * N_WORKERS, outputs
    for out in outputs:
        assert not BAD_OUTPUT.search(out), out
        assert '"stop": "target reached"' in out, out
    _check_accounting(backend_url, N_TRIALS)


def _real_worker(url: str, run_dir: str, data_dir: str, seed: int, log: str) -> None:
    """One worker process: what ``medauto worker --study conc`` runs after parsing argv."""
    import torch

    from medauto.logging import get_logger
    from medauto.optimizer import AutoMLOptimizer

    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    get_logger("medauto")  # its handler writes to this process's stderr, the log
    torch.set_num_threads(1)

    opt = AutoMLOptimizer.from_study(
        "conc", url, run_dir=run_dir, data_dir=data_dir, device="cpu", seed=seed,
        progress=False,
    )
    opt.optimize()


def test_four_workers_train_one_study_with_mlflow(
    tmp_path: Path, micro_data_dir: Path, micro_space: Path, mlflow_template: Path
) -> None:
    run = tmp_path / "run"
    seed_mlflow(run, mlflow_template)
    url = f"sqlite:///{run / 'medauto.db'}"
    study = create_study(url, "conc", micro_space, n_trials=N_REAL_TRIALS)
    MlflowTracker(f"sqlite:///{run / 'mlflow.db'}").start_study(study)  # as `search` does

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([
        "torch", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "matplotlib.figure",
        "matplotlib.backends.backend_agg", "med_core.backbones", "med_core.models",
        "med_core.data", "med_core.training", "medauto.optimizer", "medauto.objective",
        "medauto.tracking", "medauto.artifacts",
    ])
    logs = [tmp_path / f"w{k}.log" for k in range(N_WORKERS)]
    procs = [ctx.Process(target=_real_worker,
                         args=(url, str(run), str(micro_data_dir), k, str(logs[k])))
             for k in range(N_WORKERS)]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join(300)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
    outputs = [log.read_text(errors="replace") for log in logs]
    assert [p.exitcode for p in procs] == [0] * N_WORKERS, outputs
    for out in outputs:
        assert not BAD_OUTPUT.search(out), out

    complete = _check_accounting(url, N_REAL_TRIALS)
    assert all(t.user_attrs["epochs_run"] == 1 for t in complete)  # really trained
    _check_mlflow(run, complete)
