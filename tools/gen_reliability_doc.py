"""Generates docs/reliability.md from the fault-injection suite's own parametrization.

The tables are the ones the tests run: ``FAULTS`` of each ``tests/reliability/test_*.py``
module, ``BAD_INPUTS`` of ``test_bad_inputs.py``, the payload tables and
``COVERED_ELSEWHERE`` of ``test_security.py``; the test list comes from pytest's own
collection of ``tests/reliability``, of the backend-parametrized heartbeat suite and of
Optuna's storage suite as medauto runs it (``tests/medauto/storage``), whose strict
``xfail`` deviations are read from its ``DEVIATIONS``. Nothing in the document is typed by
hand, so it stays true as long as the suite passes.

Usage::

    python tools/gen_reliability_doc.py          # rewrite docs/reliability.md
    python tools/gen_reliability_doc.py --check  # exit 1 if the file is out of date
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUITE = REPO / "tests" / "reliability"
DOC = REPO / "docs" / "reliability.md"
STORAGE_TESTS = REPO / "tests" / "medauto" / "storage"
OPTUNA_SUITE = STORAGE_TESTS / "test_optuna_storage_suite.py"
HEARTBEAT_SUITE = STORAGE_TESTS / "test_heartbeat_contract.py"
FAULT_MODULES = (
    "test_killed_worker",
    "test_interrupt",
    "test_concurrency",
    "test_trial_faults",
    "test_memory",
    "test_foreign_clients",
    "test_seeds_and_names",
    "test_disk_full",
)


def _on_path() -> None:
    # as `python -m pytest` from the repo root has it
    for path in (str(SUITE), str(STORAGE_TESTS), str(REPO)):
        if path not in sys.path:
            sys.path.insert(0, path)


def _import(name: str) -> Any:
    _on_path()
    return importlib.import_module(name)


class _Collector:
    """A pytest plugin that records the collected items (node id, markers)."""

    def __init__(self) -> None:
        self.items: list[tuple[str, set[str]]] = []

    def pytest_collection_modifyitems(self, items: list[Any]) -> None:
        self.items = [(i.nodeid, {m.name for m in i.iter_markers()}) for i in items]


def collect(*paths: Path) -> list[tuple[str, set[str]]]:
    """Node ids and marker names of the tests pytest collects under ``paths`` (default:
    the reliability suite)."""
    import pytest

    _on_path()
    plugin = _Collector()
    saved = os.dup(1)  # keep pytest's listing out of our output (it writes to the fd)
    with tempfile.TemporaryFile("w+") as log:
        try:
            os.dup2(log.fileno(), 1)
            code = pytest.main(
                ["--collect-only", "-q", "-p", "no:cacheprovider", "--rootdir", str(REPO),
                 *(str(p) for p in paths or (SUITE,))],
                plugins=[plugin],
            )
        finally:
            sys.stdout.flush()
            os.dup2(saved, 1)
            os.close(saved)
        if code != 0:
            log.seek(0)
            raise SystemExit(f"{log.read()[-3000:]}\npytest could not collect "
                             f"{paths or SUITE} (exit {code})")
    return plugin.items


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _per_backend(items: list[tuple[str, set[str]]]) -> dict[str, list[str]]:
    """``backend -> test names`` from node ids ending in ``[...backend]``."""
    out: dict[str, list[str]] = {}
    for nodeid, _ in items:
        name, _, params = nodeid.split("::")[-1].partition("[")
        backend = params.rstrip("]").split("-")[0] if params else "-"
        out.setdefault(backend, []).append(name)
    return out


def render_storage(optuna_items: list[tuple[str, set[str]]],
                   heartbeat_items: list[tuple[str, set[str]]]) -> list[str]:
    """The sections on the heartbeat contract suite and Optuna's storage suite."""
    import optuna

    deviations = _import("test_optuna_storage_suite").DEVIATIONS
    out = [
        "",
        "## Heartbeat contract (every backend)",
        "",
        "One backend-parametrized suite (`tests/medauto/storage/test_heartbeat_contract.py`)",
        "enforces the contract of docs/distributed.md: medauto trials that beat and stopped,",
        "or never beat, are stale after the grace period; a plain Optuna client's trial only",
        "if it beat and stopped; retries start clean; the heartbeat stays out of",
        "`trials_dataframe()`; a worker SIGKILLed between `ask` and its first heartbeat does",
        "not hang the study.",
        "",
        "| storage | tests |",
        "| --- | --- |",
    ]
    for backend, names in sorted(_per_backend(heartbeat_items).items()):
        out.append(f"| {backend} | {len(names)} |")
    out += [
        "",
        "## Optuna's storage suite on medauto's storages",
        "",
        f"Optuna {optuna.__version__}'s own `StorageTestCase` (imported from the installed",
        "`optuna.testing.pytest_storages`, so it runs offline and matches the installed",
        "version) runs in CI against the storages `medauto.storage.open_storage` returns",
        "(`tests/medauto/storage/test_optuna_storage_suite.py`). No test is skipped; the",
        "deliberate deviations are strict `xfail`s (a deviation that starts passing fails CI).",
        "",
        "| storage | tests | pass | xfail (deviation) |",
        "| --- | --- | --- | --- |",
    ]
    for backend, names in sorted(_per_backend(optuna_items).items()):
        dev = sum(n in deviations for n in names)
        out.append(f"| {backend} | {len(names)} | {len(names) - dev} | {dev} |")
    out += ["", "Deviations:", ""]
    for name, reason in sorted(deviations.items()):
        out.append(f"- `{name}`: {_cell(reason)}.")
    return out


def render_foreign(faults: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """The section on plain Optuna clients sharing a medauto study."""
    out = [
        "",
        "## Foreign clients",
        "",
        "Trials that medauto did not create (a user's `study.tell`/`add_trial`, the `optuna`",
        "CLI, optuna-dashboard) are counted and left alone; results are chosen among medauto's",
        "own trials by one rule, `medauto.results.ranked_trials`.",
        "",
        "| check | storage | what must hold |",
        "| --- | --- | --- |",
    ]
    for _, f in faults:
        if f.get("kind") == "foreign":
            out.append(f"| {_cell(f['fault'])} | {', '.join(f['backends'])} | "
                       f"{_cell(f['expected'])} |")
    return out


def render(items: list[tuple[str, set[str]]],
           optuna_items: list[tuple[str, set[str]]] | None = None,
           heartbeat_items: list[tuple[str, set[str]]] | None = None) -> str:
    faults = [(m, f) for m in FAULT_MODULES for f in _import(m).FAULTS]
    bad = _import("test_bad_inputs").BAD_INPUTS
    sec = _import("test_security")
    survived = sum(len(f.get("backends", [None])) for _, f in faults)
    kinds = Counter(b.kind for b in bad)
    slow = sum("slow" in marks for _, marks in items)
    per_module = Counter(nodeid.split("::")[0].rsplit("/", 1)[-1] for nodeid, _ in items)

    out = [
        "# Reliability and security",
        "",
        "<!-- Generated by `python tools/gen_reliability_doc.py` from the parametrization of",
        "     tests/reliability/ (FAULTS, BAD_INPUTS and the security tables, plus pytest's",
        "     collection of the suite). Do not edit by hand: change the tests and re-run it;",
        "     `--check` fails when this file is out of date. -->",
        "",
        "A search that runs for hours on shared machines meets killed workers, full GPUs,",
        "broken files and typos. The fault-injection suite in `tests/reliability/` injects",
        "each of them into real `medauto` processes on real storages (SQLite files and a",
        "throwaway PostgreSQL server) on CPU, and checks that nothing is lost and that every",
        "failure explains itself.",
        "",
        "## Summary",
        "",
        f"- **{survived} faults survived** ({len(faults)} kinds, counted once per storage "
        "backend they are injected on).",
        f"- **{len(bad)} bad inputs tried** ({kinds['CLI']} through the CLI, {kinds['API']} "
        "through the Python API): each is refused with a named error and a message that "
        "says what to fix, and leaves every existing file and study byte-for-byte unchanged.",
        f"- **{len(sec.YAML_ENTRY_POINTS) + len(sec.PICKLE_PAYLOADS)} code-execution payloads "
        f"refused** ({len(sec.YAML_ENTRY_POINTS)} YAML entry points, "
        f"{len(sec.PICKLE_PAYLOADS)} crafted checkpoints); none ran.",
        f"- **{len(items)} tests** in {len(per_module)} modules ({slow} marked `slow`; they "
        "run in CI too).",
        "",
        "## Faults survived",
        "",
        "| module | fault | storage | what must hold |",
        "| --- | --- | --- | --- |",
    ]
    for module, f in faults:
        backends = ", ".join(f.get("backends", ["-"]))
        out.append(f"| `{module}` | {_cell(f['fault'])} | {backends} | {_cell(f['expected'])} |")

    out += [
        "",
        "How the faults are injected (test side only, no hook in the product): a child",
        "process runs the real `medauto.cli.main` after patching the training step to hang",
        "(`MEDAUTO_TEST_FAULT=stall`, so a trial is reliably mid-training when it is",
        "signalled or SIGKILLed); in-process tests patch `med_core.training._loop` (NaN/inf",
        "loss, `torch.OutOfMemoryError` in `TrainStep.forward`), register a backbone whose",
        "constructor raises, or damage `last.pt` before `medauto train --resume`.",
        "",
        "## Bad inputs tried",
        "",
        "| id | entry | input | expected | message contains |",
        "| --- | --- | --- | --- | --- |",
    ]
    for b in bad:
        expect = f"exit {b.expect}" if isinstance(b.expect, int) else f"`{b.expect.__name__}`"
        out.append(f"| `{b.id}` | {b.kind} | {_cell(b.what)} | {expect} | "
                   f"`{_cell(b.fragment)}` |")

    out += [
        "",
        "## Security",
        "",
        "- Passwords in storage and tracking URLs are redacted (`user:***@host`) in every log",
        "  line, CLI output, log file, MLflow param/tag, study/trial attribute and file a",
        "  search writes (a real search on PostgreSQL with the server's password in the URL,",
        "  grepped everywhere).",
        "- Every command (`create-study`, `search`, `worker`, `status`, `best`, `retrain`,",
        "  `report`, `export`, `predict`) keeps the storage password (in `$MEDAUTO_STORAGE`",
        "  and in `--storage`) and a tracking password (in `$MEDAUTO_TRACKING_URI`) out of",
        "  its output, its log records and every file it writes.",
        "- Checkpoints load with `torch.load(weights_only=True)`; crafted checkpoints refused "
        f"by `medauto train --resume`: {', '.join(f'`{p}`' for p in sec.PICKLE_PAYLOADS)}. A",
        "  static check keeps every `torch.load` in `med_core`/`medauto` on `weights_only=True`",
        "  and every YAML read on a safe loader.",
        "- YAML is loaded safely: a `!!python/object/apply` tag is refused at "
        f"{', '.join(f'`{e}`' for e in sec.YAML_ENTRY_POINTS)}.",
        "- Everything a search writes stays in its run directory; a study name full of `..`",
        "  and `/` is refused in one line (study names are names, not paths); MLflow's",
        "  artifact root of the default local store is `<run_dir>/mlartifacts`.",
    ]
    for what, ref in sec.COVERED_ELSEWHERE:
        out.append(f"- {what}: `{ref}`.")

    out += render_foreign(faults)
    out += render_storage(optuna_items or [], heartbeat_items or [])
    out += ["", "## The tests", "", "| module | tests |", "| --- | --- |"]
    for module, n in sorted(per_module.items()):
        out.append(f"| `{module}` | {n} |")
    out += [
        "",
        "Run them with `pytest tests/reliability` (a throwaway PostgreSQL server is started",
        "by the `postgres_server` fixture; the PostgreSQL tests are never skipped).",
        "",
    ]
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--check", action="store_true", help="exit 1 if the doc is out of date")
    args = p.parse_args(argv)
    text = render(collect(), collect(OPTUNA_SUITE), collect(HEARTBEAT_SUITE))
    if args.check:
        if not DOC.is_file() or DOC.read_text() != text:
            print(f"{DOC.relative_to(REPO)} is out of date: run "
                  "python tools/gen_reliability_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
