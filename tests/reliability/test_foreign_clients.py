"""Plain Optuna clients sharing a medauto study, on SQLite, journal and PostgreSQL.

A user's script (``study.tell``, ``study.add_trial``), the ``optuna`` CLI or optuna-dashboard
may add trials to a medauto study. Those trials carry no medauto ``config``; medauto must
count them, leave them alone, and pick its results among its own trials by one rule
(:func:`medauto.results.ranked_trials`) — never crash on them.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from medauto.cli import main
from medauto.results import best_trial
from medauto.results import status_summary
from medauto.testing.storages import STORAGE_MODES
from medauto.testing.storages import plain_optuna_storage
from medauto.testing.storages import storage_url

pytestmark = pytest.mark.slow

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": "plain Optuna clients (`study.tell` with a better value, `add_trial`) in a "
        "medauto study",
        "backends": list(STORAGE_MODES),
        "expected": "`search`, `worker`-style resume, `best` and `status` exit 0; the best "
        "is the best medauto trial; foreign trials counted, untouched, never failed",
        "kind": "foreign",
    },
]


@pytest.fixture(params=STORAGE_MODES)
def any_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as u:
        yield u


def test_foreign_trials_do_not_crash_search_best_or_status(
    any_url: str, tmp_path: Path, micro_data_dir: Path, micro_space: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    common = ["--study", "mix", "--storage", any_url, "--run-dir", str(tmp_path / "run")]
    search = ["search", "--selection", "holdout", "--no-final-model",
              "--data", "breastmnist", "--data-dir", str(micro_data_dir),
              "--space", str(micro_space), "--trials", "1", "--device", "cpu",
              "--no-progress", "--no-tracking", *common]
    assert main(search) == 0

    # A plain Optuna client joins: one ask/tell with a perfect AUC, one add_trial.
    plain = optuna.load_study(study_name="mix", storage=plain_optuna_storage(any_url))
    t = plain.ask()
    t.suggest_float("optim.lr", 1e-3, 1e-2, log=True)
    plain.tell(t, 1.0)
    plain.add_trial(optuna.trial.create_trial(value=0.99, params={}, distributions={}))
    running = plain.ask()  # a foreign trial left RUNNING, never beating

    # The target (1) is met, so search returns at once: it used to die on KeyError 'config'.
    capsys.readouterr()
    assert main(search) == 0
    assert main(["best", *common[:4]]) == 0
    best_yaml = yaml.safe_load(capsys.readouterr().out)
    assert main(["status", *common[:4]]) == 0

    study = optuna.load_study(study_name="mix", storage=plain_optuna_storage(any_url))
    medauto_trial = best_trial(study)
    assert medauto_trial.number == 0 and "config" in medauto_trial.user_attrs
    assert isinstance(best_yaml, dict)
    summary = status_summary(study)
    assert summary["best"]["number"] == 0
    assert summary["foreign"] == 3
    assert summary["counts"]["COMPLETE"] == 3
    # The foreign RUNNING trial was left alone and its client can still tell it.
    plain.tell(running, 0.5)
    assert study.get_trials()[running.number].state == TrialState.COMPLETE


def test_status_counts_pruned_reasons_and_foreign_trials(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from medauto.storage import open_storage

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"),
                                study_name="s", direction="maximize")
    for reason, state in (("nan_loss", TrialState.PRUNED), ("nan_loss", TrialState.PRUNED),
                          ("oom", TrialState.PRUNED), ("pruned", TrialState.PRUNED),
                          ("error: ValueError: x", TrialState.FAIL)):
        t = study.ask()
        t.set_user_attr("reason", reason)
        study.tell(t, state=state)
    study.add_trial(optuna.trial.create_trial(value=0.9))  # a foreign COMPLETE trial
    s = status_summary(study)
    assert s["pruned_reasons"] == {"nan_loss": 2, "oom": 1}
    assert s["fail_reasons"] == {"error: ValueError: x": 1}
    assert s["foreign"] == 1 and s["best"] is None  # the foreign trial is never the best
    from medauto.cli import main

    assert main(["status", "--study", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}"]) == 0
    out = capsys.readouterr().out
    assert "pruned: 2 x nan_loss" in out and "pruned: 1 x oom" in out
    assert "other Optuna clients: 1 trial(s)" in out
