"""Optuna's own storage test suite (``optuna.testing.pytest_storages.StorageTestCase``, shipped
in the installed ``optuna`` package, so it runs offline and always matches the installed
version) against medauto's storages: SQLite, journal and PostgreSQL via ``open_storage``.

Every test of the suite runs; none is skipped. Where medauto deliberately differs from
plain Optuna (:data:`DEVIATIONS`), the test is a strict ``xfail`` with the reason, so it is
counted in ``docs/reliability.md`` and turns into a failure the day it passes. One storage
per backend is shared by the module and emptied (every study deleted) after each test, which
keeps the ~270 runs to seconds instead of a new database schema per test.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from optuna.storages import BaseStorage
from optuna.storages import JournalStorage
from optuna.testing.pytest_storages import StorageTestCase

from medauto.storage import open_storage
from medauto.testing.storages import STORAGE_MODES
from medauto.testing.storages import storage_url

_MARKER = ("medauto marks every trial it creates with the 'worker' user attribute (the "
           "heartbeat contract, docs/distributed.md), so a new trial's user_attrs are not {}")

#: ``test name -> reason``: where medauto's storages differ from plain Optuna on purpose.
DEVIATIONS: dict[str, str] = {
    "test_create_new_trial": _MARKER,
    "test_set_trial_user_attr": _MARKER,
}


@pytest.fixture(scope="module", params=STORAGE_MODES)
def _shared_storage(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BaseStorage]:
    pg = request.getfixturevalue("postgres_server") if request.param == "postgresql" else None
    with storage_url(request.param, tmp_path_factory.mktemp(request.param), postgres=pg) as url:
        yield open_storage(url)


@pytest.fixture
def storage(
    _shared_storage: BaseStorage, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[BaseStorage]:
    reason = DEVIATIONS.get(request.node.originalname)
    if reason:
        request.node.add_marker(pytest.mark.xfail(reason=reason, strict=True))
    if isinstance(_shared_storage, JournalStorage):
        # A journal keeps the records of deleted studies (their ids are not reused), so the
        # outcome would depend on which tests ran before: a new file per test (cheap).
        with storage_url("journal", tmp_path) as url:
            yield open_storage(url)
        return
    for study in _shared_storage.get_all_studies():  # a clean storage for every test
        _shared_storage.delete_study(study._study_id)
    yield _shared_storage


class TestOptunaStorageSuiteOnMedautoStorages(StorageTestCase):
    """All of Optuna's ``StorageTestCase`` on each backend (the ``storage`` fixture above)."""
