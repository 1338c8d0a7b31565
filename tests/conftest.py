"""Shared fixtures: the real MedMNIST files and a throwaway PostgreSQL server."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N` runs N test processes, and many tests start more (workers, DDP ranks,
    # CLI runs). One intra-op thread each (inherited by child processes) keeps a small CI
    # machine from oversubscribing its cores (the suite went from about 14 to 9 minutes on
    # two cores, together with other changes).
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, "1")


def _medmnist_dir() -> Path:
    """$MEDAUTO_TEST_DATA, else ../shared/data/medmnist beside the checkout."""
    env = os.environ.get("MEDAUTO_TEST_DATA")
    path = Path(env) if env else REPO.parent / "shared" / "data" / "medmnist"
    if not (path / "breastmnist.npz").is_file():
        raise RuntimeError(
            f"MedMNIST test data not found in {path}; set MEDAUTO_TEST_DATA to the folder "
            "holding breastmnist.npz (the project's shared/data/medmnist)"
        )
    return path


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs the modules that hold a ``slow`` test first; each module's tests stay together
    and in their order. pytest-xdist hands tests out in this order and a worker keeps the
    ones it was handed: with the end-to-end modules of tests/reliability near the end, one
    worker ran them for ~30 s after the other had finished the cheap rest."""
    slow = {item.path for item in items if item.get_closest_marker("slow") is not None}
    items.sort(key=lambda item: item.path not in slow)  # stable


@pytest.fixture(scope="session")
def medmnist_dir() -> Path:
    """The folder with the public MedMNIST .npz files (read-only)."""
    return _medmnist_dir()


@pytest.fixture(scope="session")
def micro_data_dir(medmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``breastmnist.npz`` cut to 32 train / 32 val / 32 test images, both classes in every
    split (read-only use; the CLI and reliability tests)."""
    from med_core.testing.data import cut_medmnist

    out = tmp_path_factory.mktemp("micro-data")
    cut_medmnist(medmnist_dir / "breastmnist.npz", out / "breastmnist.npz", 32,
                 both_classes=True)
    return out


@pytest.fixture
def micro_space(tmp_path: Path) -> Path:
    """:data:`micro.MICRO_SPACE` written to ``tmp_path/micro.yaml``."""
    from micro import MICRO_SPACE

    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_SPACE)
    return path


@pytest.fixture
def data_env(medmnist_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Points MEDAUTO_DATA_DIR at the MedMNIST files for the duration of a test."""
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(medmnist_dir))
    return medmnist_dir


@pytest.fixture(autouse=True)
def _reset_medauto_logging() -> Iterator[None]:
    """Undo the handlers and propagation a CLI call set up, so caplog sees every test's logs."""
    yield
    from medauto.logging import _reset_library_root_logger

    _reset_library_root_logger()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[object]:
    """One real PostgreSQL cluster per test session (initdb + pg_ctl on a free port)."""
    from medauto.testing.storages import PostgresServer

    with PostgresServer() as server:
        yield server
