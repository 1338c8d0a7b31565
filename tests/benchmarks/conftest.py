"""Fixtures of the benchmark scripts' CPU smoke tests."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest


@pytest.fixture(scope="module")
def bench(request: pytest.FixtureRequest) -> Iterator[ModuleType]:
    """The benchmark script named by the test module's ``SCRIPT``, loaded as a module (the
    scripts put the repository root on ``sys.path`` themselves)."""
    script = Path(request.module.SCRIPT)
    name = f"{script.stem}_bench_under_test"
    spec = importlib.util.spec_from_file_location(name, script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)


@pytest.fixture
def one_cpu_thread() -> Iterator[None]:
    """One torch intra-op thread during the test (restored after): on a shared 2-core
    machine the benchmarks' tiny CPU models run several times faster so."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
