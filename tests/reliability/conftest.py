"""Fixtures of the fault-injection suite (issue 6); the helpers are in reliability_helpers.py.

Everything runs on CPU against real storages (SQLite files and the throwaway PostgreSQL
cluster of ``tests/conftest.py``), real ``medauto`` processes and real MLflow stores, on
data small enough for a shared 2-core machine:

* ``micro_data_dir`` and ``micro_space`` (shared, ``tests/conftest.py``): the first 32
  train / 32 val / 32 test images of the real ``breastmnist.npz`` and one fixed small
  backbone for one epoch, only the learning rate searched; a trial trains in about a
  second.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(params=["sqlite", "postgresql"])
def backend_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh storage URL on SQLite and on the real PostgreSQL server (never skipped)."""
    from medauto.testing.storages import storage_url

    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path, postgres=pg) as url:
        yield url


@pytest.fixture(scope="session")
def mlflow_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty MLflow SQLite store with its schema already migrated.

    ``medauto search`` creates the store on its first run (several seconds of schema
    migrations); copying this file into a run directory gives the same starting point
    without paying that in every test.
    """
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    MlflowClient(f"sqlite:///{path}").search_experiments()
    return path
