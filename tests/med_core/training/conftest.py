"""Fixtures of the training tests: the real BreastMNIST file and small, fast configs."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # training_helpers must be importable by name (spawned ranks)
    sys.path.insert(0, str(HERE))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """One intra-op thread: the CI box has 2 shared cores, and subprocess runs compared
    bit for bit with in-process runs must use the same thread count."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _data_dir_env(medmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """MEDAUTO_DATA_DIR points at the real MedMNIST files in every training test."""
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(medmnist_dir))
    return medmnist_dir
