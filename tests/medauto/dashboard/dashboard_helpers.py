"""Helpers of the dashboard tests: the demo study, dashboard processes, HTTP, sockets.

Plain functions (the fixtures live in ``conftest.py``), importable by name because the
test folder is on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from dataclasses import field
from pathlib import Path
from typing import Any

import optuna
from optuna.distributions import CategoricalDistribution
from optuna.distributions import FloatDistribution
from optuna.trial import TrialState

from medauto.artifacts import artifact_store_for
from medauto.artifacts import confusion_matrix_png
from medauto.artifacts import learning_curve_png
from medauto.artifacts import upload_trial_artifacts
from medauto.trial_note import save_trial_note

REPO = Path(__file__).resolve().parents[3]
STUDY_NAME = "breastmnist-dashboard-demo"
STARTUP_TIMEOUT_S = 45.0

optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class DemoStudy:
    """A finished study in a SQLite file: 3 complete, 1 pruned, 1 failed trial.

    Trials 0 (complete) and 3 (pruned) carry a learning curve and a confusion matrix.
    """

    url: str
    run_dir: Path
    name: str
    states: list[str]
    best_number: int
    #: trial number → {artifact file name: PNG bytes}
    artifacts: dict[int, dict[str, bytes]] = field(default_factory=dict)
    user_attrs: dict[int, dict[str, Any]] = field(default_factory=dict)


def _history(i: int, epochs: int) -> list[dict[str, float]]:
    return [
        {
            "epoch": e + 1,  # 1-based, as the objective records it
            "train_loss": round(0.7 - 0.1 * e, 4),
            "val_loss": round(0.8 - 0.08 * e, 4),
            "val_auc": round(0.6 + 0.05 * e + 0.01 * i, 4),
            "val_acc": round(0.55 + 0.04 * e, 4),
            "lr": 1e-3,
        }
        for e in range(epochs)
    ]


def build_demo_study(run_dir: Path) -> DemoStudy:
    run_dir.mkdir(parents=True, exist_ok=True)
    url = f"sqlite:///{run_dir / 'study.db'}"
    study = optuna.create_study(
        study_name=STUDY_NAME, storage=url, direction="maximize",
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.set_metric_names(["val_auc"])  # as medauto.study names a new study's metric
    store = artifact_store_for(run_dir)
    dists = {
        "optim.lr": FloatDistribution(1e-5, 1e-1, log=True),
        "model.backbone": CategoricalDistribution(["resnet18", "efficientnet_b0"]),
    }
    demo = DemoStudy(url=url, run_dir=run_dir, name=STUDY_NAME, states=[], best_number=2)
    plan = ["COMPLETE", "COMPLETE", "COMPLETE", "PRUNED", "FAIL"]
    for i, state in enumerate(plan):
        trial = study.ask(dists)
        hist = _history(i, 2 if state == "PRUNED" else 4)
        attrs = {
            "backbone": trial.params["model.backbone"],
            "config": {"model": {"backbone": trial.params["model.backbone"]}, "epochs": 4},
            "history": hist,
            "mlflow_run_id": f"{i + 1:032x}",
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        demo.user_attrs[i] = attrs
        for row in hist:
            trial.report(row["val_auc"], step=int(row["epoch"]))
        if i in (0, 3):  # artifacts can only be attached while the trial runs
            tmp = run_dir / "tmp" / str(i)
            files = {
                "learning_curve.png": learning_curve_png(
                    hist, tmp / "lc.png", monitor="val_auc"
                ),
                "confusion_matrix_val.png": confusion_matrix_png(
                    [0, 1, 1, 0, 1, 1], [0, 1, 0, 0, 1, 1], ["malignant", "normal, benign"],
                    tmp / "cm.png",
                ),
            }
            upload_trial_artifacts(study, trial, files, store)
            demo.artifacts[i] = {name: Path(p).read_bytes() for name, p in files.items()}
        if state == "COMPLETE":
            study.tell(trial, 0.70 + 0.01 * i)
        else:
            study.tell(trial, state=TrialState[state])
        save_trial_note(study, trial, study.trials[i])  # as the worker loop does
        demo.states.append(state)
    return demo


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http_get(url: str, *, timeout: float = 10.0) -> tuple[int, bytes, dict[str, str]]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # noqa: S310 - local test
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


def http_json(url: str) -> Any:
    status, body, _ = http_get(url)
    assert status == 200, f"GET {url} -> {status}: {body[:300]!r}"
    return json.loads(body)


@dataclass
class DashboardProcess:
    """A running ``python -m medauto.cli dashboard`` subprocess."""

    proc: subprocess.Popen[bytes]
    port: int
    stderr_path: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # the CLI turns SIGTERM into a clean exit
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def start(
    storage_url: str, run_dir: Path, log_dir: Path, extra: tuple[str, ...] = ()
) -> DashboardProcess:
    port = free_port()
    log_dir.mkdir(parents=True, exist_ok=True)
    stderr_path = log_dir / f"dashboard-{port}.stderr"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.pop("MEDAUTO_STORAGE", None)
    cmd = [
        sys.executable, "-m", "medauto.cli", "dashboard", "--storage", storage_url,
        "--run-dir", str(run_dir), "--port", str(port), *extra,
    ]
    with open(stderr_path, "wb") as err, open(log_dir / f"dashboard-{port}.stdout", "wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=err)
    server = DashboardProcess(proc=proc, port=port, stderr_path=stderr_path)
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    try:
        while True:
            if proc.poll() is not None:
                raise AssertionError(
                    f"medauto dashboard exited with {proc.returncode} before answering:\n"
                    f"{server.stderr()[-3000:]}"
                )
            try:
                status, _, _ = http_get(f"{server.base}/api/meta", timeout=2)
                if status == 200:
                    return server
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"medauto dashboard did not answer on port {port} within "
                    f"{STARTUP_TIMEOUT_S:.0f} s:\n{server.stderr()[-3000:]}"
                )
            time.sleep(0.25)
    except BaseException:
        stop(proc)
        raise


# -- where a socket listens (Linux /proc) ----------------------------------------------------


def listening_addresses(port: int) -> set[str]:
    """The local IPv4/IPv6 addresses with a TCP socket in LISTEN state on ``port``."""
    import ipaddress

    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            cols = line.split()
            local, state = cols[1], cols[3]
            addr_hex, port_hex = local.split(":")
            if state != "0A" or int(port_hex, 16) != port or len(addr_hex) != width:
                continue
            # /proc prints each 32-bit word in host (little-endian) byte order
            raw = b"".join(
                bytes.fromhex(addr_hex[i : i + 8])[::-1] for i in range(0, width, 8)
            )
            found.add(str(ipaddress.ip_address(raw)))
    return found


def non_loopback_ipv4() -> list[str]:
    """This host's local IPv4 addresses outside 127.0.0.0/8 (from /proc/net/fib_trie)."""
    addrs: set[str] = set()
    try:
        lines = Path("/proc/net/fib_trie").read_text().splitlines()
    except FileNotFoundError:
        return []
    for prev, line in zip(lines, lines[1:], strict=False):
        if "/32 host LOCAL" in line:
            ip = prev.strip().lstrip("|-+ ").strip()
            if ip and not ip.startswith("127."):
                addrs.add(ip)
    return sorted(addrs)
