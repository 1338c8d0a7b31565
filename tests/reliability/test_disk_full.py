"""A full disk under the study's storage: one clear line ("disk full"), exit 1, no traceback.

The storage lives on a real, size-limited file system: a 4 MiB ``tmpfs`` mounted for the
test (needs root, as CI has; without it the test fails with the reason, it is not skipped).
The study is created first, then a filler file takes the rest of the space, and a real
``medauto worker`` process joins: its first write hits ENOSPC.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from reliability_helpers import REPO
from reliability_helpers import child_env
from reliability_helpers import create_study

pytestmark = pytest.mark.slow

#: Faults this module survives (read by tools/gen_reliability_doc.py).
FAULTS = [
    {
        "fault": "disk full under the storage (a 4 MiB tmpfs filled up) when `medauto worker` "
        "writes",
        "backends": ["sqlite", "journal"],
        "expected": "exit 1 with one line 'disk full (...)', no traceback; the study's earlier "
        "content still readable",
    },
]


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"cannot mount a size-limited tmpfs (needs root): {proc.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path) -> None:
    """Writes a filler file until the file system has no byte left (unbuffered writes)."""
    fd = os.open(fs / "filler", os.O_WRONLY | os.O_CREAT)
    try:
        for size in (65536, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError:
                pass
    finally:
        os.close(fd)


@pytest.mark.parametrize("backend", ["sqlite", "journal"])
def test_disk_full_is_one_clear_line(
    backend: str, tiny_fs: Path, tmp_path: Path, micro_data_dir: Path, micro_space: Path
) -> None:
    url = (f"sqlite:///{tiny_fs / 'study.db'}" if backend == "sqlite"
           else f"journal:///{tiny_fs / 'study.journal'}")
    create_study(url, "full", micro_space, n_trials=3)
    _fill(tiny_fs)
    proc = subprocess.run(
        [sys.executable, "-m", "medauto", "worker", "--study", "full", "--storage", url,
         "--run-dir", str(tmp_path / "run"), "--device", "cpu", "--no-progress",
         "--no-tracking"],
        cwd=REPO, env=child_env(micro_data_dir), capture_output=True, text=True, timeout=180,
    )
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in err if "error:" in line]
    assert len(errors) == 1 and "disk full" in errors[0], err
    assert "space" in errors[0].lower() or "full" in errors[0].lower()
    os.unlink(tiny_fs / "filler")
    from reliability_helpers import load_trials

    assert load_trials(url, "full") is not None  # still readable once space is back
