"""A trial's confusion-matrix artifact comes from the weights of its best epoch, the epoch
its value comes from, not from the last epoch's (issue 14)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch

import medauto.artifacts
from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from med_core.training import Callback
from med_core.training import Trainer
from medauto.artifacts import artifact_store_for
from medauto.objective import Objective
from medauto.scoring import split_metrics
from medauto.space import SearchSpace

SPACE = SearchSpace.from_dict({
    "name": "tiny", "spatial_dims": 2,
    "fixed": {"model.backbone": "mobilenet_v3_small", "model.pretrained": False,
              "amp_dtype": "none", "compile": False, "epochs": 4, "batch_size": 16,
              "augment.policy": "none", "optim.lr": 1e-2},
})


class SpoilTheLastWeights(Callback):
    """After the fit, the model's weights are no epoch's: zeros (a constant predictor)."""

    def on_fit_end(self, trainer: Trainer, history: Any) -> None:
        with torch.no_grad():
            for p in trainer.model.parameters():
                p.zero_()


def test_the_confusion_matrix_is_drawn_from_the_best_epochs_weights(
    medmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    seen: dict[str, Any] = {}
    original = medauto.artifacts.trial_artifacts

    def spy(trial: Any, trainer: Trainer, history: Any, **kw: Any) -> Any:
        y, score = trainer.predict("val")  # what the confusion matrix is drawn from
        seen.update(auc=split_metrics("binary", y, score)["auc"], distinct=len(np.unique(score)),
                    weights_epoch=kw.get("weights_epoch"), best_epoch=history.best_epoch)
        return original(trial, trainer, history, **kw)

    monkeypatch.setattr(medauto.artifacts, "trial_artifacts", spy)
    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "b.npz", 64,
                       both_classes=True)
    objective = Objective(SPACE, dataset=load_dataset(src), device="cpu",
                          overrides={"data.dataset": str(src)},
                          artifact_store=artifact_store_for(tmp_path),
                          callbacks=lambda trial, cfg: [SpoilTheLastWeights()])
    study = optuna.create_study(direction="maximize")
    study.optimize(objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.COMPLETE and seen
    assert seen["weights_epoch"] == seen["best_epoch"] + 1  # the title says which, 1-based
    assert seen["distinct"] > 1  # not the spoiled (constant) weights
    assert seen["auc"] == pytest.approx(trial.value, abs=1e-6)  # the best epoch's val AUC
