"""Fixtures and settings shared by the med_core tests."""

from __future__ import annotations

import os

import pytest

# assertion rewriting for the conformance suites med_core ships (must precede their import)
pytest.register_assert_rewrite("med_core.testing")


def _limit_torch_threads() -> None:
    """Under pytest-xdist, give each worker an equal share of the cores: torch's default
    (one thread per core in every worker) oversubscribes the CPU and slows every test."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


_limit_torch_threads()
