"""Fixtures of the data tests: the real MedMNIST files and small synthetic datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from med_core.data import DATA_DIR_ENV
from med_core.data import MedicalDataset
from med_core.data import load_dataset

# ``medmnist_dir`` (the real MedMNIST files) comes from tests/conftest.py.


@pytest.fixture
def data_dir_env(medmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points ``MEDAUTO_DATA_DIR`` at the real files for one test."""
    monkeypatch.setenv(DATA_DIR_ENV, str(medmnist_dir))
    return medmnist_dir


@pytest.fixture(scope="session")
def breast(medmnist_dir: Path) -> MedicalDataset:
    return load_dataset("breastmnist", data_dir=medmnist_dir)


@pytest.fixture(scope="session")
def retina(medmnist_dir: Path) -> MedicalDataset:
    return load_dataset("retinamnist", data_dir=medmnist_dir)


@pytest.fixture(scope="session")
def adrenal(medmnist_dir: Path) -> MedicalDataset:
    return load_dataset("adrenalmnist3d", data_dir=medmnist_dir)


@pytest.fixture(autouse=True)
def _one_thread():
    """The CI box has 2 shared cores: intra-op threads only add contention here."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _write_npz(path: Path, *, n: int = 6, shape=(28, 28), labels=None, dtype=np.uint8, **override):
    """A MedMNIST-style ``.npz`` with ``n`` samples per split; ``override`` replaces arrays."""
    rng = np.random.default_rng(0)
    arrays = {}
    for s in ("train", "val", "test"):
        arrays[f"{s}_images"] = rng.integers(0, 256, (n, *shape)).astype(dtype)
        arrays[f"{s}_labels"] = (
            labels.copy() if labels is not None else (np.arange(n) % 2).astype(np.uint8)[:, None]
        )
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _write_png(
    path: Path, *, size=(8, 8), mode="L", value: int | None = None, seed: int = 0
) -> Path:
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    a = (
        rng.integers(0, 256, shape).astype(np.uint8)
        if value is None
        else np.full(shape, value, np.uint8)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(a).save(path)
    return path


def _write_folder(root: Path, counts: dict[str, int], *, size=(8, 8), mode="L") -> Path:
    for c, k in counts.items():
        for i in range(k):
            _write_png(root / c / f"img_{i:03d}.png", size=size, mode=mode, seed=1000 * len(c) + i)
    return root


@pytest.fixture
def make_npz():
    """``make_npz(path, n=6, shape=(28, 28), labels=None, dtype=uint8, **arrays)``."""
    return _write_npz


@pytest.fixture
def make_png():
    """``make_png(path, size=(8, 8), mode="L"|"RGB", value=None, seed=0)``."""
    return _write_png


@pytest.fixture
def make_folder():
    """``make_folder(root, {"class": count, ...}, size=(8, 8), mode="L")``."""
    return _write_folder
