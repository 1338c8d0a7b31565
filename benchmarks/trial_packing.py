#!/usr/bin/env python
"""Trial packing: K trials sharing one GPU through ``medauto worker --trials-per-device K``.

For every mode (``plain``: the GPU time-slices between the K CUDA contexts; ``mps``: a
private NVIDIA MPS control daemon runs the K processes' kernels concurrently) and every K
(default 1, 2, 4, 8) the script creates a fresh study (SQLite) whose target is
``K × --trials-per-worker`` trials of one fixed configuration (ResNet-18 on
DermaMNIST-shaped 3×28×28 data, 7 classes, 7,007 train / 1,003 val images, ``--epochs``
epochs, no pruning, so every trial is the same work), starts ``python -m medauto.cli
worker --trials-per-device K`` (the product's packing path: K worker processes on one
device, each with ``cores // K`` CPU threads) and measures from launch to exit:

* **finished trials per GPU-hour**: finished trials / wall time × 3600, the wall time
  including process start, imports, data load, model build, compilation and evaluation;
* **aggregate training images/s**: images trained by all trials / wall time;
* the mean per-trial in-epoch training speed (the Trainer's ``images_per_s``).

Ratios are against K = 1 of the same mode and against plain K = 1, measured in the same
run. ``--mps`` sets ``CUDA_MPS_PIPE_DIRECTORY``/``CUDA_MPS_LOG_DIRECTORY`` to a temporary
folder, starts ``nvidia-cuda-mps-control -d`` there and always stops it with ``echo quit |
nvidia-cuda-mps-control``; no GPU setting is changed.

CPU (tiny)::

    python benchmarks/trial_packing.py --device cpu --ks 1,2 --epochs 1 --max-train 64

GPU (one H200, ≈ 4 minutes)::

    python benchmarks/trial_packing.py --device cuda --mps --time-limit 300
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `medauto` importable
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

from benchmarks._common import Deadline  # noqa: E402
from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from benchmarks.search_overhead import child_env  # noqa: E402
from benchmarks.search_overhead import space_yaml  # noqa: E402
from benchmarks.search_overhead import write_dataset  # noqa: E402

DEFAULT_OUT = "docs/benchmarks/trial_packing.md"
TARGET_RATIO = 2.0  # issue 7: ≥ 2× finished trials per GPU-hour vs. K = 1


@dataclass
class Row:
    """One (mode, K) measurement."""

    mode: str
    k: int
    trials_target: int
    finished: int = 0
    wall_s: float | None = None
    trials_per_gpu_hour: float | None = None
    images_per_s: float | None = None  # all trials' trained images / wall time
    trial_images_per_s: float | None = None  # mean of the trials' in-epoch images/s
    mean_trial_s: float | None = None  # the trials' own duration_s
    ratio_same_mode: float | None = None
    ratio_plain_k1: float | None = None
    status: str = "not run"


def _int_csv(s: str) -> list[int]:
    try:
        values = [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected integers >= 1, got {s!r}")
    return values


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/trial_packing.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--ks", type=_int_csv, default=[1, 2, 4, 8], help="trials per device")
    p.add_argument("--mps", action="store_true", help="also run every K under a private MPS")
    p.add_argument("--trials-per-worker", type=int, default=2,
                   help="each of the K processes runs this many trials (target K × this)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of every trial")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--amp", default=None, help="amp_dtype (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--compile", action="store_true",
                   help="compile: true (CUDA graphs; each trial compiles, FX cache shared)")
    p.add_argument("--augment", default="light")
    p.add_argument("--threads-per-worker", type=int, default=None,
                   help="medauto worker --threads-per-worker (default: the product's, "
                   "usable cores // K)")
    p.add_argument("--tracking", action="store_true", help="MLflow on (default: off)")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (DermaMNIST-shaped) or a MedMNIST name/path")
    p.add_argument("--data-dir", default=os.environ.get("MEDAUTO_DATA_DIR"))
    p.add_argument("--max-train", type=int, default=None, help="first N train images")
    p.add_argument("--max-val", type=int, default=None, help="first N val/test images")
    p.add_argument("--time-limit", type=float, default=300.0,
                   help="seconds for the whole run: no (mode, K) starts that is not expected "
                   "to fit, a running one is stopped at the limit (0: no limit)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="Markdown report")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


# ============================================================================ running
def _create_study(storage: str, name: str, space_file: Path, data: Path, n_trials: int) -> None:
    """Creates the study as ``medauto search`` would (settings in its user attributes)."""
    from medauto.space import SearchSpace
    from medauto.storage import open_storage
    from medauto.study import StudySettings
    from medauto.study import open_study

    space = SearchSpace.from_yaml(str(space_file))
    settings = StudySettings(space=space.to_dict(), fingerprint=space.fingerprint(),
                             data=str(data), metric="val_auc", direction="maximize",
                             n_trials=n_trials, selection="holdout")  # one fit per trial
    open_study(name, open_storage(storage), settings)


def _collect(row: Row, storage: str, name: str, n_train: int, batch: int) -> None:
    import optuna

    from medauto.keys import DURATION_ATTR
    from medauto.keys import EPOCHS_RUN_ATTR
    from medauto.keys import HISTORY_ATTR

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
    done = [t for t in trials if t.state.is_finished() and t.state.name in ("COMPLETE", "PRUNED")]
    row.finished = len(done)
    per_epoch = (n_train // batch) * batch if n_train >= batch else n_train
    images = sum(int(t.user_attrs.get(EPOCHS_RUN_ATTR, 0)) * per_epoch for t in done)
    speeds = [e["images_per_s"] for t in done for e in t.user_attrs.get(HISTORY_ATTR, [])
              if e.get("images_per_s")]
    durations = [t.user_attrs[DURATION_ATTR] for t in done if DURATION_ATTR in t.user_attrs]
    assert row.wall_s is not None
    row.trials_per_gpu_hour = 3600.0 * row.finished / row.wall_s
    row.images_per_s = images / row.wall_s
    row.trial_images_per_s = sum(speeds) / len(speeds) if speeds else None
    row.mean_trial_s = sum(durations) / len(durations) if durations else None


def run_one(row: Row, args: argparse.Namespace, work: Path, data: Path, space: Path,
            n_train: int, deadline: Deadline, env: dict[str, str]) -> None:
    """One ``medauto worker --trials-per-device K`` run into ``row``."""
    storage = f"sqlite:///{work / f'{row.mode}-k{row.k}.db'}"
    name = f"packing-{row.mode}-k{row.k}"
    _create_study(storage, name, space, data, row.trials_target)
    cmd = [sys.executable, "-m", "medauto.cli", "worker", "-q", "--study", name,
           "--storage", storage, "--run-dir", str(work / f"run-{row.mode}-k{row.k}"),
           "--device", args.device, "--trials-per-device", str(row.k), "--pruner", "none",
           "--no-progress", "--max-failures", "2"]
    if args.threads_per_worker is not None:
        cmd += ["--threads-per-worker", str(args.threads_per_worker)]
    if not args.tracking:
        cmd.append("--no-tracking")
    left = deadline.remaining()
    if left != float("inf"):
        cmd += ["--timeout", str(max(1.0, left - 20.0))]
    row.status = "running"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, env=env, cwd=work, capture_output=True, text=True,
                              timeout=None if left == float("inf") else max(5.0, left))
        code = proc.returncode
        if code != 0:
            log(proc.stdout[-2000:] + proc.stderr[-4000:])
    except subprocess.TimeoutExpired:
        code = None
    row.wall_s = time.perf_counter() - t0
    _collect(row, storage, name, n_train, args.batch)
    if code is None:
        row.status = "stopped at --time-limit"
    elif code != 0:
        row.status = f"exit code {code}"
    elif row.finished < row.trials_target:
        row.status = f"{row.finished}/{row.trials_target} trials (--timeout)"
    else:
        row.status = "ok"


class MpsDaemon:
    """A private MPS control daemon (pipe and log folders in a temporary directory)."""

    def __init__(self, root: Path) -> None:
        self.env = {"CUDA_MPS_PIPE_DIRECTORY": str(root / "mps-pipe"),
                    "CUDA_MPS_LOG_DIRECTORY": str(root / "mps-log")}
        self.started = False

    def start(self) -> None:
        exe = shutil.which("nvidia-cuda-mps-control")
        if exe is None:
            raise RuntimeError("nvidia-cuda-mps-control not found")
        for d in self.env.values():
            Path(d).mkdir(parents=True, exist_ok=True)
        subprocess.run([exe, "-d"], env={**os.environ, **self.env}, check=True, timeout=30)
        self.started = True
        time.sleep(1.0)

    def stop(self) -> None:
        if not self.started:
            return
        subprocess.run(["nvidia-cuda-mps-control"], input="quit\n", text=True,
                       env={**os.environ, **self.env}, timeout=30, check=False)
        self.started = False


# ============================================================================ report
def update_ratios(rows: Sequence[Row]) -> None:
    """Ratios of finished trials per GPU-hour vs. K = 1 (same mode, and plain)."""
    base = {r.mode: r.trials_per_gpu_hour for r in rows if r.k == 1 and r.trials_per_gpu_hour}
    for r in rows:
        if r.trials_per_gpu_hour:
            ref = base.get(r.mode)
            r.ratio_same_mode = r.trials_per_gpu_hour / ref if ref else None
            plain = base.get("plain")
            r.ratio_plain_k1 = r.trials_per_gpu_hour / plain if plain else None


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _n(v: float | None, digits: int = 0) -> str:
    return "–" if v is None else f"{v:,.{digits}f}"


def render(command: str, env: dict[str, str], rows: Sequence[Row], notes: Sequence[str],
           args: argparse.Namespace) -> str:
    update_ratios(rows)
    table = [[f"`{r.mode}`", r.k, f"{r.finished}/{r.trials_target}", _n(r.wall_s, 1),
              _n(r.trials_per_gpu_hour), _x(r.ratio_same_mode), _x(r.ratio_plain_k1),
              _n(r.images_per_s), _n(r.trial_images_per_s), _n(r.mean_trial_s, 1), r.status]
             for r in rows]
    best = max((r for r in rows if r.ratio_plain_k1), key=lambda r: r.ratio_plain_k1 or 0.0,
               default=None)
    if best is None or best.ratio_plain_k1 is None:
        verdict = "no packed run measured"
    else:
        met = "met" if best.ratio_plain_k1 >= TARGET_RATIO else "missed"
        verdict = (f"best: `{best.mode}` K = {best.k} with {best.ratio_plain_k1:.2f}× the "
                   f"finished trials per GPU-hour of plain K = 1 (target ≥ "
                   f"{TARGET_RATIO:.0f}×: **{met}**)")
    return "\n".join([
        "# Trial packing: K trials per GPU",
        "",
        "Written by `benchmarks/trial_packing.py` (issue 7, item 2). Command:",
        "",
        "```bash", command, "```", "",
        environment_table(env), "",
        f"Each row: a fresh SQLite study of `K × {args.trials_per_worker}` trials, run by "
        f"`python -m medauto.cli worker --trials-per-device K` (K processes on "
        f"`{args.device}`), every trial {args.epochs} epoch(s) of `{args.backbone}` at batch "
        f"{args.batch} (no pruning). *Wall* runs from launch to exit of the parent command: "
        "process start, imports, data load, model build, compilation, evaluation included. "
        "*Trials/GPU-h* = finished trials / wall × 3600; the ratios divide it by K = 1 of "
        "the same mode and by plain K = 1 (same run). *Images/s* = images trained by all "
        "trials / wall; *trial images/s* = mean in-epoch training speed of one trial. "
        "Mode `plain`: the K CUDA contexts time-slice the GPU; `mps`: the K processes are "
        "clients of a private MPS daemon and their kernels run concurrently.",
        "",
        markdown_table(["mode", "K", "finished", "wall s", "trials/GPU-h", "× K=1 (mode)",
                        "× plain K=1", "images/s", "trial images/s", "trial s", "status"],
                       table, align="lrrrrrrrrrl"),
        "",
        f"**Target** (≥ {TARGET_RATIO:.0f}× finished trials per GPU-hour vs. K = 1): {verdict}.",
        "",
        *[f"* {n}" for n in notes],
        "",
    ])


# ============================================================================ main
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.trials_per_worker < 1 or args.epochs < 1 or args.batch < 1:
        raise SystemExit("--trials-per-worker, --epochs and --batch must be >= 1")
    deadline = Deadline(args.time_limit if args.time_limit > 0 else None)
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if args.mps and not cuda:
        raise SystemExit("--mps needs --device cuda")
    amp = args.amp or ("bf16" if cuda else "none")
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env_info = environment(args.device if cuda else "cpu")
    modes = ["plain", "mps"] if args.mps else ["plain"]
    rows = [Row(mode=m, k=k, trials_target=k * args.trials_per_worker)
            for m in modes for k in args.ks]
    notes: list[str] = []
    if args.data == "synthetic":
        notes.append("DermaMNIST-shaped synthetic data (DermaMNIST is CC BY-NC 4.0 and not in "
                     "the repository); the numbers depend on shapes, not pixel values.")
    with tempfile.TemporaryDirectory(prefix="medauto-packing-") as tmp:
        work = Path(tmp)
        data, desc = write_dataset(work / "data" / "bench-data.npz", data=args.data,
                                   data_dir=args.data_dir, max_train=args.max_train,
                                   max_val=args.max_val)
        notes.append(f"Data: {desc}.")
        import numpy as np

        n_train = int(np.load(data)["train_images"].shape[0])
        space = work / "bench.yaml"
        space.write_text(space_yaml(backbone=args.backbone, epochs=args.epochs, batch=args.batch,
                                    amp=amp, compile=args.compile, augment=args.augment))
        last_wall: dict[int, float] = {}
        for mode in modes:
            daemon = MpsDaemon(work) if mode == "mps" else None
            try:
                if daemon is not None:
                    try:
                        daemon.start()
                    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
                        for r in rows:
                            if r.mode == "mps":
                                r.status = f"skipped: MPS daemon did not start ({e})"
                        continue
                env = child_env(**(daemon.env if daemon is not None else {}))
                for row in (r for r in rows if r.mode == mode):
                    est = 1.2 * last_wall.get(row.k, 0.0)
                    if deadline.remaining() < max(est, 10.0):
                        row.status = f"skipped: --time-limit ({deadline.remaining():.0f} s left)"
                        continue
                    log(f"[{deadline.elapsed():6.1f} s] {mode} K={row.k} ...")
                    run_one(row, args, work, data, space, n_train, deadline, env)
                    last_wall[row.k] = max(last_wall.get(row.k, 0.0), row.wall_s or 0.0)
                    log(f"[{deadline.elapsed():6.1f} s] {mode} K={row.k}: {row.finished} trials"
                        f" in {row.wall_s:.1f} s ({row.status})")
                    write_text(args.out, render(command, env_info, rows, notes, args))
            finally:
                if daemon is not None:
                    daemon.stop()
    text = render(command, env_info, rows, notes, args)
    write_text(args.out, text)
    if args.json:
        result: dict[str, Any] = {"command": command, "environment": env_info,
                                  "rows": [asdict(r) for r in rows]}
        write_json(args.json, result)
    print(text)
    return 0 if all(r.status == "ok" for r in rows if not r.status.startswith("skipped")) else 1


if __name__ == "__main__":
    sys.exit(main())
