"""Fixtures for medauto's end-to-end tests: a small slice of the real BreastMNIST file and
a search space sized for a 2-core CPU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

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
    src = np.load(medmnist_dir / "breastmnist.npz")
    arrays = {}
    for split, n in (("train", 96), ("val", 48), ("test", 48)):
        arrays[f"{split}_images"] = src[f"{split}_images"][:n]
        arrays[f"{split}_labels"] = src[f"{split}_labels"][:n]
        assert len(np.unique(arrays[f"{split}_labels"])) == 2
    np.savez(out / "breastmnist.npz", **arrays)
    return out


@pytest.fixture
def tiny_space(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path
