"""The CLI's surface: help, choices, clear one-line errors for bad paths and devices."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from cli_helpers import Run


def test_medauto_alone_prints_help() -> None:
    proc = subprocess.run([sys.executable, "-m", "medauto.cli"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "usage: medauto" in proc.stdout and "create-study" in proc.stdout
    assert "error" not in proc.stderr


def test_help_lists_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    from medauto.algorithms import PRUNERS
    from medauto.algorithms import SAMPLERS
    from medauto.cli import main
    from medauto.optimizer import METRICS
    from medauto.space import list_spaces

    with pytest.raises(SystemExit):
        main(["search", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for name in [*SAMPLERS, *PRUNERS, *METRICS, *list_spaces()]:
        assert name in text, name


@pytest.mark.parametrize("device", ["gpu0", "cuda:99", "cuda"])
def test_a_bad_device_is_refused_before_a_study_exists(
    device: str, run: Run, tmp_path: Path
) -> None:
    import torch

    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    for command in ("search", "create-study"):
        code, _, err = run(command, "--space", "fast", "--device", device, "--run-dir", "runs")
        assert code == 1, err
        lines = err.strip().splitlines()
        assert len(lines) == 1 and f"{device!r}" in lines[0] and "device" in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_log_file_and_best_output_in_a_missing_folder_are_one_clear_error(
    run: Run, tmp_path: Path
) -> None:
    code, _, err = run("status", "--log-file", str(tmp_path / "nope" / "log.txt"))
    assert code == 1 and "unexpected" not in err and "nope" in err and "does not exist" in err
    code, _, err = run("best", "-o", str(tmp_path / "nope" / "best.yaml"))
    assert code == 1 and "unexpected" not in err and "does not exist" in err, err


def test_the_interrupt_line_claims_a_recorded_trial_only_where_one_was(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    from medauto.cli._results import RetrainCommand

    def interrupted(self: object, args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(RetrainCommand, "take_action", interrupted)
    code, _, err = run("retrain")
    assert code == 130 and "interrupted" in err
    assert "recorded as 'interrupted'" not in err and "resume" not in err, err
