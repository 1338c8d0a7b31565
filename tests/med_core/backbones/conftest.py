"""Test ordering for the backbone suites."""

from __future__ import annotations

from pathlib import Path

import pytest

_HERE = Path(__file__).resolve().parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Runs this folder's ``slow`` tests (large models at their natural size) before its
    other tests, so that pytest-xdist hands the longest tests out first and does not end
    with one worker busy on a long test while the other idles. Only the positions held by
    this folder's tests are permuted; every other test keeps its place and order."""
    slots = [i for i, item in enumerate(items) if _HERE in Path(str(item.path)).parents]
    mine = [items[i] for i in slots]
    mine.sort(key=lambda item: item.get_closest_marker("slow") is None)  # stable
    for i, item in zip(slots, mine, strict=True):
        items[i] = item
