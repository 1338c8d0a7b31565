"""Report building blocks on real Optuna studies built trial by trial (no training)."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from medauto.importance import param_importances
from medauto.report import pruning_statistics
from medauto.report import write_report
from medauto.retrain import RetrainResult
from medauto.retrain import SeedResult

LR = FloatDistribution(1e-4, 1e-1, log=True)
OPT = CategoricalDistribution(["adam", "sgd"])
MOM = FloatDistribution(0.0, 0.99)


def _cfg(epochs: int) -> dict[str, object]:
    return {"epochs": epochs, "model": {"backbone": "resnet18"}}


def _study(tmp_path: Path) -> optuna.Study:
    """6 trials on real SQLite storage: complete, pruned, failed and running ones; ``momentum``
    exists only for SGD (a conditional parameter)."""
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", study_name="u",
                                direction="maximize")
    study.set_user_attr("medauto:settings", {"data": "vesselmnist3d", "metric": "val_auc",
                                             "space": {"name": "unit"}})
    rows = [  # state, value, params, epochs_run, budget
        (TrialState.COMPLETE, 0.71, {"lr": 1e-3, "opt": "adam"}, 4, 4),
        (TrialState.COMPLETE, 0.83, {"lr": 3e-3, "opt": "sgd", "momentum": 0.9}, 4, 4),
        (TrialState.COMPLETE, 0.62, {"lr": 3e-2, "opt": "sgd", "momentum": 0.5}, 4, 4),
        (TrialState.PRUNED, None, {"lr": 5e-2, "opt": "adam"}, 1, 4),
        (TrialState.PRUNED, None, {"lr": 9e-2, "opt": "sgd", "momentum": 0.1}, 2, 4),
    ]
    for state, value, params, run, budget in rows:
        dists = {"lr": LR, "opt": OPT, **({"momentum": MOM} if "momentum" in params else {})}
        study.add_trial(create_trial(
            state=state, value=value, params=params, distributions=dists,
            user_attrs={"epochs_run": run, "config": _cfg(budget), "backbone": "resnet18"},
            intermediate_values={e: 0.5 + 0.01 * e for e in range(run)},
        ))
    # a failed trial without epochs_run: its reported epochs count
    study.add_trial(create_trial(
        state=TrialState.FAIL, params={"lr": 1e-2, "opt": "adam"},
        distributions={"lr": LR, "opt": OPT}, user_attrs={"config": _cfg(4)},
        intermediate_values={0: 0.5, 1: 0.5, 2: 0.4},
    ))
    return study


def test_pruning_statistics_sum_epochs_run_vs_max_epochs(tmp_path: Path) -> None:
    study = _study(tmp_path)
    study.enqueue_trial({"lr": 1e-3})
    running = study.ask()  # a RUNNING trial is not counted
    assert running.number == 6
    st = pruning_statistics(study)
    assert (st.trials, st.complete, st.pruned, st.failed, st.running) == (6, 3, 2, 1, 1)
    assert st.epochs_run == 4 + 4 + 4 + 1 + 2 + 3
    assert st.epochs_budget == 6 * 4
    assert st.epochs_saved == 24 - 18 and st.saved_fraction == pytest.approx(6 / 24)


def test_importances_rate_conditional_params_and_need_two_trials(tmp_path: Path) -> None:
    study = _study(tmp_path)
    imp, note = param_importances(study)
    assert set(imp) == {"lr", "opt", "momentum"}  # as the dashboard rates them (PED-ANOVA)
    assert math.isclose(sum(imp.values()), 1.0, rel_tol=1e-6)
    assert note == ""

    one = optuna.create_study()
    one.add_trial(create_trial(value=0.5, params={"lr": 1e-3}, distributions={"lr": LR}))
    assert param_importances(one) == ({}, "Parameter importances need at least 2 completed "
                                          "trials; this study has 1.")
    flat = optuna.create_study()
    for v in (0.1, 0.2):
        flat.add_trial(create_trial(value=v, params={"opt": "adam"}, distributions={
            "opt": CategoricalDistribution(["adam"])}))
    imp, note = param_importances(flat)
    assert imp == {} and note


def test_report_without_retrain_and_without_baselines(tmp_path: Path) -> None:
    study = _study(tmp_path)
    paths = write_report(study, out_dir=tmp_path / "rep")
    md = paths.markdown.read_text()
    assert "No retrain results" in md and "Not quantized" in md
    assert "Trial 1: val_auc = 0.8300" in md and "| momentum | 0.9 |" in md
    assert "| epochs trained | 18 |" in md and "6 (25.0 %)" in md
    assert {p.name for p in paths.images} == {"history.png", "importance.png"}

    result = RetrainResult(study="u", dataset="vesselmnist3d", task="binary", trials=[1],
                           seeds=[0], n_test=10,
                           per_seed=[SeedResult(0, {"auc": 0.8, "acc": 0.7}, ["trial1-seed0"])],
                           test_mean={"auc": 0.8, "acc": 0.7}, test_std={"auc": 0.0, "acc": 0.0})
    result.save(tmp_path / "retrain.json")
    md = write_report(study, out_dir=tmp_path / "rep2",
                      retrain=tmp_path / "retrain.json").markdown.read_text()
    assert "| medauto (u) | 0.800 | 0.700 | this report |" in md
    assert "no verified published MedMNIST v2 numbers for 'vesselmnist3d'" in md
