"""MedMNIST benchmark: the exact user command against the fixed recipe and the published table.

Two kinds of run fill one section per dataset of ``--doc`` (default
``docs/benchmarks/medmnist.md``; raw numbers in ``docs/benchmarks/medmnist.json``):

* ``python benchmarks/medmnist.py DATASET --budget 8m --device cuda`` runs, as a
  subprocess, exactly what a user types: ``medauto search --data DATASET --budget 8m
  --device cuda`` (no ``--space``: the space, the selection and the portfolio come from the
  data). It then reads the search's ``final.json``: the final ensemble's test AUC/ACC (the
  test split read once, after selection and calibration on validation/out-of-fold
  predictions), the best single trial's, the size and latency of both, and the funnel
  (trials run, pruned, failed; folds; ensemble members).
* ``python benchmarks/medmnist.py DATASET --recipe --seeds 5 --device cuda`` trains the
  fixed recipe through ``med_core`` (the configuration is the space's first portfolio
  entry, ``resnet18-recipe`` / ``r3d_18-recipe``): one model per seed with the epoch chosen
  on validation AUC and flip TTA, each tested once; it reports mean ± std over seeds and
  the soft-vote ensemble of the seeds, and the GPU time that took.

The section lists both next to every published MedMNIST v2 row (:mod:`medauto.baselines`),
with each command. A rerun replaces its own rows and keeps the others.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import math
import os
import re
import shlex
import shutil
import subprocess
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

_DOC_HEAD = """# MedMNIST: the exact user command vs. the fixed recipe and the published table

Written by `benchmarks/medmnist.py` (one section per dataset; a rerun replaces its own
rows). Protocol: official splits; no pretrained weights; every choice (space, trial,
epoch, ensemble members and weights, decision threshold) is made on the training and
validation data only, and the test split is read once, at the end, by the final model.
**medauto** rows are `medauto search --data <dataset> --budget <b> --device <d>` exactly as
a user types it. **Fixed recipe** rows train `resnet18-recipe` (3D: `r3d_18-recipe`)
through `med_core`: one model per seed, the epoch chosen on validation AUC, flip TTA;
mean ± sample std over seeds, and the soft-vote ensemble of all seeds. Published rows:
Yang et al., MedMNIST v2, Scientific Data 10, 41 (2023), doi:10.1038/s41597-022-01721-8.
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
    p.add_argument("dataset", help="MedMNIST name (breastmnist, pneumoniamnist, ...)")
    p.add_argument("--budget", default="8m", help="the search's --budget (default 8m)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:K (default auto)")
    p.add_argument("--recipe", action="store_true",
                   help="train the fixed recipe (--seeds seeds) instead of the search")
    p.add_argument("--seeds", type=int, default=5, help="fixed-recipe seeds (default 5)")
    p.add_argument("--epochs", type=int,
                   help="fixed-recipe epochs (default: the recipe's; smoke tests only)")
    p.add_argument("--run-dir", help="run folder (default: medauto-runs/bench-<dataset>)")
    p.add_argument("--doc", default=str(DEFAULT_DOC), help="Markdown file to merge into")
    p.add_argument("--data-dir", help="MedMNIST folder (default: $MEDAUTO_DATA_DIR)")
    return p


def _f(v: Any) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.3f}"


def _pm(values: Sequence[float]) -> str:
    import numpy as np

    if not values:
        return "–"
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return f"{float(np.mean(values)):.3f} ± {sd:.3f}"


# ----------------------------------------------------------------------- the search run
def run_search(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    """Runs the user's command as a subprocess; returns what the section shows."""
    import optuna

    from medauto.bagging import DEFERRED
    from medauto.final import FINAL_FILE
    from medauto.final import FinalResult
    from medauto.final import final_dir
    from medauto.keys import BAGGED_FROM_ATTR
    from medauto.keys import BUDGET_STOP_ATTR
    from medauto.keys import FOLD_VALUES_ATTR
    from medauto.keys import PORTFOLIO_ATTR
    from medauto.keys import REASON_ATTR
    from medauto.study import load_settings_dict

    cmd = ["medauto", "search", "--data", args.dataset, "--budget", args.budget,
           "--device", args.device]
    shown = shlex.join(cmd)
    exe = shutil.which("medauto")
    if exe is None:
        raise SystemExit("[medmnist] the `medauto` command is not on PATH (pip install .)")
    cmd = [exe, *cmd[1:], "--run-dir", str(run_dir), "--no-progress"]  # where; no TTY bar
    env = dict(os.environ)
    if args.data_dir:
        env["MEDAUTO_DATA_DIR"] = args.data_dir
    log(f"[medmnist] {shown}")
    t0 = time.monotonic()
    proc = subprocess.run(cmd, env=env, check=False, text=True, stdout=subprocess.PIPE)
    wall = time.monotonic() - t0
    print(proc.stdout, end="")
    if proc.returncode != 0:
        raise SystemExit(f"[medmnist] the search exited {proc.returncode}")
    study_line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("study: "))
    name = study_line.split(": ", 1)[1].strip()
    final = FinalResult.load(final_dir(run_dir, name) / FINAL_FILE)
    study = optuna.load_study(study_name=name, storage=f"sqlite:///{run_dir / 'medauto.db'}")
    trials = study.get_trials(deepcopy=False)
    states = [t.state.name.lower() for t in trials]
    reasons = [t.user_attrs.get(REASON_ATTR) for t in trials]
    folds = max((len(t.user_attrs.get(FOLD_VALUES_ATTR, [])) for t in trials), default=0)
    return {
        "command": shown, "wall_s": wall, "study": name,
        "space": load_settings_dict(study).get("space", {}).get("name"),
        "final": final.to_dict(),
        "funnel": {
            "trials": len(trials), "complete": states.count("complete"),
            "pruned": states.count("pruned"),
            "failed": sum(s == "fail" and r not in (DEFERRED, "surplus")
                          for s, r in zip(states, reasons, strict=True)),
            "deferred": reasons.count(DEFERRED),
            "portfolio": sum(PORTFOLIO_ATTR in t.user_attrs for t in trials),
            "bagged": sum(BAGGED_FROM_ATTR in t.user_attrs for t in trials),
            "budget_stopped": sum(BUDGET_STOP_ATTR in t.user_attrs for t in trials),
            "folds": folds, "candidates": len(final.candidates), "members": len(final.members),
        },
    }


# ----------------------------------------------------------------------- the recipe run
def recipe_config(dataset: Any, data: str, data_dir: str | None) -> Any:
    """The fixed recipe for ``dataset``: the first portfolio entry of the data's space."""
    from med_core.config import TrainConfig
    from medauto.fingerprint import choose_space
    from medauto.fingerprint import fingerprint_dataset
    from medauto.space import SearchSpace

    space = SearchSpace.from_yaml(choose_space(fingerprint_dataset(dataset), "cuda"))
    entry = space.portfolio[0]
    base = TrainConfig.from_flat({"data.dataset": data, "data.data_dir": data_dir})
    return entry.name, space.config_from_params(entry.params, base=base)


def run_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """Trains the fixed recipe over ``--seeds`` seeds through med_core."""
    import numpy as np

    from med_core.config import TrainConfig
    from med_core.data import load_dataset
    from med_core.device import resolve_device
    from med_core.training import KeepBestWeights
    from med_core.training import Trainer
    from medauto.scoring import split_metrics

    device = resolve_device(args.device)
    ds = load_dataset(args.dataset, data_dir=args.data_dir)
    name, cfg = recipe_config(ds, args.dataset, args.data_dir)
    if args.epochs is not None:
        cfg = TrainConfig.from_flat({"epochs": args.epochs}, base=cfg)
    per_seed, scores, y_ref = [], [], None
    t0 = time.monotonic()
    for seed in range(args.seeds):
        keeper = KeepBestWeights()
        trainer = Trainer(TrainConfig.from_flat({"seed": seed}, base=cfg), dataset=ds,
                          device=device, callbacks=[keeper])
        trainer.fit()
        keeper.restore(trainer)
        y, s = trainer.predict("test", tta=cfg.tta)  # each model: one look at test
        trainer.close()
        y_ref = y
        scores.append(s)
        m = split_metrics(ds.info.task, y, s)
        per_seed.append(m)
        log(f"[medmnist] recipe seed {seed}: test auc {m['auc']:.4f} acc {m['acc']:.4f}")
    gpu_s = time.monotonic() - t0
    ens = split_metrics(ds.info.task, y_ref, np.mean(scores, axis=0))
    return {"entry": name, "seeds": args.seeds, "per_seed": per_seed, "ensemble": ens,
            "train_s": gpu_s, "config": cfg.to_dict()}


# ----------------------------------------------------------------------- the document
def render_section(key: str, title: str, res: dict[str, Any]) -> str:
    """One dataset's Markdown section from its stored search and recipe results."""
    from medauto.baselines import get_baselines

    search, recipe = res.get("search"), res.get("recipe")
    rows: list[list[object]] = []
    ref_auc = ref_acc = math.nan
    if search:
        f = search["final"]
        rows.append([f"**medauto final ensemble** ({search['budget']})",
                     _f(f["test"].get("auc")), _f(f["test"].get("acc")),
                     "this run (test read once)"])
        rows.append(["medauto best single trial (same run)", _f(f["test_single"].get("auc")),
                     _f(f["test_single"].get("acc")), "reference row of the same run"])
        ref_auc, ref_acc = f["test"].get("auc") or math.nan, f["test"].get("acc") or math.nan
    if recipe:
        aucs = [m["auc"] for m in recipe["per_seed"]]
        accs = [m["acc"] for m in recipe["per_seed"]]
        rows.append([f"fixed recipe, 1 model ({recipe['seeds']} seeds)", _pm(aucs), _pm(accs),
                     f"`{recipe['entry']}` through med_core"])
        rows.append([f"fixed recipe, {recipe['seeds']}-seed ensemble",
                     _f(recipe["ensemble"]["auc"]), _f(recipe["ensemble"]["acc"]),
                     f"{recipe['train_s']:.0f} s of training"])
    for b in get_baselines(key):
        rows.append([b.method, f"{b.auc:.3f}", f"{b.acc:.3f}", "MedMNIST v2 (published)"])
    lines = [_BEGIN.format(key=key), f"## {title}", ""]
    if search:
        lines += [f"Search run {search['finished_at']} on {search['device_name']}:", "", "```",
                  search["command"], "```", ""]
    if recipe:
        lines += [f"Recipe run {recipe['finished_at']} on {recipe['device_name']}:", "", "```",
                  recipe["command"], "```", ""]
    lines += [markdown_table(["method", "test AUC", "test ACC", "source"], rows, align="lrrl"),
              ""]
    if search:
        f, fn = search["final"], search["funnel"]
        members = ", ".join(f"trial {m['trial']} `{m['backbone']}` ×{m['weight']:.2f}"
                            for m in f["members"])
        on = ("out-of-fold predictions, " + str(fn["folds"]) + " folds"
              if f["selection"] == "oof" else "the validation split")
        lines += [
            "- **Against the targets**: " + _against(ref_auc, ref_acc, recipe, key),
            f"- **Funnel**: space `{search['space']}`; {fn['trials']} trials "
            f"({fn['portfolio']} from the portfolio; {fn['complete']} complete, "
            f"{fn['pruned']} pruned, {fn['failed']} failed; {fn['budget_stopped']} stopped "
            f"by the budget; {fn.get('bagged', 0)} seed repeats of the best, "
            f"{fn.get('deferred', 0)} portfolio entries deferred behind them); selection on "
            f"{on}; {fn['candidates']} candidates → "
            f"{fn['members']} members: {members}.",
            f"- **Selection set** (not test): ensemble {f['metric']} "
            f"{f['selection_scores']['ensemble'][f['metric']]:.4f}, best single "
            f"{f['selection_scores']['best_single'][f['metric']]:.4f}; threshold "
            f"{f['threshold']}.",
            f"- **Size / latency**: ensemble {f['size_bytes'].get('ensemble', 0) / 1e6:.1f} MB, "
            f"{f['latency_ms'].get('ensemble', math.nan):.2f} ms/image; best single "
            f"{f['size_bytes'].get('single', 0) / 1e6:.1f} MB, "
            f"{f['latency_ms'].get('single', math.nan):.2f} ms/image ({f['device']}, batch 32).",
            f"- **Wall clock** of the command: {search['wall_s']:.0f} s for `--budget "
            f"{search['budget']}` (includes start-up and the final model).",
            "",
            "<details><summary>Hardware and software (search run)</summary>", "",
            environment_table(search["environment"]), "", "</details>",
        ]
    lines += [_END.format(key=key), ""]
    return "\n".join(lines)


def _against(auc: float, acc: float, recipe: dict[str, Any] | None, key: str) -> str:
    from medauto.baselines import best_baseline

    parts = []
    if recipe:
        e = recipe["ensemble"]
        parts.append(f"vs the recipe's ensemble AUC {auc - e['auc']:+.3f}, ACC "
                     f"{acc - e['acc']:+.3f}")
    for metric, value in (("auc", auc), ("acc", acc)):
        b = best_baseline(key, metric)
        if b is not None:
            ref = getattr(b, metric)
            parts.append(f"vs the best published {metric.upper()} ({b.method}, {ref:.3f}) "
                         f"{value - ref:+.3f}")
    return "; ".join(parts) or "no reference rows"


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
    from med_core.device import resolve_device
    from medauto.baselines import dataset_key
    from medauto.budget import format_seconds
    from medauto.budget import parse_budget

    key = dataset_key(args.dataset)
    device = resolve_device(args.device)
    env = environment(device)
    stamp = {"finished_at": "", "command": command_line(__file__, argv), "environment": env,
             "device_name": env.get("GPU") or env.get("CPU") or device}
    if args.recipe:
        res = run_recipe(args)
    else:
        budget = format_seconds(parse_budget(args.budget))  # a bad budget fails first
        run_dir = Path(args.run_dir or f"medauto-runs/bench-{key}")
        res = {**run_search(args, run_dir), "budget": budget}
        stamp["command"] = res.pop("command")
    res.update({**stamp, "finished_at": time.strftime("%Y-%m-%d %H:%M %Z")})
    store = Path(args.doc).with_suffix(".json")
    with _locked(store):
        data = json.loads(store.read_text()) if store.is_file() else {}
        entry = data.setdefault(key, {})
        entry["recipe" if args.recipe else "search"] = res
        write_json(store, data)
    doc = merge_section(args.doc, key, render_section(key, key, entry))
    log(f"[medmnist] wrote {doc} and {store}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
