"""docs/reliability.md is generated from this suite; it must match the suite as it is."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_reliability_doc_matches_the_suite() -> None:
    proc = subprocess.run(
        [sys.executable, "tools/gen_reliability_doc.py", "--check"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, (
        "docs/reliability.md is out of date: run `python tools/gen_reliability_doc.py`\n"
        + proc.stdout[-2000:] + proc.stderr[-2000:]
    )
