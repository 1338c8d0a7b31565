"""Fixtures of the CLI tests: ``main`` in a folder (the micro data and space are the
shared fixtures of ``tests/conftest.py``)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from cli_helpers import Run


@pytest.fixture
def run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Run:
    """``run(*argv)`` → (exit code, stdout, stderr) of ``medauto.cli.main`` in ``tmp_path``
    (no ``$MEDAUTO_STORAGE``/``$MEDAUTO_TRACKING_URI`` from the caller's shell)."""
    from medauto.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MEDAUTO_STORAGE", raising=False)
    monkeypatch.delenv("MEDAUTO_TRACKING_URI", raising=False)

    def _run(*argv: str) -> tuple[int, str, str]:
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        return code, out.getvalue(), err.getvalue()

    return _run
