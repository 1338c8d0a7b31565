"""``python -m medauto`` runs the CLI (the GPU recipes use it where no console script is
installed)."""

from __future__ import annotations

import subprocess
import sys

import medauto


def test_python_m_medauto_is_the_cli() -> None:
    proc = subprocess.run([sys.executable, "-m", "medauto", "--version"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert medauto.__version__ in proc.stdout + proc.stderr
