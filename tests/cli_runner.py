"""Runs the ``medauto`` CLI in-process from a test's own folder (one owner for the helpers
of the retrain and distill tests)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest


def run_cli(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``medauto.cli.main(argv)`` with ``cwd`` as working directory; returns (code, stdout).

    MLflow puts the artifacts of an experiment created without a location under
    ``./mlruns``: the working directory must be the test's, never the checkout. A tracking
    URI of the caller's environment is not inherited.
    """
    from medauto.cli import main

    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        mp.chdir(cwd)
        mp.delenv("MEDAUTO_TRACKING_URI", raising=False)
        code = main(argv)
    return code, out.getvalue()
