"""Read commands on a study: ``medauto status`` and ``medauto best``.

They never create a store (:func:`medauto.cli._store.load_study`).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING
from typing import Any

from medauto.cli._command import Command
from medauto.cli._hints import next_hint
from medauto.cli._options import add_store_options
from medauto.cli._options import add_study_option
from medauto.cli._store import StoreRef
from medauto.cli._store import load_study
from medauto.exceptions import MedautoError
from medauto.keys import BACKBONE_ATTR
from medauto.keys import REASON_ATTR

if TYPE_CHECKING:
    import optuna

__all__ = ["BestCommand", "StatusCommand", "trial_rows"]

_TABLE = ("number", "state", "value", "backbone", "epochs", "reason")


def trial_rows(study: optuna.Study) -> list[dict[str, Any]]:
    """One row per trial: number, state, value, backbone, epochs, reason.

    ``epochs`` counts the epochs the trial reported; ``reason`` is why a trial was pruned
    or failed (``nan_loss``, ``oom``, ``pruned``, an error), empty for a complete one.
    """
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append({
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "backbone": t.user_attrs.get(BACKBONE_ATTR),
            "epochs": len(t.intermediate_values),
            "reason": t.user_attrs.get(REASON_ATTR, ""),
        })
    return rows


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4f}" if math.isfinite(v) else str(v)
    return str(v)


def _table(rows: list[dict[str, Any]]) -> list[str]:
    cells = [list(_TABLE)] + [[_cell(r[k]) for k in _TABLE] for r in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(_TABLE))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
            for row in cells]


class StatusCommand(Command):
    """Show a study: trials by state, best so far, running trials, and a trial table."""

    name = "status"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p)
        add_store_options(p)
        p.add_argument("--json", action="store_true", help="print JSON")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.results import status_summary

        ref = StoreRef.from_args(args)
        study = load_study(ref, args.study)
        s = status_summary(study)
        rows = trial_rows(study)
        if args.json:
            print(json.dumps({**s, "trials": rows}, indent=2))
            return 0
        counts = ", ".join(f"{k.lower()} {v}" for k, v in s["counts"].items() if v)
        counts = counts or "no trials"
        print(f"study {s['study']}: {s['finished']}/{s['target']} finished ({counts})")
        if s["best"]:
            b = s["best"]
            print(f"best: trial {b['number']} value {b['value']:.4f} ({b['backbone']})")
        for r in s["running"]:
            print(
                f"running: trial {r['number']} on {r['worker']} {r['device'] or ''} "
                f"({r['backbone']}, {r['epochs_reported']} epochs reported)"
            )
        for reason, n in s["fail_reasons"].items():
            print(f"failed: {n} x {reason}")
        for reason, n in s.get("pruned_reasons", {}).items():
            print(f"pruned: {n} x {reason}")
        if s.get("foreign"):
            print(f"other Optuna clients: {s['foreign']} trial(s) without a medauto config "
                  "(never selected)")
        if rows:
            print()
            print("\n".join(_table(rows)))
        print(next_hint(ref, study.study_name, ["best > best.yaml", "retrain"]))
        return 0


class BestCommand(Command):
    """Print the best trial's TrainConfig as YAML (ready for `medauto train --config`)."""

    name = "best"

    @classmethod
    def add_arguments(cls, p: argparse.ArgumentParser) -> None:
        add_study_option(p)
        add_store_options(p)
        p.add_argument("-o", "--output", help="write the YAML to this file instead of stdout")

    def take_action(self, args: argparse.Namespace) -> int:
        from medauto.results import best_config

        out = Path(args.output) if args.output else None
        if out is not None and not out.parent.is_dir():
            raise MedautoError(f"-o/--output: the folder {str(out.parent)!r} does not exist")
        text = best_config(load_study(StoreRef.from_args(args), args.study)).to_yaml()
        if out is not None:
            out.write_text(text)
        else:
            sys.stdout.write(text)
        return 0
