"""``medauto search --trials-per-device 2`` on a CPU: two real worker processes train the
study's trials at once, the study-wide ``--trials`` target is met exactly, no trial is
trained twice and every trial's state and reason are recorded. The rule of ``"auto"``
(:func:`medauto.concurrency.choose_trials_per_device`) is checked on measured readings."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medauto.budget import plan_budget
from medauto.concurrency import CONTEXT_BYTES
from medauto.concurrency import ProbeReading
from medauto.concurrency import choose_trials_per_device
from medauto.concurrency import parse_trials_per_device
from medauto.concurrency import scaled_plan
from medauto.exceptions import MedautoError
from medauto.keys import DURATION_ATTR
from medauto.keys import REASON_ATTR
from medauto.keys import TRAIN_S_ATTR
from medauto.keys import WORKER_ATTR
from medauto.storage import open_storage

REPO = Path(__file__).resolve().parents[3]
GIB = 1024**3


def _search(study: str, trials: int, micro_space: Path, micro_data_dir: Path
            ) -> tuple[list[str], dict[str, str]]:
    """The argv and environment of ``medauto search`` with two trials at once on the CPU."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    env.pop("MEDAUTO_TRACKING_URI", None)
    return [sys.executable, "-m", "medauto.cli", "search", "--data", "breastmnist",
            "--data-dir", str(micro_data_dir), "--space", str(micro_space), "--trials",
            str(trials), "--device", "cpu", "--trials-per-device", "2", "--no-tracking",
            "--no-progress", "--run-dir", "runs", "--study", study, "--selection", "holdout",
            "--no-final-model"], env


def test_two_trials_at_once_meet_the_exact_target_without_duplicates(
    micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    argv, env = _search("k2", 5, micro_space, micro_data_dir)
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "started 1 more worker process(es)" in proc.stderr
    study = optuna.load_study(study_name="k2", storage=f"sqlite:///{tmp_path / 'runs/medauto.db'}")
    trials = study.get_trials(deepcopy=False)
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 5  # the study-wide target, exactly
    assert all(t.state != TrialState.RUNNING for t in trials)
    assert {t.user_attrs[WORKER_ATTR] for t in finished} and len(
        {t.user_attrs[WORKER_ATTR] for t in finished}) == 2  # both processes trained
    for t in trials:  # every trial that did not complete says why
        if t.state != TrialState.COMPLETE:
            assert t.user_attrs.get(REASON_ATTR), (t.number, t.state)
    assert all(t.user_attrs[REASON_ATTR] == "surplus" for t in trials if t.state == TrialState.FAIL)
    lr = [t.params["optim.lr"] for t in finished]
    assert len(set(lr)) == len(lr)  # no configuration trained twice
    one = finished[0].user_attrs[WORKER_ATTR]
    first = [t for t in finished if t.user_attrs[WORKER_ATTR] == one]
    other = [t for t in finished if t not in first]
    assert any(a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete
               for a in first for b in other)  # trained at the same time


def _reading(busy: float, util: float | None, peak_gib: float = 2.0,
             free_gib: float = 100.0) -> ProbeReading:
    return ProbeReading(duration_s=10.0, train_s=10.0 * busy, peak_bytes=int(peak_gib * GIB),
                        free_bytes=int(free_gib * GIB), gpu_util=util)


def test_auto_packs_only_set_up_or_launch_bound_trials_and_never_past_free_memory() -> None:
    assert choose_trials_per_device(_reading(0.2, 0.1), "cpu")[0] == 1
    assert choose_trials_per_device(_reading(0.9, 0.95), "cuda:0")[0] == 1  # device-bound
    assert choose_trials_per_device(_reading(0.9, None), "cuda:0")[0] == 1  # unknown: busy
    assert choose_trials_per_device(_reading(0.9, 0.5), "cuda:0")[0] == 2  # launch bound
    assert choose_trials_per_device(_reading(0.6, None), "cuda:0")[0] == 2  # set-up bound
    assert choose_trials_per_device(_reading(0.3, 0.2), "cuda:0")[0] == 3  # mostly idle
    # each more trial needs its peak plus a CUDA context, within 80 % of the free memory
    tight = (2 * GIB + CONTEXT_BYTES) / 0.8 / GIB + 0.01
    k, why = choose_trials_per_device(_reading(0.3, 0.2, free_gib=tight), "cuda:0")
    assert k == 2 and "free memory holds 2" in why
    assert choose_trials_per_device(None, "cuda:0")[0] == 1


def test_a_cross_validated_probe_counts_the_training_of_every_fold() -> None:
    # an H200 AdrenalMNIST3D search read only its probe's first fold of 5: "trained 19% of
    # its wall time at 93% GPU utilisation", so it packed 3 device-bound trials (each
    # epoch 3x slower, 2 of 4 trials stopped unfinished at the deadline)
    probe = optuna.trial.create_trial(
        value=0.9, user_attrs={DURATION_ATTR: 150.0, TRAIN_S_ATTR: [28.0, 27.0, 27.5, 28.0, 27.5]})
    reading = ProbeReading.of_trial(probe, peak_bytes=2 * GIB, free_bytes=100 * GIB,
                                    gpu_util=0.93)
    assert reading.busy_share == pytest.approx(138 / 150)
    assert choose_trials_per_device(reading, "cuda:0") == (
        1, "probe trained 92% of its wall time at 93% GPU utilisation: device-bound")


def test_trials_per_device_is_auto_or_a_positive_integer() -> None:
    assert parse_trials_per_device("auto") == "auto"
    assert parse_trials_per_device("2") == 2 and parse_trials_per_device(3) == 3
    for bad in ("0", "-1", "two", 1.5, True):
        with pytest.raises(MedautoError, match="'auto' or an integer >= 1"):
            parse_trials_per_device(bad)  # type: ignore[arg-type]


def test_a_shared_device_stretches_the_trial_cap_but_never_past_the_search() -> None:
    plan = plan_budget("10m", seeds=1, ensemble=1, retrain_fraction=0.05, trial_share=1 / 3)
    assert scaled_plan(plan, 1) is plan
    two = scaled_plan(plan, 2)
    assert two is not None and two.trial_cap_s == pytest.approx(2 * plan.trial_cap_s)
    assert two.search_s == plan.search_s  # the deadline does not move
    four = scaled_plan(plan, 4)
    assert four is not None and four.trial_cap_s == plan.search_s


def test_sigterm_stops_the_search_and_its_workers_and_records_their_trials(
    micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    import signal
    import time

    argv, env = _search("stop", 500, micro_space, micro_data_dir)
    parent = subprocess.Popen(argv, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    # medauto's storage, not a plain Optuna one: polling a store that the search is creating
    # must not race it to create the schema (a plain one did: alembic_version UNIQUE failed)
    url = f"sqlite:///{tmp_path / 'runs/medauto.db'}"
    deadline = time.monotonic() + 180
    try:
        while time.monotonic() < deadline:  # until both processes have finished a trial
            assert parent.poll() is None, parent.communicate()[1][-3000:]
            if (tmp_path / "runs/medauto.db").exists():
                try:
                    study = optuna.load_study(study_name="stop", storage=open_storage(url))
                    done = [t for t in study.get_trials(deepcopy=False)
                            if t.state == TrialState.COMPLETE]
                except KeyError:  # the study is not created yet
                    done = []
                if len({t.user_attrs.get(WORKER_ATTR) for t in done}) == 2:
                    break
            time.sleep(0.5)
        else:
            pytest.fail("the two workers did not both finish a trial")
        parent.send_signal(signal.SIGTERM)
        _, err = parent.communicate(timeout=120)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert parent.returncode == 130, err[-3000:]
    trials = optuna.load_study(study_name="stop", storage=open_storage(url)).get_trials(
        deepcopy=False)
    assert not [t.number for t in trials if t.state == TrialState.RUNNING]
    for t in trials:
        if t.state == TrialState.FAIL:
            assert t.user_attrs[REASON_ATTR] in ("interrupted", "surplus"), t.user_attrs
