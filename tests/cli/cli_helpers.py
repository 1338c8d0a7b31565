"""Shared by the CLI tests: the type of the ``run`` fixture."""

from __future__ import annotations

from collections.abc import Callable

Run = Callable[..., tuple[int, str, str]]
