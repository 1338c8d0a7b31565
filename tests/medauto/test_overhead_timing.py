"""The worker loop's timing hook (``MEDAUTO_TIMING_FILE``) and its garbage-collector freeze,
on a real SQLite study with a real objective-free loop."""

from __future__ import annotations

import gc
import json
from pathlib import Path

import optuna
import pytest

from medauto import worker
from medauto.worker import TIMING_ENV
from medauto.worker import run_worker


def _study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}")


def test_timing_hook_records_worker_phases(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    timing = tmp_path / "timing.jsonl"
    monkeypatch.setenv(TIMING_ENV, str(timing))
    monkeypatch.setattr(worker, "_imported_recorded", False)
    study = _study(tmp_path)
    run_worker(study, lambda t: t.suggest_float("x", 0, 1), target=2, poll_interval=0.01)
    records = [json.loads(line) for line in timing.read_text().splitlines()]
    phases = [r["phase"] for r in records]
    assert phases[0] == "imported"
    for phase in ("study_poll", "ask", "surplus_check", "trial_attrs", "objective", "tell",
                  "release_memory"):
        assert phase in phases, phase
    assert {r["trial"] for r in records if r["phase"] == "objective"} == {0, 1}
    assert all(r["t1"] >= r["t0"] > 0 for r in records)


def test_timing_hook_is_off_by_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TIMING_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    run_worker(_study(tmp_path), lambda t: 0.5, target=1, poll_interval=0.01)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.db"]


def test_worker_freezes_long_lived_objects_while_it_runs(tmp_path: Path) -> None:
    gc.unfreeze()
    frozen_during: list[int] = []

    def objective(trial: object) -> float:
        frozen_during.append(gc.get_freeze_count())
        return 0.5

    run_worker(_study(tmp_path), objective, target=2, poll_interval=0.01)
    assert len(frozen_during) == 2 and min(frozen_during) > 0  # frozen while trials run
    assert gc.get_freeze_count() == 0  # and given back to the collector afterwards
