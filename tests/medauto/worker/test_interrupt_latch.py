"""A Ctrl-C that lands where Python swallows exceptions still interrupts the worker.

CPython runs a signal handler at the main thread's next bytecode; inside a weakref callback
(importlib's module-lock callback during an import, in the flaky interrupt test's case) the
handler's ``KeyboardInterrupt`` is printed as "Exception ignored in ..." and dropped. The
child below delivers SIGINT to itself from inside a weakref callback, exactly that, then
trains on (a stalled loop). The worker must still record the trial as interrupted and stop.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

_CHILD = r"""
import os, signal, sys, time, weakref
import optuna
from medauto.worker import run_worker
from medauto.storage import open_storage

signal.signal(signal.SIGINT, signal.default_int_handler)  # as an interactive shell has it
study = optuna.create_study(storage=open_storage(sys.argv[1]), study_name="s")

class Thing:
    pass

def callback(_ref):
    os.kill(os.getpid(), signal.SIGINT)  # lands inside this callback: swallowed
    for _ in range(100):
        pass

def objective(trial):
    thing = Thing()
    ref = weakref.ref(thing, callback)
    del thing  # runs the callback, which swallows the KeyboardInterrupt
    print("swallowed", flush=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:  # the trial trains on
        time.sleep(0.05)
    return 1.0

try:
    run_worker(study, objective, target=1)
except KeyboardInterrupt:
    trial = study.get_trials()[0]
    print("interrupted", trial.state.name, trial.user_attrs["reason"], flush=True)
    sys.exit(130)
print("not interrupted", flush=True)
"""


def test_a_swallowed_sigint_is_delivered_again(tmp_path: Path) -> None:
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _CHILD, f"sqlite:///{tmp_path / 's.db'}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert "Exception ignored" in proc.stderr, proc.stderr[-2000:]  # it really was swallowed
    assert proc.returncode == 130, proc.stdout + proc.stderr[-2000:]
    assert "interrupted FAIL interrupted" in proc.stdout


_ASK_CHILD = r"""
import os, signal, sys
import optuna
from medauto.worker import run_worker
from medauto.storage import open_storage

signal.signal(signal.SIGINT, signal.default_int_handler)

class InterruptedAsk(optuna.samplers.RandomSampler):
    # study.ask() calls this after the storage has created the trial, before it returns it
    def before_trial(self, study, trial):
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):  # bytecodes for the handler to run at
            pass

study = optuna.create_study(storage=open_storage(sys.argv[1]), study_name="s",
                            sampler=InterruptedAsk())
try:
    run_worker(study, lambda trial: 1.0, target=1)
except KeyboardInterrupt:
    trial = study.get_trials()[0]
    print("interrupted", trial.state.name, trial.user_attrs.get("reason"), flush=True)
    sys.exit(130)
print("not interrupted", flush=True)
"""


def test_an_interrupt_inside_ask_records_the_trial_it_created(tmp_path: Path) -> None:
    """The CI failure of test_sigterm_stops_the_search_and_its_workers_and_records_their_trials:
    a SIGTERM that landed inside ``study.ask()``, after the storage had created the trial,
    left that trial RUNNING."""
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    proc = subprocess.run([sys.executable, "-c", _ASK_CHILD, f"sqlite:///{tmp_path / 's.db'}"],
                          env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 130, proc.stdout + proc.stderr[-2000:]
    assert "interrupted FAIL interrupted" in proc.stdout, proc.stdout
