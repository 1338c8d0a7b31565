"""``python -m med_core.train``: end to end in a subprocess, error paths in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from med_core.config import TrainConfig
from med_core.testing.data import cut_medmnist
from med_core.train import main
from med_core.training import load_checkpoint

REPO = Path(__file__).resolve().parents[3]


def _tiny_config(path: Path, data_dir: Path) -> Path:
    """A config on a subset of the real BreastMNIST file, written in MedMNIST's format."""
    cut_medmnist(data_dir / "breastmnist.npz", path.parent / "tiny_breast.npz",
                 {"train": 96, "val": 40, "test": 40})
    cfg = TrainConfig.from_flat(
        {
            "data.dataset": "tiny_breast",
            "data.data_dir": str(path.parent),
            "model.backbone": "mobilenet_v3_small",
            "augment.policy": "light",
            "epochs": 1,
            "batch_size": 32,
        }
    )
    cfg.to_yaml(path)
    return path


def test_module_entry_point_trains_end_to_end(medmnist_dir: Path, tmp_path: Path) -> None:
    cfg_path = _tiny_config(tmp_path / "cfg.yaml", medmnist_dir)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "med_core.train",
            "--config",
            str(cfg_path),
            "--out",
            str(out),
            "--device",
            "cpu",
            "--set",
            "optim.lr=0.002",
            "--test",
            "-q",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    assert summary["stop_reason"] == "completed" and summary["epochs_run"] == 1
    assert summary["test_weights"] == "best" and 0.0 <= summary["test"]["test_auc"] <= 1.0
    assert sorted(p.name for p in out.iterdir()) == [
        "best.pt",
        "config.yaml",
        "last.pt",
        "summary.json",
    ]
    saved = TrainConfig.from_yaml(out / "config.yaml")
    assert saved.optim.lr == 0.002 and load_checkpoint(out / "last.pt")["config"] == saved.to_dict()


def test_bad_config_exits_1_with_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: -1\n")
    assert main(["--config", str(bad)]) == 1
    assert "optim.lr" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "missing.yaml")]) == 1
    assert "does not exist" in capsys.readouterr().err


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("epochs: 1\n")
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--resume"])  # --resume needs --out
    assert e.value.code == 2
    with pytest.raises(SystemExit) as e:
        main(["--config", str(cfg), "--set", "no-equals-sign"])
    assert e.value.code == 2
