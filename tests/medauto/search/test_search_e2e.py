"""`medauto search` end to end on real data: trials, pruning, status, best → train, resume."""

from __future__ import annotations

import json
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


def test_readme_command_on_breastmnist(
    tmp_path: Path, data_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The README's command (there with --budget 3m) on the real BreastMNIST, with a 30 s
    budget: no --space, so the data chooses `fast`; its 78 validation images would call for
    5-fold CV, but 30 s cannot pay for five fold fits on a CPU, so it scores on the
    validation split; the portfolio runs first (its first trial is capped at a few epochs
    and completes); the run ends with the final ensemble, tested once. (How good the model
    gets is the benchmark's business: docs/benchmarks/medmnist.md.)"""
    run = tmp_path / "runs"
    argv = ["--study", "bm", "--run-dir", str(run)]
    code = main(["search", "--data", "breastmnist", "--budget", "30s", "--device", "cpu",
                 "--no-progress", *argv])
    out = capsys.readouterr().out
    assert code == 0, out
    study = _study(run, "bm")
    trials = study.get_trials()
    assert trials[0].user_attrs["portfolio"] == "mobilenet_v3_small-recipe"
    assert study.user_attrs["medauto:settings"]["space"]["name"] == "fast"
    final = json.loads((run / "final" / "bm" / "final.json").read_text())
    assert study.user_attrs["medauto:settings"]["selection"] == "holdout"
    assert final["selection"] == "val" and final["n_test"] == 156
    assert 0.0 <= final["test"]["auc"] <= 1.0 and final["members"]
    assert f"test (n=156, once): ensemble auc={final['test']['auc']:.4f}" in out
    if final.get("partial"):  # a loaded machine: every trial stopped; still a model
        assert "PARTIAL" in out
        return

    assert main(["status", *argv]) == 0
    status = capsys.readouterr().out
    assert f"{study.best_value:.4f}" in status

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
        "search", "--selection", "holdout", "--no-final-model",
        "--data", "breastmnist", "--space", str(space), "--trials", "4",
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
    argv = ["search", "--selection", "holdout", "--no-final-model",
            "--data", "breastmnist", "--space", str(tiny_space), "--study", "r",
            "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress", "--no-tracking",
            "--data-dir", str(tiny_data_dir)]
    # A search stopped at one trial (a timing-free stand-in for --timeout or Ctrl-C) ...
    assert main([*argv, "--trials", "1"]) == 0
    assert len(_study(tmp_path, "r").get_trials()) == 1
    assert main([*argv, "--trials", "3"]) == 0  # ... resumes to the new target
    trials = _study(tmp_path, "r").get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 3


def test_unreachable_tracking_server_does_not_stop_the_search(
    tmp_path: Path, tiny_data_dir: Path, tiny_space: Path
) -> None:
    argv = ["search", "--selection", "holdout", "--no-final-model",
            "--data", "breastmnist", "--space", str(tiny_space), "--study", "u",
            "--run-dir", str(tmp_path), "--device", "cpu", "--no-progress", "--trials", "1",
            "--data-dir", str(tiny_data_dir), "--tracking-uri", "http://127.0.0.1:9"]
    assert main(argv) == 0
    assert [t.state for t in _study(tmp_path, "u").get_trials()] == [TrialState.COMPLETE]
    assert not (tmp_path / "mlflow.db").exists()  # nothing was tracked locally instead
