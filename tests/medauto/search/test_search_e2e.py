"""`medauto search` end to end on real data: trials, pruning, status, best → train, resume."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from medauto.cli import main
from medauto.storage import open_storage

pytestmark = pytest.mark.slow


def _study(run_dir: Path, name: str) -> optuna.Study:
    return optuna.load_study(
        study_name=name, storage=open_storage(f"sqlite:///{run_dir / 'medauto.db'}")
    )


def test_search_fast_space_on_breastmnist(
    tmp_path: Path, data_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's command (there with 6 trials) on the real BreastMNIST: the shipped fast
    space, 4 trials to keep the suite quick."""
    run = tmp_path / "runs"
    argv = ["--study", "bm", "--run-dir", str(run)]
    code = main(["search", "--data", "breastmnist", "--space", "fast", "--trials", "4",
                 "--device", "cpu", "--no-progress", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    study = _study(run, "bm")
    states = [t.state for t in study.get_trials()]
    assert states.count(TrialState.COMPLETE) + states.count(TrialState.PRUNED) == 4
    # Chance is 0.5; a trained small CNN on BreastMNIST reaches ~0.8 within 4 epochs.
    assert study.best_value > 0.65
    assert f"{study.best_value:.4f}" in out

    assert main(["status", *argv]) == 0
    status = capsys.readouterr().out
    assert "4/4 finished" in status and f"{study.best_value:.4f}" in status

    best_yaml = tmp_path / "best.yaml"
    assert main(["best", *argv, "--output", str(best_yaml)]) == 0
    cfg = yaml.safe_load(best_yaml.read_text())
    assert cfg["model"]["backbone"] == study.best_trial.user_attrs["backbone"]
    # The exported config trains without a search (one epoch is enough to prove it).
    cfg["epochs"] = 1
    best_yaml.write_text(yaml.safe_dump(cfg))
    assert main(["train", "--config", str(best_yaml), "--device", "cpu",
                 "--out", str(tmp_path / "retrain")]) == 0
    assert (tmp_path / "retrain" / "best.pt").is_file()


BAD_TRIALS_SPACE = """\
name: obvious
description: one of the two learning rates cannot learn anything
fidelity: {min_epochs: 1, max_epochs: 3, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 32
  model.backbone: mobilenet_v3_small
  data.img_size: 16
params:
  optim.lr: [3.0e-3, 1.0e-9]
"""


def test_median_pruner_prunes_hopeless_trials(tmp_path: Path, data_env: Path) -> None:
    space = tmp_path / "obvious.yaml"
    space.write_text(BAD_TRIALS_SPACE)
    code = main([
        "search", "--data", "breastmnist", "--space", str(space), "--trials", "4",
        "--study", "p", "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress",
        "--sampler", "random", "--seed", "0",
        "--pruner", "median", "--pruner-arg", "n_startup_trials=1",
        "--pruner-arg", "n_warmup_steps=0", "--no-tracking",
    ])
    assert code == 0
    trials = _study(tmp_path, "p").get_trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned, [(t.params, t.intermediate_values) for t in trials]
    assert all(t.user_attrs["reason"] == "pruned" for t in pruned)
    assert all(t.user_attrs["epochs_run"] < 3 for t in pruned)  # stopped early


def test_stopped_search_resumes_to_the_target(
    tmp_path: Path, tiny_data_dir: Path, tiny_space: Path
) -> None:
    argv = ["search", "--data", "breastmnist", "--space", str(tiny_space), "--study", "r",
            "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress", "--no-tracking",
            "--data-dir", str(tiny_data_dir), "--trials", "3"]
    assert main([*argv, "--timeout", "1"]) == 0  # stops after its first trial
    assert len(_study(tmp_path, "r").get_trials()) == 1
    assert main(argv) == 0  # the same command again
    trials = _study(tmp_path, "r").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3


def test_unreachable_tracking_server_does_not_stop_the_search(
    tmp_path: Path, tiny_data_dir: Path, tiny_space: Path
) -> None:
    argv = ["search", "--data", "breastmnist", "--space", str(tiny_space), "--study", "u",
            "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress", "--trials", "1",
            "--data-dir", str(tiny_data_dir), "--tracking-uri", "http://127.0.0.1:9"]
    assert main(argv) == 0
    assert [t.state for t in _study(tmp_path, "u").get_trials()] == [TrialState.COMPLETE]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked locally instead
