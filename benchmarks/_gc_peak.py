"""The peak report of ``benchmarks/gradient_checkpointing.py --peak-report``: what a user
feels of checkpointing, per family, at the library's memory-budget settings.

For each family's representative at its reference input (2D 224² batch 64, 3D 64³
batch 16 by default) and each setting (``off``, every ``--budgets`` value, ``default``):

1. step time at the fixed batch (median after warm-up, CUDA events) and peak memory over
   those steps (``max_memory_allocated``, optimizer step included);
2. the peak at twice the batch, and from the two a per-sample cost and the predicted
   largest batch under ``--mem-cap-gib`` (:func:`~benchmarks._gc_analysis.predict_max_batch`);
3. for ``off`` and ``default`` (CUDA only): the verified largest batch, probed in child
   processes (:meth:`~benchmarks._gc_measure.Sweep.max_batch`) from 0.9× the prediction
   with steps of 1.1 / 0.9 (the second probe is 1.1×), bisected to within 5 %, and
   images/s at that batch;
4. with ``--snapshot-dir`` (CUDA only), ``off`` and ``default``: one step under the
   memory history (:mod:`benchmarks._gc_snapshot`), what is live at its peak and a PNG
   timeline.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from collections.abc import Sequence
from functools import partial
from typing import Any

import torch

from benchmarks._common import fmt
from benchmarks._common import log
from benchmarks._common import synchronize
from benchmarks._gc_analysis import add_peak_relative
from benchmarks._gc_analysis import peak_verdict
from benchmarks._gc_analysis import predict_max_batch
from benchmarks._gc_measure import MIB
from benchmarks._gc_measure import Bench
from benchmarks._gc_measure import Run
from benchmarks._gc_measure import Sweep
from benchmarks._gc_measure import _size_label
from benchmarks._gc_measure import time_steps_into
from benchmarks._gc_snapshot import record_step
from benchmarks._gc_snapshot import write_timeline_png

__all__ = ["BRACKET", "SEARCH_TOL", "peak_settings", "run_peak_report"]

#: The verified search starts at ``BRACKET[0]`` × the prediction and steps by
#: ``BRACKET[1] / BRACKET[0]``: the first two probes bracket the prediction.
BRACKET = (0.9, 1.1)
#: The verified search bisects until the gap is at most this share of the largest fit.
SEARCH_TOL = 0.05
#: The settings whose largest batch is verified and whose step is snapshotted.
VERIFIED = ("off", "default")


def peak_settings(budgets: Sequence[float], extra: Sequence[str] = ()) -> list[str]:
    """The settings of the report, in order: ``off``, each budget, ``default``, then each
    ``extra`` one (a setting with ``+selective`` / ``+offload``, e.g. ``default+selective``).

    Example:
        >>> peak_settings([0.3, 0.4], ["default+selective"])
        ['off', '0.3', '0.4', 'default', 'default+selective']
    """
    return ["off", *(f"{b:g}" for b in budgets), "default", *extra]


def _plan_label(plan: Any, units: int) -> str:
    """``"0–5, 5–9 of 16"``: the checkpointed unit ranges (``"none"`` when off)."""
    if not plan:
        return "none"
    return ", ".join(f"{lo}–{hi}" for lo, hi in plan) + f" of {units}"


def _measure_into(
    row: dict[str, Any],
    args: argparse.Namespace,
    sweep: Sweep,
    bench: Bench,
    batch: int,
    snapshot: Callable[[Bench, Any, torch.Tensor, torch.Tensor], None] | None,
) -> None:
    dev = sweep.device
    cuda = dev.type == "cuda"
    features = bench.configure_setting(row["setting"])
    row["budget"] = bench.backbone.checkpoint_memory_budget
    x, y = bench.batch(batch)
    step = partial(bench.step, features, x, y)
    for _ in range(max(1, args.warmup)):  # the first training forward measures the plan
        step()
    plan = bench.backbone.checkpoint_plan
    row["plan"] = [list(g) for g in plan] if plan else []
    row["plan_label"] = _plan_label(plan, len(bench.backbone.units()))
    if cuda:  # what stays between steps: the same in every setting (more would be a leak)
        synchronize(dev)
        row["resident_mib"] = torch.cuda.memory_allocated(dev) / MIB
        torch.cuda.reset_peak_memory_stats(dev)
    time_steps_into(row, step, batch, dev, args, sweep.deadline)
    row["peak_mib"] = torch.cuda.max_memory_allocated(dev) / MIB if cuda else None
    if snapshot is not None:  # a failed snapshot loses only itself
        snap: dict[str, Any] = {"status": "ok", "reason": ""}
        with sweep.guarded(snap):
            snapshot(bench, features, x, y)
        if snap["status"] != "ok":
            row["snapshot_error"] = f"{snap['status']}: {snap['reason']}"
    del x, y, step
    # twice the batch: one step for the new shape (its plan, its allocator blocks), one
    # measured; an OOM here only loses the prediction
    double: dict[str, Any] = {"status": "ok", "reason": ""}
    with sweep.guarded(double):
        x2, y2 = bench.batch(2 * batch)
        bench.step(features, x2, y2)
        if cuda:
            synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        bench.step(features, x2, y2)
        row["peak2_mib"] = torch.cuda.max_memory_allocated(dev) / MIB if cuda else None
    row["peak2_status"] = double["status"] + (f": {double['reason']}" if double["reason"] else "")
    row.update(
        predict_max_batch(batch, row["peak_mib"], row.get("peak2_mib"), args.mem_cap_gib * 1024)
    )


def _measure_setting(
    args: argparse.Namespace,
    sweep: Sweep,
    entry: dict[str, Any],
    setting: str,
    snapshot: Callable[[Bench, Any, torch.Tensor, torch.Tensor], None] | None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "setting": setting,
        "budget": None,
        "status": "ok",
        "reason": "",
        "peak_mib": None,
        "peak2_mib": None,
        "predicted_max_batch": None,
        "verified": None,
    }
    if sweep.fatal is not None or sweep.deadline.expired():
        row.update(status="skipped", reason=sweep.fatal or "time limit")
        return row
    t0 = time.perf_counter()
    with sweep.guarded(row):
        bench = sweep.bench(entry["family"], entry["backbone"], tuple(entry["size"]))
        _measure_into(row, args, sweep, bench, entry["batch"], snapshot)
    row["seconds"] = round(time.perf_counter() - t0, 2)
    return row


def _snapshotter(
    args: argparse.Namespace, entry: dict[str, Any], setting: str
) -> Callable[[Bench, Any, torch.Tensor, torch.Tensor], None]:
    """Records one step of ``setting`` into ``entry["snapshots"][setting]`` and draws its
    timeline (y axis shared with the family's earlier snapshot)."""

    def snap(bench: Bench, features: Any, x: torch.Tensor, y: torch.Tensor) -> None:
        stem = f"{entry['family']}_{setting}"
        res = record_step(
            bench,
            features,
            x,
            y,
            args.snapshot_dir / f"{stem}.pickle",
            max_entries=args.snapshot_max_entries,
            top=args.snapshot_top,
        )
        timeline = res.pop("timeline")
        ymax = max([res["peak_mib"], *(s["peak_mib"] for s in entry["snapshots"].values())])
        title = (
            f"{entry['backbone']} {_size_label(entry['size'])} b{entry['batch']}, "
            f"{setting}: allocated memory over one training step"
        )
        err = write_timeline_png({**res, "timeline": timeline}, args.snapshot_dir / f"{stem}.png",
                                 title, ymax)  # fmt: skip
        res["png"] = None if err else f"{stem}.png"
        if err:
            res["png_error"] = err
        entry["snapshots"][setting] = res
        log(
            f"  snapshot {entry['backbone']} {setting}: peak {res['peak_mib']:.0f} MiB "
            f"(measured {res['measured_peak_mib']:.0f}) in {res['peak_phase']} "
            f"{res['peak_unit']}; top: {res['by_category'][0]['label']}"
        )

    return snap


def run_peak_report(
    args: argparse.Namespace,
    run: Run,
    sweep: Sweep,
    plan: list[tuple[str, str]],
    ref_of: Callable[[str], Any],
    flush: Callable[[], None],
) -> None:
    """Measures every family of ``plan`` into ``run.peak`` (one entry per family), flushing
    after each setting and probe search; stops starting work at the deadline."""
    cuda = sweep.device.type == "cuda"
    settings = peak_settings(args.budgets, args.peak_extra)
    if not cuda:
        run.notes.append(
            "CPU run: no device memory, so no peak, no prediction, no verified largest batch "
            "and no snapshot; only step times (and the plans) are measured."
        )
    elif args.snapshot_dir is None:
        run.notes.append("No memory snapshots (run with --snapshot-dir DIR for them).")
    for fam, name in plan:
        size, batch, _, _ = ref_of(name)
        entry: dict[str, Any] = {
            "family": fam,
            "backbone": name,
            "size": list(size),
            "batch": batch,
            "cap_gib": args.mem_cap_gib,
            "settings": [],
            "snapshots": {},
            "status": "ok",
            "reason": "",
        }
        run.peak.append(entry)
        if sweep.fatal is not None or sweep.deadline.expired():
            entry.update(status="skipped", reason=sweep.fatal or "time limit")
            flush()
            continue
        for setting in settings:
            snap = (
                _snapshotter(args, entry, setting)
                if cuda and args.snapshot_dir is not None and setting in VERIFIED
                else None
            )
            row = _measure_setting(args, sweep, entry, setting, snap)
            entry["settings"].append(row)
            add_peak_relative(entry)
            log(
                f"[{sweep.deadline.elapsed():6.1f}s] {fam:15s} {name:18s} {setting:>7s}: "
                f"{row['status']} {row['reason']} step {fmt(row.get('step_ms'))} ms "
                f"({fmt(row.get('overhead_pct'), 0)} %) peak {fmt(row.get('peak_mib'), 0)} MiB "
                f"/ 2× {fmt(row.get('peak2_mib'), 0)} MiB → max b "
                f"{fmt(row.get('predicted_max_batch'))} plan {row.get('plan_label', '–')}"
            )
            flush()
        if cuda and args.max_batch:
            for row in entry["settings"]:
                if row["setting"] not in VERIFIED or row["status"] != "ok":
                    continue
                pred = row.get("predicted_max_batch")
                start = round(BRACKET[0] * pred) if pred else entry["batch"]
                row["verified"] = sweep.max_batch(
                    fam,
                    name,
                    size,
                    0,
                    start,
                    setting=row["setting"],
                    factor=BRACKET[1] / BRACKET[0] if pred else 2.0,
                    tol=SEARCH_TOL,
                )
                add_peak_relative(entry)
                flush()
        sweep.drop_bench()
        if any(r["status"] == "skipped" for r in entry["settings"]):
            entry.update(status="partial", reason="time limit")
        entry["verdict"] = peak_verdict(entry)
        flush()
