"""Fixtures for medauto's end-to-end tests: a small slice of the real BreastMNIST file and
a search space sized for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from med_core.testing.data import cut_medmnist

TINY_SPACE = """\
name: tiny
description: one small backbone, two epochs; for CPU tests
fidelity: {min_epochs: 1, max_epochs: 2, reduction_factor: 2}
fixed:
  augment.policy: none
  batch_size: 32
  data.loader: tensor
params:
  model.backbone: [mobilenet_v3_small]
  optim.lr: {type: float, low: 1.0e-3, high: 1.0e-2, log: true}
"""


@pytest.fixture(scope="session")
def tiny_data_dir(medmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``breastmnist.npz`` cut to its first 96 train / 48 val / 48 test images (both classes
    present in each split), so a trial trains in seconds on two CPU cores."""
    out = tmp_path_factory.mktemp("tiny-data")
    cut_medmnist(medmnist_dir / "breastmnist.npz", out / "breastmnist.npz",
                 {"train": 96, "val": 48, "test": 48}, both_classes=True)
    return out


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path
