"""``medauto worker --trials-per-device 2``: options reach the children as data, not argv;
a SIGTERM of the parent stops them. Real processes, real signals."""

from __future__ import annotations

import fcntl
import os
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest
from cli_helpers import Run

REPO = Path(__file__).resolve().parents[2]


def _children(pid: int) -> list[int]:
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry.name))
    return out


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class _Screen:
    """Everything written to a pseudo-terminal, read by a thread until it closes."""

    def __init__(self, master: int) -> None:
        self.text = ""
        self._master = master
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self._master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.text += chunk.decode(errors="replace")


def test_packed_job_is_the_parents_options_as_data() -> None:
    from medauto.cli import _build_parser
    from medauto.cli._workers import packed_job

    parser, _ = _build_parser()
    args = parser.parse_args(["worker", "--study", "s", "--trials-per-device", "2", "-v", "-q",
                              "--log-file", "x.log", "--debug", "--seed", "5",
                              "--tracking-uri", "http://u:pw@h", "--oom-retry"])
    job = packed_job(args, "s", 1)
    assert job["seed"] == 6 and job["trials_per_device"] == 1 and job["no_progress"]
    assert (job["verbose"], job["quiet"], job["log_file"], job["debug"]) == (1, 1, "x.log", True)
    assert job["tracking_uri"] == "http://u:pw@h" and job["oom_retry"] is True


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
def test_sigterm_to_the_parent_stops_packed_children_whose_argv_holds_no_option(
    run: Run, micro_space: Path, micro_data_dir: Path, tmp_path: Path
) -> None:
    code, _, err = run("create-study", "--space", str(micro_space), "--study", "pk",
                       "--trials", "200", "--device", "cpu", "--run-dir", "runs",
                       "--data-dir", str(micro_data_dir))
    assert code == 0, err
    log = tmp_path / "worker.log"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # stderr is a terminal, so the parent shows the live line and relays its children's logs
    master, terminal = os.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 50, 250, 0, 0))
    parent = subprocess.Popen(
        [sys.executable, "-m", "medauto.cli", "worker", "--trials-per-device", "2",
         "--device", "cpu", "--run-dir", "runs", "--data-dir", str(micro_data_dir),
         "--no-tracking", "-v", "--log-file", str(log)],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=terminal, text=True,
    )
    os.close(terminal)
    screen = _Screen(master)
    try:
        deadline = time.monotonic() + 120
        children: list[int] = []
        while time.monotonic() < deadline:
            children = _children(parent.pid)
            started = log.is_file() and log.read_text().count("worker of study 'pk'") >= 3
            if len(children) == 2 and started:
                break
            assert parent.poll() is None, parent.communicate()
            time.sleep(0.5)
        else:
            pytest.fail(f"packed children did not start: {children}, "
                        f"{log.read_text() if log.is_file() else 'no log'}")
        while "running=2" not in screen.text and time.monotonic() < deadline:
            time.sleep(0.5)
        assert "running=2" in screen.text, screen.text  # both children's trials, one line
        for pid in children:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            assert b"--storage" not in argv and not any(str(tmp_path).encode() in a
                                                        for a in argv), argv
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=90)
        assert parent.returncode == 130, parent.communicate()
        stop = time.monotonic() + 30
        while any(_alive(p) for p in children) and time.monotonic() < stop:
            time.sleep(0.2)
        assert not any(_alive(p) for p in children)
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in _children(parent.pid):
            os.kill(pid, signal.SIGKILL)
    relayed = [seg for line in screen.text.split("\n") for seg in line.split("\r")
               if "worker of study 'pk'" in seg]
    assert len(relayed) == 3 and all(seg.startswith("[I ") for seg in relayed), screen.text
    # -v and --log-file reached the children: each logged its start (three pids in all).
    pids = {line.split("pid ")[1].split(")")[0] for line in log.read_text().splitlines()
            if "worker of study 'pk'" in line}
    assert len(pids) == 3
