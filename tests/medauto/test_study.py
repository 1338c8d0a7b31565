"""Creating, resuming and joining studies: settings stored, conflicts refused."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from medauto.algorithms import make_pruner
from medauto.algorithms import make_sampler
from medauto.algorithms import parse_kwargs
from medauto.exceptions import MedautoError
from medauto.exceptions import StudyConflictError
from medauto.fingerprint import CV_FOLDS
from medauto.fingerprint import Selection
from medauto.storage import open_storage
from medauto.study import StudySettings
from medauto.study import load_settings
from medauto.study import open_study
from medauto.study import stored_selection


def _settings(**kw: object) -> StudySettings:
    base = dict(space={"name": "x"}, fingerprint="abc", data="breastmnist", metric="val_auc",
                direction="maximize", n_trials=5)
    base.update(kw)
    return StudySettings(**base)  # type: ignore[arg-type]


def test_create_then_resume_updates_target(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    open_study("s", storage, _settings())
    study = open_study("s", storage, _settings(n_trials=9))
    assert load_settings(study).n_trials == 9
    assert load_settings(optuna.load_study(study_name="s", storage=storage)).n_trials == 9


def test_the_stored_selection_is_read_back_for_a_resume(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    assert stored_selection(storage, "s") is None  # no such study
    open_study("s", storage, _settings(selection="holdout"))
    open_study("cv4", storage, _settings(selection="cv", folds=4))  # a budget's step-down
    open_study("cv", storage, _settings(selection="cv"))  # from before the folds were stored
    open_study("old", storage, _settings())  # from before the selection was stored
    assert stored_selection(storage, "s") == Selection("holdout")
    assert stored_selection(storage, "cv4") == Selection("cv", folds=4)
    assert stored_selection(storage, "cv") == Selection("cv", folds=CV_FOLDS)
    assert stored_selection(storage, "old") is None


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"fingerprint": "zzz"}, "fingerprint: study has 'abc'"),
        ({"data": "pneumoniamnist"}, "data: study has 'breastmnist'"),
        ({"metric": "val_acc"}, "metric: study has 'val_auc'"),
        ({"direction": "minimize"}, "direction: study has 'maximize'"),
    ],
)
def test_conflicting_resume_is_refused(tmp_path: Path, change: dict, fragment: str) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    open_study("s", storage, _settings())
    with pytest.raises(StudyConflictError, match=fragment):
        open_study("s", storage, _settings(**change))
    assert load_settings(optuna.load_study(study_name="s", storage=storage)) == _settings()


def test_foreign_study_has_no_settings(tmp_path: Path) -> None:
    storage = open_storage(f"sqlite:///{tmp_path / 's.db'}")
    study = optuna.create_study(study_name="plain", storage=storage)
    with pytest.raises(MedautoError, match="has no medauto settings"):
        load_settings(study)


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: make_sampler("bayes"), "unknown sampler 'bayes'"),
        (lambda: make_pruner("early"), "unknown pruner 'early'"),
        (lambda: make_sampler("tpe", {"n_startup": 3}), "has no parameter(s) ['n_startup']"),
        (lambda: make_pruner("median", {"warmup": 3}), "has no parameter(s) ['warmup']"),
        (lambda: make_pruner("percentile", {"percentile": 150.0}), "invalid 'percentile' pruner"),
        (lambda: make_sampler("grid"), "needs a discrete search space"),
        (lambda: parse_kwargs(["novalue"]), "expected KEY=VALUE"),
    ],
)
def test_algorithm_errors(call, fragment: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(MedautoError) as info:
        call()
    assert fragment in str(info.value)


def test_hyperband_takes_max_epochs_as_resource() -> None:
    pruner = make_pruner("hyperband", max_epochs=27)
    assert pruner._max_resource == 27
    assert make_pruner("hyperband", {"max_resource": 9}, max_epochs=27)._max_resource == 9
