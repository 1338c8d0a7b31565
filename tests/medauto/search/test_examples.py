"""The examples run as a user would run them (on a slice of the real BreastMNIST)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]


def _env(data_dir: Path) -> dict[str, str]:
    env = {**os.environ, "MEDAUTO_DATA_DIR": str(data_dir), "OMP_NUM_THREADS": "1"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # `medauto`
    return env


def test_python_api_example(tmp_path: Path, micro_data_dir: Path, micro_space: Path) -> None:
    out = subprocess.run(
        [sys.executable, str(REPO / "examples" / "search_breastmnist.py"), "--trials", "1",
         "--space", str(micro_space), "--run-dir", str(tmp_path / "runs")],
        env=_env(micro_data_dir), capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert "best validation AUC" in out.stdout
    assert "model:\n  backbone: mobilenet_v3_small" in out.stdout  # the YAML of the best config


def test_cli_walkthrough(tmp_path: Path, micro_data_dir: Path, micro_space: Path) -> None:
    env = {**_env(micro_data_dir), "TRIALS": "1", "SPACE": str(micro_space)}
    out = subprocess.run(
        ["bash", str(REPO / "examples" / "cli_walkthrough.sh"), str(tmp_path / "runs")],
        env=env, capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "1/1 finished" in out.stdout
    assert (tmp_path / "runs" / "best.yaml").is_file()
    assert (tmp_path / "runs" / "best" / "best.pt").is_file()
