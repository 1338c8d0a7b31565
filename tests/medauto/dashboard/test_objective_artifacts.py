"""The objective uploads a trial's PNGs at the end of a real (tiny) training run, for
complete and for pruned trials, on a real SQLite study."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.artifacts import download_artifact
from optuna.artifacts import get_all_artifact_meta

from medauto.artifacts import CONFUSION_MATRIX_NAME
from medauto.artifacts import LEARNING_CURVE_NAME
from medauto.artifacts import artifact_store_for

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
optuna.logging.set_verbosity(optuna.logging.WARNING)


class _AlwaysPrune(optuna.pruners.BasePruner):
    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return True


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """Two tiny fits run fastest on one thread (the CI machine's cores are shared)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_dataset(medmnist_dir: Path) -> object:
    from med_core.data import MedicalDataset
    from med_core.data import load_dataset

    ds = load_dataset("breastmnist", data_dir=medmnist_dir)
    return MedicalDataset(
        ds.info,
        ds.train.subset(np.arange(32)),
        ds.val.subset(np.arange(24)),
        ds.test.subset(np.arange(8)),
    )


def _objective_and_cfg(dataset: object, run_dir: Path, epochs: int) -> tuple[object, object]:
    from med_core.config import TrainConfig
    from medauto.objective import Objective
    from medauto.space import SearchSpace

    cfg = TrainConfig.from_flat({
        "data.dataset": "breastmnist",
        "data.loader": "tensor",
        "model.backbone": "mobilenet_v3_small",
        "augment.policy": "none",
        "epochs": epochs,
        "batch_size": 16,
        "seed": 0,
    })
    objective = Objective(
        SearchSpace.from_yaml("fast"), dataset=dataset,  # type: ignore[arg-type]
        artifact_store=artifact_store_for(run_dir),
    )
    return objective, cfg


def _check_artifacts(study: optuna.Study, run_dir: Path, tmp_path: Path) -> None:
    frozen = study.get_trials()[0]
    metas = get_all_artifact_meta(frozen, storage=study._storage)
    assert sorted(m.filename for m in metas) == sorted([CONFUSION_MATRIX_NAME, LEARNING_CURVE_NAME])
    for meta in metas:
        out = tmp_path / "dl" / meta.filename
        out.parent.mkdir(exist_ok=True)
        download_artifact(
            artifact_store=artifact_store_for(run_dir), artifact_id=meta.artifact_id,
            file_path=str(out),
        )
        data = out.read_bytes()
        assert data[:8] == PNG_SIGNATURE and len(data) > 8_000


def test_complete_trial_uploads_curve_and_confusion_matrix(
    tiny_dataset: object, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    objective, cfg = _objective_and_cfg(tiny_dataset, run_dir, epochs=1)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    trial = study.ask()
    value = objective.train(trial, cfg)  # type: ignore[attr-defined]
    study.tell(trial, value)
    assert study.get_trials()[0].state == optuna.trial.TrialState.COMPLETE
    _check_artifacts(study, run_dir, tmp_path)


def test_pruned_trial_uploads_curve_and_confusion_matrix(
    tiny_dataset: object, tmp_path: Path
) -> None:
    run_dir = tmp_path / "run"
    objective, cfg = _objective_and_cfg(tiny_dataset, run_dir, epochs=2)
    study = optuna.create_study(
        storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize", pruner=_AlwaysPrune()
    )
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned):
        objective.train(trial, cfg)  # type: ignore[attr-defined]
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    frozen = study.get_trials()[0]
    assert frozen.user_attrs["pruned_at_epoch"] == 1
    _check_artifacts(study, run_dir, tmp_path)


def test_a_search_draws_artifacts_only_for_trials_that_become_best(
    tiny_dataset: object, tmp_path: Path
) -> None:
    """``artifact_trials="best"`` (the search's): the first completed trial draws, a trial
    below the study's best does not; both still record their history."""
    run_dir = tmp_path / "run"
    objective, cfg = _objective_and_cfg(tiny_dataset, run_dir, epochs=1)
    objective.artifact_trials = "best"  # type: ignore[attr-defined]
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 's.db'}", direction="maximize")
    first = study.ask()
    study.tell(first, objective.train(first, cfg))  # type: ignore[attr-defined]
    _check_artifacts(study, run_dir, tmp_path)
    study.add_trial(optuna.trial.create_trial(value=2.0))  # above any AUC: the best
    worse = study.ask()
    study.tell(worse, objective.train(worse, cfg))  # type: ignore[attr-defined]
    frozen = study.get_trials()[worse.number]
    assert frozen.state == optuna.trial.TrialState.COMPLETE and frozen.user_attrs["history"]
    assert get_all_artifact_meta(frozen, storage=study._storage) == []


def test_artifact_trials_is_validated(tiny_dataset: object) -> None:
    from medauto.objective import Objective
    from medauto.space import SearchSpace

    with pytest.raises(ValueError, match="artifact_trials must be one of"):
        Objective(SearchSpace.from_yaml("fast"), dataset=tiny_dataset,  # type: ignore[arg-type]
                  artifact_trials="some")
