"""Helpers of the retrain/report tests (imported by name; see conftest.py).

The fixtures in conftest.py: one real search and one real retrain, shared.

The search runs ``medauto search`` (real SQLite Optuna storage, real MLflow SQLite store)
on a 48/24/48 cut of the BreastMNIST slice; the retrain runs ``medauto retrain`` on it with an
ensemble of the top 2 trials, two seeds and static int8 quantization. Both are done once
per session: every test reads their outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# ResNet-18 (the quantization target) for one epoch: the cheapest config that
# still makes every retrain/report feature observable on two CPU cores.
R18_SPACE = """\
name: r18-tiny
description: resnet18, one epoch, for CPU tests of retrain/report
fidelity: {min_epochs: 1, max_epochs: 1, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 32
  data.loader: tensor
  model.backbone: resnet18
params:
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""

STUDY = "rt"


@dataclass
class Searched:
    root: Path
    run_dir: Path
    data_dir: Path
    argv: list[str]  # --study/--run-dir for follow-up commands

    def study(self):  # type: ignore[no-untyped-def]
        import optuna

        from medauto.storage import open_storage

        url = f"sqlite:///{self.run_dir / 'medauto.db'}"
        return optuna.load_study(study_name=STUDY, storage=open_storage(url))


@dataclass
class Retrained:
    searched: Searched
    out_dir: Path
    stdout: str

    @property
    def result(self):  # type: ignore[no-untyped-def]
        from medauto.retrain import RetrainResult

        return RetrainResult.load(self.out_dir / "retrain.json")
