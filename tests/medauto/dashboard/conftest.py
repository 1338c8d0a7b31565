"""Fixtures for the dashboard tests: a real SQLite study with artifacts, and real
``medauto dashboard`` server processes that are always terminated."""

from __future__ import annotations

import sys
from collections.abc import Callable
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # dashboard_helpers is imported by name
    sys.path.insert(0, str(HERE))

from dashboard_helpers import DashboardProcess  # noqa: E402
from dashboard_helpers import DemoStudy  # noqa: E402
from dashboard_helpers import build_demo_study  # noqa: E402
from dashboard_helpers import start  # noqa: E402
from dashboard_helpers import stop  # noqa: E402


@pytest.fixture(scope="session")
def demo_study(tmp_path_factory: pytest.TempPathFactory) -> DemoStudy:
    """The demo study (built once per test process)."""
    return build_demo_study(tmp_path_factory.mktemp("dashboard") / "run")


@pytest.fixture
def start_dashboard(tmp_path: Path) -> Iterator[Callable[..., DashboardProcess]]:
    """Starts dashboard processes for one test; every one is stopped afterwards."""
    started: list[DashboardProcess] = []

    def launch(storage_url: str, run_dir: Path, *extra: str) -> DashboardProcess:
        server = start(storage_url, run_dir, tmp_path / "logs", tuple(extra))
        started.append(server)
        return server

    try:
        yield launch
    finally:
        for server in started:
            stop(server.proc)


@pytest.fixture(scope="session")
def dashboard(
    demo_study: DemoStudy, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[DashboardProcess]:
    """One dashboard (default host) on the demo study, shared by the tests of a process."""
    server = start(demo_study.url, demo_study.run_dir, tmp_path_factory.mktemp("dash-logs"))
    try:
        yield server
    finally:
        stop(server.proc)
