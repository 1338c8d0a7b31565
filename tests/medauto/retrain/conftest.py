"""Fixtures of the retrain/report tests: one real search and one real retrain, shared by
every test of the session (the search: 2 ResNet-18 trials on a BreastMNIST slice with
real SQLite storage and MLflow store; the retrain: top-2 ensemble x seeds 0, 1, static int8).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from med_core.testing.data import cut_medmnist

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # retrain_helpers is imported by name
    sys.path.insert(0, str(HERE))

from cli_runner import run_cli  # noqa: E402
from retrain_helpers import R18_SPACE  # noqa: E402
from retrain_helpers import STUDY  # noqa: E402
from retrain_helpers import Retrained  # noqa: E402
from retrain_helpers import Searched  # noqa: E402


@pytest.fixture(scope="session")
def small_data_dir(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``tiny_data_dir`` with half its training images and validation images (48/24/48):
    the retrain tests train six ResNet-18s, and the test split stays whole."""
    out = tmp_path_factory.mktemp("small-data")
    cut_medmnist(tiny_data_dir / "breastmnist.npz", out / "breastmnist.npz",
                 {"train": 48, "val": 24}, both_classes=True)
    return out


@pytest.fixture(scope="session")
def searched(tmp_path_factory: pytest.TempPathFactory, small_data_dir: Path) -> Searched:
    root = tmp_path_factory.mktemp("retrain")
    space = root / "r18.yaml"
    space.write_text(R18_SPACE)
    run_dir = root / "runs"
    code, out = run_cli(
        ["search", "--selection", "holdout", "--no-final-model",
         "--data", "breastmnist", "--space", str(space), "--trials", "2",
         "--study", STUDY, "--run-dir", str(run_dir), "--device", "cpu", "--no-progress",
         "--data-dir", str(small_data_dir), "--sampler", "random", "--seed", "1"],
        root,
    )
    assert code == 0, out
    return Searched(root, run_dir, small_data_dir, ["--study", STUDY, "--run-dir", str(run_dir)])


@pytest.fixture(scope="session")
def retrained(searched: Searched) -> Retrained:
    code, out = run_cli(
        ["retrain", *searched.argv, "--device", "cpu", "--ensemble", "2", "--seeds", "0", "1",
         "--quantize", "static", "--calibration-batches", "1", "--latency-batch", "8",
         "--latency-iters", "2"],
        searched.root,
    )
    assert code == 0, out
    return Retrained(searched, searched.run_dir / "retrain" / STUDY, out)
