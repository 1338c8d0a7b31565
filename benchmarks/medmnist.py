"""MedMNIST benchmark: a budgeted medauto search + 3-seed retrain vs. the published table.

Runs, on one device and within one wall-clock budget (``--budget``, see
:mod:`medauto.budget`): a medauto search on the official train/val splits (selection on
validation AUC only), the final retrain of the winner with ``--seeds`` seeds (flip TTA and,
with ``--ensemble K``, the ensemble size chosen on validation AUC only), one evaluation of
each retrained model on the test split with MedMNIST's official ACC/AUC, and
``medauto report``. It then merges one section for the dataset into ``--doc`` (default
``docs/benchmarks/medmnist.md``): a rerun replaces the dataset's section, other datasets'
sections are kept (the write is locked, so concurrent runs for different datasets are
safe). The section holds the command, the hardware/software, medauto's test AUC/ACC
(mean ± std over seeds) next to every published MedMNIST v2 row (:mod:`medauto.baselines`)
and the project's reference runs, the budget actually used, trials run/pruned and the
winning configuration. Raw numbers go to ``<run-dir>/benchmark.json``.

Progress goes to stderr; all outputs are written at the end. Example (GPU)::

    python benchmarks/medmnist.py breastmnist --budget 15m --device cuda \\
        --run-dir runs/bench-breast
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import math
import re
import sys
import time
from collections.abc import Iterator
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `medauto` importable
    sys.path.insert(0, str(_REPO))

from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import environment_table  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402

DEFAULT_DOC = _REPO / "docs" / "benchmarks" / "medmnist.md"

#: The search space used for each dataset when ``--space`` is not given.
DEFAULT_SPACES = {
    "breastmnist": "ultrasound",
    "pneumoniamnist": "xray",
    "adrenalmnist3d": "volumetric",
    "vesselmnist3d": "volumetric",
}

#: Runs of this project that the search must beat too (issue #8): method, AUC, ACC, what.
REFERENCE_RUNS: dict[str, list[tuple[str, float, float, str]]] = {
    "breastmnist": [
        ("ResNet-18 (28), reproduced", 0.898, 0.831, "project H200 run, 3 seeds (issue #8)"),
        ("hand-tuned ResNet-18 (28)", 0.890, 0.872,
         "AdamW, one-cycle, flips + small affine, label smoothing 0.1, 100 epochs (issue #8)"),
    ],
    "pneumoniamnist": [
        ("ResNet-18 (28), reproduced", 0.944, 0.849, "project H200 run, 3 seeds (issue #8)"),
        ("hand-tuned ResNet-18 (28)", 0.970, 0.876,
         "AdamW, one-cycle, flips + small affine, label smoothing 0.1, 100 epochs (issue #8)"),
    ],
}

_DOC_HEAD = """# MedMNIST: medauto within a fixed budget vs. the published MedMNIST v2 table

Written by `benchmarks/medmnist.py` (one section per dataset; a rerun replaces its
section). Protocol: official splits; every choice (trial, epoch, TTA, ensemble size) is
made on the **validation** split; each retrained model is evaluated **once** on the test
split with MedMNIST's official ACC/AUC (`medauto retrain`); no pretrained weights; mean ±
sample std over the retrain seeds. One wall-clock budget covers search + retrain
(`--budget`, split as described in `docs/search_spaces.md`); the report step is not
counted. Published rows: Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023),
doi:10.1038/s41597-022-01721-8 (`medauto/baselines.py` says how each cell was checked).
"""

_BEGIN = "<!-- medmnist-bench:begin {key} -->"
_END = "<!-- medmnist-bench:end {key} -->"
_SECTION = re.compile(
    r"<!-- medmnist-bench:begin (?P<key>[\w.-]+) -->\n.*?<!-- medmnist-bench:end (?P=key) -->\n",
    re.S,
)


def build_parser() -> argparse.ArgumentParser:
    """The command-line options."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("dataset", help="MedMNIST name (breastmnist, pneumoniamnist, ...) or .npz")
    p.add_argument("--budget", default="15m", help="search + retrain wall clock (default 15m)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:K (default auto)")
    p.add_argument("--space", help="search space (default: per dataset, see DEFAULT_SPACES)")
    p.add_argument("--run-dir", help="run folder (default: medauto-runs/bench-<dataset>)")
    p.add_argument("--doc", default=str(DEFAULT_DOC), help="Markdown file to merge into")
    p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR)")
    p.add_argument("--seeds", type=int, default=3, help="retrain seeds (default 3)")
    p.add_argument("--ensemble", type=int, default=1, metavar="K",
                   help="retrain the top-K trials; the size j <= K is chosen on val AUC")
    p.add_argument("--retrain-fraction", type=float, default=0.25,
                   help="share of the budget reserved for the retrain (default 0.25)")
    p.add_argument("--tta", choices=("trial", "on", "off", "auto"), default="auto",
                   help="flip TTA at retrain (default auto: per model on val AUC)")
    p.add_argument("--sampler", default="tpe", help="Optuna sampler (default tpe)")
    p.add_argument("--pruner", default="hyperband", help="Optuna pruner (default hyperband)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed")
    p.add_argument("--tracking", action="store_true", help="also log to MLflow (slower)")
    p.add_argument("--no-report", action="store_true", help="skip `medauto report`")
    return p


def _pm(mean: float, std: float) -> str:
    return "–" if not math.isfinite(mean) else f"{mean:.3f} ± {std:.3f}"


def _delta(a: float, b: float) -> str:
    return "–" if not (math.isfinite(a) and math.isfinite(b)) else f"{a - b:+.3f}"


def trial_counts(study: Any) -> dict[str, int]:
    """Trials by state, plus those stopped by the budget (with a ``budget_stop`` attribute)."""
    from collections import Counter

    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name.lower() for t in trials)
    return {
        "total": len(trials), "complete": counts.get("complete", 0),
        "pruned": counts.get("pruned", 0), "failed": counts.get("fail", 0),
        "budget_stopped": sum("budget_stop" in t.user_attrs for t in trials),
    }


def render_section(res: dict[str, Any]) -> str:
    """One dataset's Markdown section (between its begin/end markers)."""
    from medauto.baselines import get_baselines

    key, r = res["dataset_key"], res["retrain"]
    m, s = r["test_mean"], r["test_std"]
    auc, acc = m.get("auc", math.nan), m.get("acc", math.nan)
    auc = math.nan if auc is None else auc
    acc = math.nan if acc is None else acc
    label = f"**medauto** ({res['budget']}, `{res['space']}`)"
    rows: list[list[object]] = [[label, _pm(auc, s.get("auc") or 0.0),
                                 _pm(acc, s.get("acc") or 0.0), "–", "–", "this run"]]
    for b in get_baselines(key):
        rows.append([b.method, f"{b.auc:.3f}", f"{b.acc:.3f}", _delta(auc, b.auc),
                     _delta(acc, b.acc), "MedMNIST v2 (published)"])
    for method, b_auc, b_acc, what in REFERENCE_RUNS.get(key, []):
        rows.append([method, f"{b_auc:.3f}", f"{b_acc:.3f}", _delta(auc, b_auc),
                     _delta(acc, b_acc), what])
    b = res["budget_used"]
    c = res["trials"]
    used = r.get("ensemble_used", 1)
    members = ", ".join(f"{mr['name']} (tta {'on' if mr.get('tta') else 'off'}, "
                        f"val AUC {mr.get('val', {}).get('auc') or math.nan:.3f})"
                        for mr in r["models"])
    per_seed = [[ps["seed"], f"{ps['test']['auc']:.3f}", f"{ps['test']['acc']:.3f}",
                 ", ".join(ps["members"])] for ps in r["per_seed"]]
    lines = [
        _BEGIN.format(key=key),
        f"## {res['dataset_title']}",
        "",
        f"Run {res['finished_at']}. Command:",
        "",
        "```",
        res["command"],
        "```",
        "",
        markdown_table(
            ["method", "test AUC", "test ACC", "medauto − row (AUC)", "medauto − row (ACC)",
             "source"],
            rows, align="lrrrrl",
        ),
        "",
        f"Per seed ({len(r['per_seed'])} seeds; each model tested once):",
        "",
        markdown_table(["seed", "test AUC", "test ACC", "models"], per_seed, align="rrrl"),
        "",
        f"- **Budget**: {res['budget']} = {b['total_s']:.0f} s (search {b['plan']['search_s']:.0f}"
        f" s, retrain {b['plan']['retrain_s']:.0f} s, slack {b['plan']['slack_s']:.0f} s); "
        f"used {b['used_s']:.0f} s (search {b['search_s']:.0f} s, retrain {b['retrain_s']:.0f}"
        f" s), {b['over_s']:+.0f} s vs. the budget; trial cap "
        f"{b['plan']['trial_cap_s']:.0f} s. Report: {b['report_s']:.0f} s (not counted).",
        f"- **Trials**: {c['total']} ({c['complete']} complete, {c['pruned']} pruned, "
        f"{c['failed']} failed; {c['budget_stopped']} of them stopped by the budget: at the "
        "trial cap they complete with the epochs they trained, at the end of the search they "
        "are pruned); sampler "
        f"`{res['sampler']}`, pruner `{res['pruner']}`.",
        f"- **Winner**: trial {res['best_trial']} (val AUC {res['best_value']:.4f}), "
        f"`{res['best_config']['model']['backbone']}`, {res['best_config']['epochs']} epochs; "
        f"retrain: {used} of {r['ensemble']} top trial(s) per seed, TTA `{r['tta']}` → "
        f"{members}.",
        "",
        "<details><summary>Winning trial's searched parameters</summary>",
        "",
        "```json",
        json.dumps(res["best_params"], indent=1, sort_keys=True),
        "```",
        "",
        "</details>",
        "",
        "<details><summary>Hardware and software</summary>",
        "",
        environment_table(res["environment"]),
        "",
        "</details>",
        _END.format(key=key),
        "",
    ]
    return "\n".join(lines)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(f".{path.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def merge_section(doc: str | Path, key: str, section: str) -> Path:
    """Puts ``section`` for ``key`` into ``doc``: replaces its old section, keeps the
    others, orders sections by key; creates the file (with its header) if missing."""
    path = Path(doc)
    with _locked(path):
        text = path.read_text() if path.is_file() else ""
        sections = {mt["key"]: mt.group(0) for mt in _SECTION.finditer(text)}
        sections[key] = section if section.endswith("\n") else section + "\n"
        first = _SECTION.search(text)
        head = text[: first.start()] if first else text
        if not head.strip():
            head = _DOC_HEAD + "\n"
        body = "\n".join(sections[k] for k in sorted(sections))
        write_text(path, head.rstrip("\n") + "\n\n" + body)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the benchmark; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    from medauto import AutoMLOptimizer
    from medauto.baselines import dataset_key
    from medauto.budget import format_seconds
    from medauto.budget import parse_budget
    from medauto.logging import get_logger
    from medauto.logging import set_verbosity
    from medauto.optimizer import resolve_device

    get_logger("medauto")
    set_verbosity(logging.INFO)
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    total = parse_budget(args.budget)  # a bad budget fails before anything runs
    key = dataset_key(args.dataset)
    device = resolve_device(args.device)
    space = args.space or DEFAULT_SPACES.get(key, "fast" if device == "cpu" else "default")
    run_dir = Path(args.run_dir or f"medauto-runs/bench-{key}")
    study_name = f"bench-{key}-{space if '/' not in space else Path(space).stem}"
    log(f"[medmnist] {key}: budget {format_seconds(total)}, space {space}, device {device}, "
        f"run dir {run_dir}")
    opt = AutoMLOptimizer(
        args.dataset, space, study_name=study_name, run_dir=run_dir, sampler=args.sampler,
        pruner=args.pruner, device=device, seed=args.seed, data_dir=args.data_dir,
        budget=total, budget_seeds=args.seeds, budget_ensemble=args.ensemble,
        budget_retrain_fraction=args.retrain_fraction,
        progress=False, tracking=None if args.tracking else False,
    )
    found = opt.optimize()
    search_end = time.monotonic()
    counts = trial_counts(found.study)
    log(f"[medmnist] search done: {counts}; best trial {found.best_trial_number} "
        f"val AUC {found.best_value:.4f}; retraining {args.seeds} seed(s)")
    tta = {"trial": None, "on": True, "off": False, "auto": "auto"}[args.tta]
    rt = opt.retrain(tta=tta, ensemble_select="val" if args.ensemble > 1 else "fixed")
    retrain_end = time.monotonic()
    plan, start = opt.budget_plan_, opt.budget_start_
    assert plan is not None and start is not None
    log(f"[medmnist] retrain done: test AUC {rt.test_mean['auc']:.4f} ± "
        f"{rt.test_std['auc']:.4f}, ACC {rt.test_mean['acc']:.4f} ± {rt.test_std['acc']:.4f}")
    report_s = 0.0
    if not args.no_report:
        from medauto.report import write_report

        t0 = time.monotonic()
        write_report(found.study, out_dir=run_dir / "report" / study_name,
                     retrain=Path(rt.out_dir) / "retrain.json")
        report_s = time.monotonic() - t0
    best = found.study.best_trial
    res = {
        "dataset": args.dataset, "dataset_key": key, "dataset_title": rt.dataset or key,
        "space": space, "budget": format_seconds(total), "device": device,
        "sampler": args.sampler, "pruner": args.pruner,
        "command": command_line(__file__, argv),
        "environment": environment(device),
        "finished_at": time.strftime("%Y-%m-%d %H:%M %Z"),
        "budget_used": {
            "total_s": total, "plan": plan.to_dict(), "used_s": retrain_end - start,
            "search_s": search_end - start, "retrain_s": retrain_end - search_end,
            "over_s": retrain_end - start - total, "report_s": report_s,
        },
        "trials": counts, "best_trial": best.number, "best_value": float(best.value),
        "best_params": best.params, "best_config": found.best_config.to_dict(),
        "retrain": rt.to_dict(), "run_dir": str(run_dir),
    }
    write_json(run_dir / "benchmark.json", res)
    doc = merge_section(args.doc, key, render_section(res))
    log(f"[medmnist] used {res['budget_used']['used_s']:.0f} s of {total:.0f} s; "
        f"wrote {doc} and {run_dir / 'benchmark.json'}")
    print(f"{key}: test AUC {_pm(rt.test_mean['auc'], rt.test_std['auc'])}, "
          f"ACC {_pm(rt.test_mean['acc'], rt.test_std['acc'])}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
