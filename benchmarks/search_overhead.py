#!/usr/bin/env python
"""Search overhead: the share of a search's wall time NOT spent in training steps.

Runs ``python -m medauto.cli search`` (the real ``medauto search`` → ``AutoMLOptimizer``
path) as a child process on one device: ``--trials`` short trials of one fixed
configuration (ResNet-18, DermaMNIST-shaped data, ``--epochs`` epochs; only the learning
rate is searched, so every trial costs the same), SQLite storage (or the ``--storage``
URL, e.g. PostgreSQL) and MLflow tracking into a local SQLite store (``--no-tracking``
turns it off). The child runs with medauto's timing hook on (``MEDAUTO_TIMING_FILE``, see
``medauto/worker.py``), which records every phase of the worker loop, the objective and
the tracker; the report splits the wall time (from launching the child to its exit) into

process start + imports, data load + study open, sampler ask/tell + storage round-trips,
MLflow, model construction, compile/warm-up, training steps, evaluation, artifact
plotting, memory release and other (the rest: interpreter exit, trainer bookkeeping...),

in total, per trial and as a share of the wall time. Training steps are the Trainer's own
per-epoch training time; compile/warm-up is what the first epoch of a trial takes beyond
the median later epoch of the same configuration.

CPU (tiny)::

    python benchmarks/search_overhead.py --device cpu --trials 6 --max-train 256

GPU (one H200, ≈ 2 minutes)::

    python benchmarks/search_overhead.py --device cuda --trials 50 --time-limit 240
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `medauto` importable
    sys.path.insert(0, str(_REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402

DEFAULT_OUT = "docs/benchmarks/search_overhead.md"
TIMING_ENV = "MEDAUTO_TIMING_FILE"  # medauto.worker.TIMING_ENV (not imported: no optuna here)
TARGET_OVERHEAD_PCT = 5.0
#: Issue 13's per-trial target: wall time between trials and around their training.
TARGET_TRIAL_OVERHEAD_MS = 300.0
#: Phases a trial needs to train (what the per-trial overhead leaves out).
_TRAINING_PHASES = ("train_steps", "evaluation", "model_setup")

#: Report rows, in order, and the timing-hook phases each one sums.
CATEGORIES: dict[str, tuple[str, ...]] = {
    "process start + imports": (),
    "data load + study open (torch import included)": (),
    "sampler ask/tell + storage round-trips": (
        "study_poll", "ask", "surplus_check", "trial_attrs", "suggest", "pruning_report", "tell",
    ),
    "MLflow logging": (
        "tracking_start_study", "tracking_trial_start", "tracking_epoch_log",
        "trial_end_hook", "tracking_end_study",
    ),
    "model construction (Trainer set-up)": ("model_setup",),
    "compile / warm-up (1st epoch beyond a later one)": (),
    "training steps": (),
    "evaluation (validation)": ("evaluation",),
    "artifact plotting + upload": ("artifacts",),
    "memory release (gc, CUDA cache)": ("release_memory",),
    "other": (),
}
TRAIN = "training steps"


# ============================================================================ inputs
def write_dataset(path: Path, *, data: str, data_dir: str | None, max_train: int | None,
                  max_val: int | None, seed: int = 0) -> tuple[Path, str]:
    """Writes the benchmark's data as a MedMNIST-layout ``.npz`` (``(N, H, W, C)`` uint8);
    returns the path and a description. ``data='synthetic'``: DermaMNIST-shaped data."""
    from benchmarks.trainer_throughput import synthetic_dermamnist
    from med_core.data import load_dataset

    if data == "synthetic":
        ds = synthetic_dermamnist(seed)
    else:
        ds = load_dataset(data, data_dir=data_dir)
    if ds.info.spatial_dims != 2:
        raise SystemExit(f"--data {data}: only 2-D data is supported")
    if max_val is None and max_train is not None:
        max_val = max(64, max_train // 4)
    arrays = {}
    for name, split, cap in (("train", ds.train, max_train), ("val", ds.val, max_val),
                             ("test", ds.test, max_val)):
        n = len(split) if cap is None else min(cap, len(split))
        idx = _class_interleaved(np.asarray(split.labels))[:n]  # every class, while n allows
        images = np.asarray(split.images[np.sort(idx)])
        arrays[f"{name}_images"] = np.ascontiguousarray(np.moveaxis(images, 1, -1))
        arrays[f"{name}_labels"] = np.asarray(split.labels[np.sort(idx)]).reshape(n, -1)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    desc = (
        f"`{ds.info.name}` ({ds.info.num_classes} classes, {ds.info.in_chans}×"
        f"{'×'.join(map(str, ds.info.image_size))} uint8), {len(arrays['train_images']):,} "
        f"train / {len(arrays['val_images']):,} val images"
    )
    return path, desc


def _class_interleaved(labels: np.ndarray) -> np.ndarray:
    """Sample indices ordered round-robin over the classes (the first of each class, then
    the second, ...), so a prefix holds every class; multi-label data keeps its order."""
    if labels.ndim > 1 and labels.shape[1] > 1:
        return np.arange(len(labels))
    flat = labels.reshape(-1)
    rank = np.zeros(len(flat), dtype=np.int64)
    for c in np.unique(flat):
        members = np.flatnonzero(flat == c)
        rank[members] = np.arange(len(members))
    return np.lexsort((np.arange(len(flat)), rank))


def space_yaml(*, backbone: str, epochs: int, batch: int, amp: str, compile: bool,
               augment: str = "light") -> str:
    """A search space with one fixed configuration; only ``optim.lr`` is searched."""
    return f"""\
name: bench
description: one fixed {backbone} configuration, {epochs} epochs (benchmarks/)
spatial_dims: 2
fidelity: {{min_epochs: 1, max_epochs: {epochs}, reduction_factor: 2}}
fixed:
  model.pretrained: false
  model.checkpoint_segments: "off"
  batch_size: {batch}
  data.loader: tensor
  data.num_workers: 0
  augment.policy: {augment}
  amp_dtype: {amp}
  channels_last: {"true" if amp != "none" else "false"}
  compile: {"true" if compile else "false"}
  early_stopping_patience: null
params:
  model.backbone: [{backbone}]
  optim.lr: {{type: float, low: 1.0e-4, high: 1.0e-2, log: true}}
"""


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a ``medauto`` child: this one, with the repository (and whatever
    ``PYTHONPATH`` already holds, e.g. ``/tmp/site``) importable."""
    env = dict(os.environ)
    parts = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(_REPO) not in parts:
        parts.append(str(_REPO))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.update(extra)
    return env


def read_timing(path: Path) -> list[dict[str, Any]]:
    """The timing hook's records (a missing file is no records)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ============================================================================ analysis
def warmup_split(records: Sequence[dict[str, Any]]) -> tuple[float, float, float | None]:
    """(training-step seconds, compile/warm-up seconds, steady epoch seconds).

    Every trial has the same configuration, so a steady epoch is the median of all epochs
    after a trial's first; the warm-up of a trial is its first epoch beyond that (0 when no
    trial ran a second epoch: then the first epochs count as training steps).
    """
    first: list[float] = []
    later: list[float] = []
    for r in records:
        if r["phase"].startswith("train_steps:"):
            dt = r["t1"] - r["t0"]
            (first if r["phase"] == "train_steps:0" else later).append(dt)
    steady = statistics.median(later) if later else None
    warm = sum(max(0.0, f - steady) for f in first) if steady is not None else 0.0
    return sum(first) + sum(later) - warm, warm, steady


def breakdown(records: Sequence[dict[str, Any]], launch: float, end: float,
              trials: int) -> list[dict[str, Any]]:
    """Report rows: category, seconds, ms per trial, share of the wall time (%)."""
    wall = end - launch
    sums: dict[str, float] = defaultdict(float)
    phase_of = {p: c for c, ps in CATEGORIES.items() for p in ps}
    for r in records:
        cat = phase_of.get(r["phase"])
        if cat is not None:
            sums[cat] += r["t1"] - r["t0"]
    imported = [r["t0"] for r in records if r["phase"] == "imported"]
    opened = [r["t0"] for r in records if r["phase"] == "study_opened"]
    if imported:
        sums["process start + imports"] = min(imported) - launch
        if opened:
            sums["data load + study open (torch import included)"] = min(opened) - min(imported)
    train, warm, _ = warmup_split(records)
    sums[TRAIN] = train
    sums["compile / warm-up (1st epoch beyond a later one)"] = warm
    sums["other"] = max(0.0, wall - sum(v for k, v in sums.items() if k != "other"))
    return [
        {"category": c, "seconds": sums[c], "ms_per_trial": 1e3 * sums[c] / max(trials, 1),
         "share_pct": 100.0 * sums[c] / wall if wall > 0 else 0.0}
        for c in CATEGORIES
    ]


def per_trial_overhead_ms(records: Sequence[dict[str, Any]], trials: int) -> float | None:
    """Per-trial overhead: the wall time from the first trial's ``ask`` to the end of the
    last phase of any trial, less its training steps (warm-up included), evaluation and
    model construction, divided by ``trials``; ``None`` without an ``ask`` or a trial.

    Example:
        >>> per_trial_overhead_ms([
        ...     {"trial": None, "phase": "ask", "t0": 0.0, "t1": 0.1},
        ...     {"trial": 0, "phase": "model_setup", "t0": 0.1, "t1": 0.3},
        ...     {"trial": 0, "phase": "train_steps:0", "t0": 0.3, "t1": 1.3},
        ...     {"trial": 0, "phase": "tell", "t0": 1.3, "t1": 1.4}], 1)
        200.0
    """
    asks = [r["t0"] for r in records if r["phase"] == "ask"]
    ends = [r["t1"] for r in records if r.get("trial") is not None]
    if not asks or not ends or trials < 1:
        return None
    start, end = min(asks), max(ends)
    training = sum(r["t1"] - r["t0"] for r in records
                   if r["phase"].split(":")[0] in _TRAINING_PHASES and r["t0"] >= start)
    return round(1e3 * (end - start - training) / trials, 1)


def phase_table(records: Sequence[dict[str, Any]], trials: int) -> list[list[object]]:
    """Raw timing-hook phases: count, total s, ms per trial, median ms per call."""
    by: dict[str, list[float]] = defaultdict(list)
    for r in records:
        name = "train_steps" if r["phase"].startswith("train_steps:") else r["phase"]
        if name not in ("imported", "study_opened"):
            by[name].append(r["t1"] - r["t0"])
    rows: list[list[object]] = []
    for name, v in sorted(by.items(), key=lambda kv: -sum(kv[1])):
        rows.append([f"`{name}`", len(v), f"{sum(v):.2f}", f"{1e3 * sum(v) / max(trials, 1):.0f}",
                     f"{1e3 * statistics.median(v):.1f}"])
    return rows


def study_states(storage: str, study: str) -> dict[str, int]:
    """Trial counts by state (read after the run; imports Optuna in this process)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=storage)
    out: dict[str, int] = defaultdict(int)
    for t in s.get_trials(deepcopy=False):
        out[t.state.name] += 1
    return dict(out)


# ============================================================================ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/search_overhead.py",
        description=(__doc__ or "").split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--trials", type=int, default=50, help="finished trials of the search")
    p.add_argument("--epochs", type=int, default=2, help="epochs of every trial")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--amp", default=None, help="amp_dtype (default: bf16 on CUDA, none on CPU)")
    p.add_argument("--compile", action="store_true", help="compile: true in the trials")
    p.add_argument("--augment", default="light")
    p.add_argument("--pruner", default="median", help="medauto's --pruner (median: its default)")
    p.add_argument("--sampler", default="tpe")
    p.add_argument("--data", default="synthetic",
                   help="'synthetic' (DermaMNIST-shaped) or a MedMNIST name/path")
    p.add_argument("--data-dir", default=os.environ.get("MEDAUTO_DATA_DIR"))
    p.add_argument("--max-train", type=int, default=None, help="first N train images")
    p.add_argument("--max-val", type=int, default=None, help="first N val/test images")
    p.add_argument("--storage", default=None,
                   help="Optuna storage URL (default: SQLite in a temporary run dir)")
    p.add_argument("--no-tracking", action="store_true", help="search without MLflow")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the child (default: 1 on CPU, unset on CUDA)")
    p.add_argument("--time-limit", type=float, default=240.0,
                   help="seconds: the search gets --timeout (no trial starts after it) and "
                   "is killed 60 s later (0: no limit)")
    p.add_argument("--run-dir", type=Path, default=None,
                   help="keep the run dir (storage, MLflow, artifacts) here")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="Markdown report")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.trials < 1 or args.epochs < 1 or args.batch < 1:
        raise SystemExit("--trials, --epochs and --batch must be >= 1")
    cuda = args.device.startswith("cuda")
    amp = args.amp or ("bf16" if cuda else "none")
    threads = args.threads if args.threads is not None else (None if cuda else 1)
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env_info = environment(args.device if cuda and torch.cuda.is_available() else "cpu")
    tmp = tempfile.TemporaryDirectory(prefix="medauto-overhead-")
    try:
        run_dir = args.run_dir or Path(tmp.name) / "run"
        run_dir.mkdir(parents=True, exist_ok=True)
        data_path, data_desc = write_dataset(
            Path(tmp.name) / "data" / "bench-data.npz", data=args.data, data_dir=args.data_dir,
            max_train=args.max_train, max_val=args.max_val,
        )
        space = Path(tmp.name) / "bench.yaml"
        space.write_text(space_yaml(backbone=args.backbone, epochs=args.epochs, batch=args.batch,
                                    amp=amp, compile=args.compile, augment=args.augment))
        storage = args.storage or f"sqlite:///{run_dir / 'medauto.db'}"
        study = f"overhead-{int(time.time())}-{os.getpid()}"
        timing = Path(tmp.name) / "timing.jsonl"
        cmd = [sys.executable, "-m", "medauto.cli", "search", "-q", "--data", str(data_path),
               "--space", str(space), "--trials", str(args.trials), "--study", study,
               "--storage", storage, "--run-dir", str(run_dir), "--device", args.device,
               "--sampler", args.sampler, "--pruner", args.pruner, "--no-progress",
               # the per-trial overhead of one fit on the validation split, as before the
               # final ensemble and k-fold selection existed (they multiply the fits)
               "--selection", "holdout", "--no-final-model"]
        if args.no_tracking:
            cmd.append("--no-tracking")
        if args.time_limit > 0:
            cmd += ["--timeout", str(args.time_limit)]
        extra = {TIMING_ENV: str(timing)}
        if threads is not None:
            extra["OMP_NUM_THREADS"] = str(threads)
        log(f"search: {args.trials} trials × {args.epochs} epochs of {args.backbone} ...")
        launch = time.time()
        proc = subprocess.run(
            cmd, env=child_env(**extra), cwd=run_dir, capture_output=True, text=True,
            timeout=args.time_limit + 60 if args.time_limit > 0 else None,
        )
        end = time.time()
        if proc.returncode != 0:
            log(proc.stdout[-3000:] + proc.stderr[-3000:])
        records = read_timing(timing)
        if not any(r["phase"] == "objective" for r in records):
            raise SystemExit(f"the search trained no trial (exit code {proc.returncode})")
        ran = len({r["trial"] for r in records if r["phase"] == "objective"})
        states = study_states(storage, study)
        rows = breakdown(records, launch, end, ran)
        _, warm, steady = warmup_split(records)
        result = {
            "command": command, "environment": env_info, "returncode": proc.returncode,
            "wall_s": end - launch, "trials_trained": ran, "states": states,
            "steady_epoch_train_s": steady, "categories": rows,
            "per_trial_overhead_ms": per_trial_overhead_ms(records, ran),
            "overhead_pct": 100.0 - next(r["share_pct"] for r in rows if r["category"] == TRAIN),
            "storage": "PostgreSQL" if storage.startswith("postgres") else storage.split(":")[0],
            "tracking": not args.no_tracking, "data": data_desc,
        }
        text = render(result, phase_table(records, ran), args)
        write_text(args.out, text)
        if args.json:
            write_json(args.json, {**result, "records": records})
        print(text)
        log(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
        return 0 if proc.returncode == 0 else 1
    finally:
        tmp.cleanup()


def _per_trial_line(ms: float | None) -> str:
    if ms is None:
        return "**Per-trial overhead**: – (no trial asked and finished)."
    verdict = "met" if ms <= TARGET_TRIAL_OVERHEAD_MS else "missed"
    return (f"**Per-trial overhead** (first trial's `ask` → last trial's last phase, less "
            f"training steps, evaluation and model construction): **{ms:.0f} ms** per trial; "
            f"target ≤ {TARGET_TRIAL_OVERHEAD_MS:.0f} ms: **{verdict}**.")


def render(result: dict[str, Any], phases: list[list[object]], args: argparse.Namespace) -> str:
    """The Markdown report."""
    rows = [[r["category"], f"{r['seconds']:.2f}", f"{r['ms_per_trial']:.0f}",
             f"{r['share_pct']:.1f} %"] for r in result["categories"]]
    overhead = result["overhead_pct"]
    verdict = "met" if overhead <= TARGET_OVERHEAD_PCT else "missed"
    states = ", ".join(f"{k.lower()} {v}" for k, v in sorted(result["states"].items()))
    steady = result["steady_epoch_train_s"]
    return "\n".join([
        "# Search overhead: wall time not spent in training steps",
        "",
        "Written by `benchmarks/search_overhead.py` (issue 7, item 4). Command:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        environment_table(result["environment"]),
        "",
        f"`medauto search` as a child process: {result['trials_trained']} trials trained "
        f"({states}), {args.epochs} epoch(s) of `{args.backbone}` at batch {args.batch} each "
        f"(pruner `{args.pruner}`), on {result['data']}; storage {result['storage']}, MLflow "
        f"tracking {'on (local SQLite store)' if result['tracking'] else 'off'}; wall time "
        f"{result['wall_s']:.1f} s from launch to exit (exit code {result['returncode']}). "
        "Steady epoch (training steps): "
        + (f"{steady:.2f} s." if steady is not None else "– (no trial ran a 2nd epoch)."),
        "",
        markdown_table(["where the wall time goes", "total s", "ms per trial", "share of wall"],
                       rows),
        "",
        f"**Overhead** (everything but training steps): **{overhead:.1f} %** of the wall "
        f"time; target ≤ {TARGET_OVERHEAD_PCT:.0f} %: **{verdict}**.",
        "",
        _per_trial_line(result.get("per_trial_overhead_ms")),
        "",
        "Raw phases of the timing hook (`MEDAUTO_TIMING_FILE`, see `medauto/worker.py`); "
        "`objective` contains the per-trial phases, `train_steps` includes the warm-up:",
        "",
        markdown_table(["phase", "calls", "total s", "ms per trial", "median ms per call"],
                       phases),
        "",
    ])


if __name__ == "__main__":
    sys.exit(main())
