"""A budget always ends with a model: a real study whose every trial was pruned (as a
budget that ran out mid-trial leaves it) still ends `medauto search` with a final model,
built from the best partial trial, and says so."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState
from optuna.trial import create_trial

from med_core.config import TrainConfig
from med_core.testing.data import cut_medmnist
from medauto.cli import main
from medauto.ensemble import Predictor
from medauto.final import FINAL_FILE
from medauto.partial import best_partial_trial
from medauto.storage import open_storage

SPACE = """\
name: micro
description: one small backbone, two epochs at 28 px
fidelity: {min_epochs: 1, max_epochs: 2, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 16
  data.loader: tensor
  model.backbone: mobilenet_v3_small
  model.pretrained: false
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


def _pruned(lr: float, values: dict[int, float]) -> optuna.trial.FrozenTrial:
    """The record a budget-stopped trial leaves: PRUNED, its config, the epochs it ran."""
    cfg = TrainConfig.from_flat({"model.backbone": "mobilenet_v3_small",
                                 "model.pretrained": False, "epochs": 2, "batch_size": 16,
                                 "augment.policy": "none", "optim.lr": lr})
    return create_trial(
        state=TrialState.PRUNED, params={"optim.lr": lr},
        distributions={"optim.lr": FloatDistribution(1e-3, 1e-2, log=True)},
        intermediate_values=values,
        user_attrs={"config": cfg.to_dict(), "backbone": "mobilenet_v3_small",
                    "pruned_at_epoch": len(values), "reason": "pruned"},
    )


def test_a_study_whose_trials_were_all_pruned_ends_with_a_model(
    medmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "d" / "breastmnist.npz", 32,
                 both_classes=True)
    (tmp_path / "micro.yaml").write_text(SPACE)
    where = ["--study", "s", "--run-dir", str(tmp_path / "runs")]
    common = ["--data", "breastmnist", "--data-dir", str(tmp_path / "d"), "--space",
              str(tmp_path / "micro.yaml"), "--trials", "2", "--selection", "holdout",
              "--device", "cpu", "--no-tracking", *where]
    code, out, err = _main("create-study", *common)
    assert code == 0, out + err
    storage = open_storage(f"sqlite:///{tmp_path / 'runs/medauto.db'}")
    study = optuna.load_study(study_name="s", storage=storage)
    study.add_trial(_pruned(0.003, {1: 0.55, 2: 0.6}))
    study.add_trial(_pruned(0.005, {1: 0.62}))  # the best partial trial, pruned at epoch 1
    assert best_partial_trial(study).number == 1  # type: ignore[union-attr]
    # the target (2 finished trials) is met: no trial trains, the final model is built
    code, out, err = _main("search", *common, "--no-progress")
    assert code == 0, out + err
    assert "best trial: 1 (mobilenet_v3_small) - PARTIAL" in out
    assert "WARNING: no trial completed: the final model is the best partial trial 1 " in out
    final = json.loads((tmp_path / "runs/final/s" / FINAL_FILE).read_text())
    # trained again for the 1 epoch it had trained, not its configured 2
    assert final["partial"]["trial"] == 1 and final["partial"]["epochs"] == 1
    assert final["partial"]["value"] == pytest.approx(0.62)
    assert [m["trial"] for m in final["members"]] == [1] and final["n_test"] == 32
    assert final["warnings"][0].startswith("no trial completed")
    pred = Predictor.load(tmp_path / "runs/final/s/predictor")
    with np.load(tmp_path / "d" / "breastmnist.npz") as z:
        images = z["test_images"][:, None]
    assert pred.predict_proba(images).shape == (32, 2)
    # nothing completed and nothing pruned with a value: the one clear error stays
    assert best_partial_trial(optuna.create_study(study_name="e", storage=storage)) is None


def test_a_budget_without_final_model_whose_trials_were_all_pruned_retrains_one(
    medmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--budget --no-final-model` retrains the best trial instead of a final ensemble:
    with every trial pruned, it retrains the best partial one and says so (it used to end
    with "no completed medauto trial yet", exit 1 and nothing retrained)."""
    monkeypatch.chdir(tmp_path)
    cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "d" / "breastmnist.npz", 32,
                 both_classes=True)
    (tmp_path / "micro.yaml").write_text(SPACE)
    common = ["--data", "breastmnist", "--data-dir", str(tmp_path / "d"), "--space",
              str(tmp_path / "micro.yaml"), "--trials", "2", "--selection", "holdout",
              "--device", "cpu", "--no-tracking", "--study", "s",
              "--run-dir", str(tmp_path / "runs")]
    assert _main("create-study", *common)[0] == 0
    study = optuna.load_study(study_name="s", storage=open_storage(
        f"sqlite:///{tmp_path / 'runs/medauto.db'}"))
    study.add_trial(_pruned(0.003, {1: 0.55, 2: 0.6}))
    study.add_trial(_pruned(0.005, {1: 0.62}))
    code, out, err = _main("search", *common, "--no-progress", "--budget", "90s",
                           "--no-final-model", "--budget-seeds", "1", "--tta", "off")
    assert code == 0, out + err
    assert "best trial: 1 (mobilenet_v3_small)" in out
    assert "WARNING: PARTIAL: no trial completed; trial(s) [1] were pruned" in out
    retrained = json.loads((tmp_path / "runs/retrain/s/retrain.json").read_text())
    assert retrained["trials"] == [1] and retrained["partial"] == [1]
    assert retrained["trial_values"] == [pytest.approx(0.62)]
    assert retrained["n_test"] == 32
