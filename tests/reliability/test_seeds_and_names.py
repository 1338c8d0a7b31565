"""Sampler seeds differ per process and per resume (a given seed still reproduces a new
study), and study names are names, not paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from functools import partial
from pathlib import Path

import optuna
import pytest

from medauto.algorithms import make_sampler
from medauto.exceptions import MedautoError
from medauto.storage import open_storage
from medauto.study import StudySettings
from medauto.study import open_study
from medauto.study import validate_study_name

optuna.logging.set_verbosity(optuna.logging.WARNING)
REPO = Path(__file__).resolve().parents[2]

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": "two `medauto worker`s (and a resume) with the same `--seed`",
        "backends": ["sqlite"],
        "expected": "no configuration proposed twice; a new study with seed S proposes the "
        "same configurations on every run",
    },
    {
        "fault": "`--study ../../../esc` (a path as a study name)",
        "backends": ["sqlite"],
        "expected": "refused in one line (exit 1); nothing written outside --run-dir",
    },
]

SETTINGS = StudySettings(space={}, fingerprint="f", data="d", metric="val_auc",
                         direction="maximize", n_trials=100)
SAMPLER = partial(make_sampler, "random", None)

_JOIN_AND_ASK = """
import json, sys, optuna
from functools import partial
from medauto.algorithms import make_sampler
from medauto.storage import open_storage
from medauto.study import StudySettings, open_study
settings = StudySettings(space={}, fingerprint="f", data="d", metric="val_auc",
                         direction="maximize", n_trials=100)
study = open_study("s", open_storage(sys.argv[1]), settings,
                   sampler=partial(make_sampler, "random", None), seed=0)
xs = []
for _ in range(4):
    t = study.ask()
    xs.append(t.suggest_float("x", 0, 1))
    study.tell(t, 0.0)
print(json.dumps(xs))
"""


def _ask(study: optuna.Study, n: int) -> list[float]:
    xs = []
    for _ in range(n):
        t = study.ask()
        xs.append(t.suggest_float("x", 0, 1))
        study.tell(t, 0.0)
    return xs


def test_a_new_study_with_a_seed_is_reproducible(tmp_path: Path) -> None:
    runs = [
        _ask(open_study("s", open_storage(f"sqlite:///{tmp_path / f'{i}.db'}"), SETTINGS,
                        sampler=SAMPLER, seed=7), 3)
        for i in range(2)
    ]
    assert runs[0] == runs[1]


def test_workers_and_resumes_with_one_seed_do_not_repeat_proposals(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    first = _ask(open_study("s", open_storage(url), SETTINGS, sampler=SAMPLER, seed=0), 4)
    resumed = _ask(open_study("s", open_storage(url), SETTINGS, sampler=SAMPLER, seed=0), 4)
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "PYTHONPATH": path}
    procs = [subprocess.Popen([sys.executable, "-c", _JOIN_AND_ASK, url], env=env,
                              stdout=subprocess.PIPE, text=True) for _ in range(2)]
    workers = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    everything = first + resumed + workers[0] + workers[1]
    assert len(set(everything)) == len(everything) == 16, everything


@pytest.mark.parametrize("bad", ["../../../esc", "a/b", "..", ".hidden", "-x", "a b", "",
                                 "x" * 129, "a\\b", "a..b"])
def test_a_path_is_not_a_study_name(bad: str, tmp_path: Path) -> None:
    with pytest.raises(MedautoError, match="not a valid name"):
        validate_study_name(bad)
    with pytest.raises(MedautoError, match="not a valid name"):
        open_study(bad, open_storage(f"sqlite:///{tmp_path / 's.db'}"), SETTINGS)


def test_the_cli_refuses_a_path_as_study_name_in_one_line(
    tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    from medauto.cli import main

    run = tmp_path / "run"
    code = main(["search", "--selection", "holdout", "--no-final-model",
                 "--data", "breastmnist", "--data-dir", str(micro_data_dir),
                 "--space", str(micro_space), "--trials", "1", "--study", "../../../esc",
                 "--run-dir", str(run), "--device", "cpu", "--no-progress", "--no-tracking"])
    err = capsys.readouterr().err
    assert code == 1, err
    assert err.count("\n") == 1 and "not a valid name" in err
    assert not (tmp_path.parent / "esc").exists() and not list(tmp_path.parent.glob("esc*"))
