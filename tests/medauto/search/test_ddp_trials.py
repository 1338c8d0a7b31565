"""DDP trials: a 2-process gloo group per trial; rank 0 owns the Optuna trial."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from medauto.distributed import launch_ddp_worker
from medauto.space import SearchSpace
from medauto.storage import open_storage
from medauto.study import StudySettings
from medauto.study import open_study

pytestmark = [pytest.mark.slow, pytest.mark.ddp]

SPACE = """\
name: ddp
fidelity: {min_epochs: 1, max_epochs: 2, reduction_factor: 2}
fixed:
  augment.policy: light
  batch_size: 32
  model.backbone: mobilenet_v3_small
  data.img_size: 16
params:
  optim.lr: [3.0e-3, 1.0e-9]
  model.dropout: {type: float, low: 0.0, high: 0.3}
"""


def test_ranks_agree_on_params_and_prune_decisions(tmp_path: Path, medmnist_dir: Path) -> None:
    path = tmp_path / "ddp.yaml"
    path.write_text(SPACE)
    space = SearchSpace.from_yaml(path)
    url = f"sqlite:///{tmp_path / 'study.db'}"
    settings = StudySettings(space=space.to_dict(), fingerprint=space.fingerprint(),
                             data="breastmnist", metric="val_auc", direction="maximize",
                             n_trials=4)
    study = open_study("ddp", open_storage(url), settings)
    # a learning trial first, then hopeless ones the median pruner stops (the workers'
    # sampler seeds differ per process, so random draws alone would make this flaky)
    study.enqueue_trial({"optim.lr": 3.0e-3, "model.dropout": 0.1})
    for _ in range(3):
        study.enqueue_trial({"optim.lr": 1.0e-9, "model.dropout": 0.1})

    logs = launch_ddp_worker(
        "ddp", url, gpus_per_trial=2, device="cpu", data_dir=str(medmnist_dir),
        sampler="random", seed=0, pruner="median",
        pruner_kwargs={"n_startup_trials": 1, "n_warmup_steps": 0},
        tracking=False, progress=False, run_dir=str(tmp_path),
    )
    rank0, rank1 = (log.trials for log in logs)
    assert [t["number"] for t in rank0] == [t["number"] for t in rank1] != []
    for a, b in zip(rank0, rank1, strict=True):
        assert a["config"] == b["config"]  # the broadcast config, every field
        assert a["pruned"] == b["pruned"]  # the broadcast prune decision
        assert a["epochs_run"] == b["epochs_run"]  # ... taken at the same epoch

    study = optuna.load_study(study_name="ddp", storage=open_storage(url))
    finished = {t.number: t for t in study.get_trials() if t.state.is_finished()}
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in finished.values()) == 4
    assert any(t["pruned"] for t in rank0), "the space should make some trial prunable"
    for entry in rank0:
        trial = finished[entry["number"]]
        assert trial.params["optim.lr"] == entry["config"]["optim.lr"]
        assert (trial.state == TrialState.PRUNED) == entry["pruned"]
