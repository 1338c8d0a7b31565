"""Studies without friction: create-study, an optional --study, read commands that never
create a store, a trial table in status, and hints that carry --storage/--run-dir."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import optuna
import pytest
import yaml
from cli_helpers import Run

READ_COMMANDS = [["status"], ["best"], ["retrain", "--device", "cpu"],
                 ["distill", "--device", "cpu"], ["report"], ["export", "--study", "s"],
                 ["dashboard"]]


@pytest.mark.parametrize("argv", READ_COMMANDS, ids=lambda a: a[0])
def test_read_commands_never_create_a_store_and_say_where_they_looked(
    argv: list[str], run: Run, tmp_path: Path
) -> None:
    code, _, err = run(*argv, "--run-dir", "elsewhere")
    assert code == 1, err
    assert str((tmp_path / "elsewhere").resolve()) in err, err
    assert not (tmp_path / "elsewhere").exists()


def _create(run: Run, space: Path, data_dir: Path, study: str, *extra: str) -> str:
    code, out, err = run("create-study", "--space", str(space), "--data", "breastmnist",
                         "--data-dir", str(data_dir), "--study", study, "--trials", "3",
                         "--device", "cpu", "--run-dir", "runs", *extra)
    assert code == 0, err
    return out


def test_create_study_stores_its_settings_without_training(
    run: Run, micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    out = _create(run, micro_space, micro_data_dir, "bm")
    assert "study: bm" in out
    assert "next: medauto worker --study bm --run-dir runs" in out
    study = optuna.load_study(study_name="bm", storage=f"sqlite:///{tmp_path}/runs/medauto.db")
    assert study.trials == []
    from medauto.study import load_settings

    settings = load_settings(study)
    assert settings.n_trials == 3 and settings.space["name"] == "micro"


def test_study_is_optional_when_the_store_holds_one(
    run: Run, micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    _create(run, micro_space, micro_data_dir, "only")
    code, out, err = run("status", "--run-dir", "runs")
    assert code == 0, err
    assert "study only: 0/3 finished" in out
    study = optuna.load_study(study_name="only", storage=f"sqlite:///{tmp_path}/runs/medauto.db")
    trial = study.ask({"optim.lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True)})
    trial.set_user_attr("config", {"optim": {"lr": trial.params["optim.lr"]}})
    study.tell(trial, 0.75)
    # the other read commands take the only study too
    code, out, err = run("best", "--run-dir", "runs")
    assert code == 0 and yaml.safe_load(out)["optim"]["lr"] == trial.params["optim.lr"], err
    code, out, err = run("report", "--run-dir", "runs")
    assert code == 0 and "markdown: runs/report/only/report.md" in out, err
    _create(run, micro_space, micro_data_dir, "second")
    code, _, err = run("status", "--run-dir", "runs")
    assert code == 1 and "2 studies" in err and "'only'" in err and "'second'" in err
    assert "--study" in err


def test_status_shows_a_trial_table_with_reasons(
    run: Run, micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    _create(run, micro_space, micro_data_dir, "t")
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path}/runs/medauto.db")
    done = study.ask()
    done.set_user_attr("backbone", "resnet18")
    done.report(0.7, 1)
    done.report(0.8, 2)
    study.tell(done, 0.8123)
    nan = study.ask()
    nan.set_user_attr("backbone", "mobilenet_v3_small")
    nan.set_user_attr("reason", "nan_loss")
    study.tell(nan, state=optuna.trial.TrialState.PRUNED)
    code, out, err = run("status", "--run-dir", "runs")
    assert code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("number"))
    assert header.split() == ["number", "state", "value", "backbone", "epochs", "reason"]
    rows = [line.split() for line in out.splitlines()[out.splitlines().index(header) + 1:]
            if line[:1].isdigit()]
    assert rows == [["0", "COMPLETE", "0.8123", "resnet18", "2"],
                    ["1", "PRUNED", "-", "mobilenet_v3_small", "0", "nan_loss"]]
    code, out, _ = run("status", "--run-dir", "runs", "--json")
    assert [t["reason"] for t in json.loads(out)["trials"]] == ["", "nan_loss"]


def test_hints_carry_storage_and_run_dir_and_never_a_password() -> None:
    from medauto.cli._hints import next_hint
    from medauto.cli._store import StoreRef

    given = StoreRef(given="postgresql://bob:s3cret@db:5432/optuna", from_env=False,
                     run_dir="my runs")
    hint = next_hint(given, "s", ["report"])
    assert hint == ("next: medauto report --study s --storage "
                    "'postgresql://bob:***@db:5432/optuna' --run-dir 'my runs'")
    env = StoreRef(given="postgresql://bob:s3cret@db/optuna", from_env=True, run_dir="r")
    assert next_hint(env, "s", ["status"]) == (
        'next: medauto status --study s --storage "$MEDAUTO_STORAGE" --run-dir r')


def test_every_log_line_of_the_cli_is_redacted(run: Run, tmp_path: Path) -> None:
    from medauto.logging import get_logger

    log = tmp_path / "log.txt"
    run("status", "--run-dir", "runs", "--log-file", str(log))  # configures the handlers
    get_logger("medauto.test").warning("opening %s", "postgresql://bob:s3cret@db/optuna")
    logging.getLogger("med_core.test").warning("at mysql://u:hunter2@h/db")
    text = log.read_text()
    assert "s3cret" not in text and "hunter2" not in text
    assert "postgresql://bob:***@db/optuna" in text and "mysql://u:***@h/db" in text


@pytest.mark.parametrize("command", ["export", "explain"])
def test_result_commands_take_the_only_study_with_results_and_say_where_they_looked(
    command: str, run: Run, tmp_path: Path
) -> None:
    from medauto.cli._store import results_study

    extra = ["--data", "breastmnist"] if command == "explain" else []
    code, _, err = run(command, "--run-dir", "runs", *extra)
    assert code == 1 and str((tmp_path / "runs").resolve()) in err and "no results" in err, err
    (tmp_path / "runs" / "retrain" / "a").mkdir(parents=True)
    (tmp_path / "runs" / "retrain" / "a" / "retrain.json").write_text("{}")
    assert results_study("runs", None) == "a"
    assert results_study("runs", "b") == "b"
    (tmp_path / "runs" / "final" / "b" / "predictor").mkdir(parents=True)
    from medauto.ensemble import PREDICTOR_FILE

    (tmp_path / "runs" / "final" / "b" / "predictor" / PREDICTOR_FILE).write_text("{}")
    code, _, err = run(command, "--run-dir", "runs", *extra)
    assert code == 1 and "2 studies: ['a', 'b']" in err and "--study" in err, err
