#!/usr/bin/env python
"""Search throughput: a budgeted ``medauto search`` with one trial at a time (K = 1)
against the new default (``--trials-per-device auto``), same budget, same data, one run.

GPU (one H200; 2 datasets x 2 settings x 8.5 min ≈ 36 min: run each dataset in its own
device call, or lower ``--budget``)::

    python benchmarks/search_throughput.py --device cuda --data breastmnist --budget 8.5m
    python benchmarks/search_throughput.py --device cuda --data pneumoniamnist --budget 8.5m \\
        --out docs/benchmarks/search_throughput_pneumoniamnist.md

CPU smoke test (tiny; ``auto`` is K = 1 on a CPU, so compare against a forced K = 2)::

    python benchmarks/search_throughput.py --device cpu --data breastmnist --budget 60s \\
        --ks 1,2 --space fast --max-train 128

Each setting runs ``python -m medauto.cli search --data D --budget B --device X
--trials-per-device K`` as a user would (a child process, its own run folder, default
space and selection unless given), with medauto's timing hook on (``MEDAUTO_TIMING_FILE``,
``medauto/worker.py``: every worker process appends to it). Reported per setting:
images trained per second of wall time (every trial's epochs x its training images,
over the search's wall time), finished trials and epochs per minute, the GPU utilisation
sampled every 0.5 s during the run (``torch.cuda.utilization`` or ``nvidia-smi``), the
per-trial time outside training steps broken down by phase (summed over the worker
processes, so with K > 1 it is process time, not wall time), the K that ``auto`` chose,
the best validation value and the final model's test AUC/ACC (``final.json``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `medauto` importable
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from benchmarks.search_overhead import CATEGORIES  # noqa: E402
from benchmarks.search_overhead import TIMING_ENV  # noqa: E402
from benchmarks.search_overhead import breakdown  # noqa: E402
from benchmarks.search_overhead import child_env  # noqa: E402
from benchmarks.search_overhead import read_timing  # noqa: E402
from benchmarks.search_overhead import write_dataset  # noqa: E402

DEFAULT_OUT = "docs/benchmarks/search_throughput.md"
#: Issue 13's targets: search-wide images per second of wall time on BreastMNIST (H200),
#: and on every dataset this many times the one-trial-at-a-time (K = 1) setting.
TARGET_IMG_S = 25_000
TARGET_RATIO = 10.0
#: Rows of the per-trial overhead table (everything the timing hook sees but training).
OVERHEAD_ROWS = [c for c in CATEGORIES if c not in ("training steps", "other",
                                                      "process start + imports")]


def study_work(storage: str, study: str, n_train: int, n_pool: int) -> dict[str, Any]:
    """Trials by state, epochs and images trained, the best value and K chosen, read from
    the study after the run. A cross-validated trial trains ``folds`` fits of
    ``n_pool * (folds - 1) / folds`` images; its ``history`` is its first fold's."""
    import optuna

    from medauto.bagging import DEFERRED
    from medauto.keys import EPOCHS_RUN_ATTR
    from medauto.keys import FOLD_VALUES_ATTR
    from medauto.keys import HISTORY_ATTR
    from medauto.keys import REASON_ATTR
    from medauto.keys import WORKER_ATTR
    from medauto.study import load_settings

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = optuna.load_study(study_name=study, storage=storage)
    settings = load_settings(s)
    states: dict[str, int] = {}
    epochs = images = 0
    workers = set()
    for t in s.get_trials(deepcopy=False):
        # a portfolio entry that seed bagging deferred is a FAIL record re-queued, not a failure
        deferred = t.user_attrs.get(REASON_ATTR) == DEFERRED
        state = "DEFERRED" if deferred and t.state.name == "FAIL" else t.state.name
        states[state] = states.get(state, 0) + 1
        run = int(t.user_attrs.get(EPOCHS_RUN_ATTR, len(t.user_attrs.get(HISTORY_ATTR, []))))
        if not run:
            continue
        workers.add(t.user_attrs.get(WORKER_ATTR))
        folds = t.user_attrs.get(FOLD_VALUES_ATTR)
        if settings.selection == "cv" and folds:
            k = len(folds)
            fold_train = n_pool * (k - 1) // max(k, 2)
            epochs += run * len(folds)
            images += run * len(folds) * fold_train
        else:
            epochs += run
            images += run * n_train
    try:
        best = float(s.best_value)
    except ValueError:
        best = None
    return {"states": states, "epochs": epochs, "images": images, "best_value": best,
            "workers": len(workers - {None}), "metric": settings.metric,
            "selection": settings.selection}


def run_setting(args: argparse.Namespace, k: str, data: str, work: Path,
                sizes: tuple[int, int]) -> dict[str, Any]:
    """One ``medauto search`` with ``--trials-per-device k``; its measurements."""
    from medauto.concurrency import GpuUtilization

    run_dir = work / f"run-k{k}"
    run_dir.mkdir(parents=True, exist_ok=True)
    timing = work / f"timing-k{k}.jsonl"
    study = f"throughput-k{k}"
    cmd = [sys.executable, "-m", "medauto.cli", "search", "--data", data, "--budget",
           args.budget, "--device", args.device, "--trials-per-device", k, "--study", study,
           "--run-dir", str(run_dir), "--no-progress"]
    if args.space:  # a YAML path is resolved here: the search runs in its run folder
        cmd += ["--space", str(Path(args.space).resolve()) if Path(args.space).exists()
                else args.space]
    if args.data_dir and not Path(data).exists():
        cmd += ["--data-dir", args.data_dir]
    extra = {TIMING_ENV: str(timing)}
    if args.threads is not None:
        extra["OMP_NUM_THREADS"] = str(args.threads)
    log(f"search K={k}: {' '.join(cmd[3:])}")
    util = GpuUtilization(args.device if args.device != "cuda" else "cuda:0").start()
    launch = time.time()
    proc = subprocess.run(cmd, env=child_env(**extra), cwd=run_dir, capture_output=True,
                          text=True)
    end = time.time()
    gpu_util = util.stop()
    if proc.returncode != 0:
        log(proc.stdout[-3000:] + proc.stderr[-3000:])
    records = read_timing(timing)
    trials = len({(r["pid"], r["trial"]) for r in records if r["phase"] == "objective"})
    wall = end - launch
    storage = f"sqlite:///{run_dir / 'medauto.db'}"
    done = study_work(storage, study, *sizes) if (run_dir / "medauto.db").exists() else {}
    chose = re.findall(r"trials per device: (\d+) \((.*)\)$", proc.stderr, re.MULTILINE)
    final_path = run_dir / "final" / study / "final.json"
    final = json.loads(final_path.read_text()) if final_path.exists() else {}
    finished = sum(v for s, v in done.get("states", {}).items() if s in ("COMPLETE", "PRUNED"))
    rows = breakdown(records, launch, end, trials)
    return {
        "k": k, "k_chosen": int(chose[-1][0]) if chose else (int(k) if k != "auto" else 1),
        "k_reason": chose[-1][1] if chose else "", "returncode": proc.returncode,
        "wall_s": wall, "trials_trained": trials, **done,
        "img_per_s": done.get("images", 0) / wall if wall > 0 else 0.0,
        "trials_per_min": 60.0 * finished / wall if wall > 0 else 0.0,
        "epochs_per_min": 60.0 * done.get("epochs", 0) / wall if wall > 0 else 0.0,
        "gpu_util": gpu_util, "categories": rows,
        "test_auc": final.get("test", {}).get("auc"), "test_acc": final.get("test", {}).get("acc"),
        "stderr_tail": proc.stderr[-2000:],
    }


def render(results: list[dict[str, Any]], args: argparse.Namespace, command: str,
           env_info: dict[str, str], data_desc: str) -> str:
    """The Markdown report."""
    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    head = ["", *[f"K = {r['k']}" + (f" (chose {r['k_chosen']})" if r["k"] == "auto" else "")
                  for r in results]]
    rows: list[list[object]] = [
        ["images trained / s of wall time", *[f"{r['img_per_s']:,.0f}" for r in results]],
        ["finished trials / min", *[fmt(r["trials_per_min"]) for r in results]],
        ["epochs / min", *[fmt(r["epochs_per_min"]) for r in results]],
        ["trials (by state)", *[", ".join(f"{k.lower()} {v}" for k, v in
                                          sorted(r.get("states", {}).items())) for r in results]],
        ["worker processes that trained", *[r.get("workers", "–") for r in results]],
        ["GPU utilisation (sampled)", *[pct(r["gpu_util"]) for r in results]],
        [f"best validation {results[0].get('metric', 'value')}",
         *[fmt(r.get("best_value"), 4) for r in results]],
        ["final model test AUC / ACC", *[f"{fmt(r['test_auc'], 4)} / {fmt(r['test_acc'], 4)}"
                                         for r in results]],
        ["wall time s (exit code)", *[f"{r['wall_s']:.0f} ({r['returncode']})" for r in results]],
    ]
    over = [[c, *[f"{next(x for x in r['categories'] if x['category'] == c)['ms_per_trial']:.0f}"
                  for r in results]] for c in OVERHEAD_ROWS]
    reasons = [f"- `auto` chose K = {r['k_chosen']}: {r['k_reason'] or 'see the log'}"
               for r in results if r["k"] == "auto"]
    best = max(results, key=lambda r: r["img_per_s"])
    base = next((r for r in results if r["k"] == "1"), None)
    targets = []
    if base is not None and base is not best and base["img_per_s"] > 0:
        ratio = best["img_per_s"] / base["img_per_s"]
        targets.append(f"Target ≥ {TARGET_RATIO:.0f}× the K = 1 throughput: **"
                       + ("met" if ratio >= TARGET_RATIO else
                          f"missed: {ratio:.1f}×, {TARGET_RATIO - ratio:.1f}× short") + "**")
    if Path(args.data).stem.lower() == "breastmnist":
        targets.append(f"Target ≥ {TARGET_IMG_S:,} img/s of wall time (BreastMNIST, H200): **"
                       + ("met" if best["img_per_s"] >= TARGET_IMG_S else
                          f"missed by {TARGET_IMG_S - best['img_per_s']:,.0f} img/s") + "**")
    verdict = "; ".join(targets) or "no target applies to this run"
    return "\n".join([
        "# Search throughput: one trial at a time against concurrent trials",
        "",
        "Written by `benchmarks/search_throughput.py` (issue 13). Command:",
        "",
        "```bash", command, "```", "",
        environment_table(env_info), "",
        f"Each column is one `medauto search --data {args.data} --budget {args.budget} "
        f"--device {args.device} --trials-per-device K` (a child process; space "
        f"`{args.space or 'chosen from the data'}`), on {data_desc}.", "",
        markdown_table(head, rows), "",
        *reasons, "",
        verdict
        + (" (the targets are for the GPU; on a CPU this is a smoke test)."
           if args.device == "cpu" else "."), "",
        "Time outside training steps, ms per trial (timing hook, summed over the worker "
        "processes):", "",
        markdown_table(["phase", *head[1:]], over), "",
    ])


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="benchmarks/search_throughput.py",
                                description=(__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--data", default="breastmnist", help="a MedMNIST name or an .npz path")
    p.add_argument("--data-dir", default=os.environ.get("MEDAUTO_DATA_DIR"))
    p.add_argument("--budget", default="8.5m", help="medauto search --budget, each setting")
    p.add_argument("--ks", default="1,auto", help="--trials-per-device values, in order")
    p.add_argument("--space", default=None, help="--space (default: chosen from the data)")
    p.add_argument("--max-train", type=int, default=None,
                   help="first N train images (a cut copy of the data; smoke tests)")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help="Markdown report")
    p.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    p.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS of the search")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs every setting of ``--ks`` and writes the report; 0 when every search exited 0."""
    argv = list(sys.argv[1:]) if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    ks = [k.strip() for k in args.ks.split(",") if k.strip()]
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env_info = environment(args.device if args.device.startswith("cuda") else "cpu")
    with tempfile.TemporaryDirectory(prefix="medauto-throughput-") as tmp:
        work = Path(tmp)
        data = args.data
        if args.max_train is not None:
            data, _ = map(str, write_dataset(work / "data" / f"{Path(args.data).stem}.npz",
                                             data=args.data, data_dir=args.data_dir,
                                             max_train=args.max_train, max_val=None))
        from med_core.data import load_dataset

        ds = load_dataset(data, data_dir=args.data_dir)
        sizes = (len(ds.train), len(ds.train) + len(ds.val))
        data_desc = (f"`{ds.info.name}` ({len(ds.train):,} train / {len(ds.val):,} val "
                     f"images, {ds.info.in_chans}×{'×'.join(map(str, ds.info.image_size))})")
        results = [run_setting(args, k, data, work, sizes) for k in ks]
    text = render(results, args, command, env_info, data_desc)
    write_text(args.out, text)
    if args.json:
        write_json(args.json, {"command": command, "environment": env_info,
                               "results": results})
    print(text)
    log(f"wrote {args.out}" + (f" and {args.json}" if args.json else ""))
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
