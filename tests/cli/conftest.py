"""Fixtures of the CLI tests: micro data, a one-backbone space, and ``main`` in a folder."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import pytest
from cli_helpers import MICRO_SPACE
from cli_helpers import Run

from med_core.testing.data import cut_medmnist


@pytest.fixture(scope="session")
def micro_dir(medmnist_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``breastmnist.npz`` cut to 32 images per split (both classes in each)."""
    out = tmp_path_factory.mktemp("cli-data")
    cut_medmnist(medmnist_dir / "breastmnist.npz", out / "breastmnist.npz", 32,
                 both_classes=True)
    return out


@pytest.fixture
def micro_space(tmp_path: Path) -> Path:
    path = tmp_path / "micro.yaml"
    path.write_text(MICRO_SPACE)
    return path


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
