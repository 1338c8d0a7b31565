#!/usr/bin/env python
"""Gradient-checkpointing benchmark: memory saved vs. step time, per backbone family.

For one representative backbone per family (``get_backbone_cfg(name).family``) this runs a
full training step (forward, cross-entropy on a linear head, backward, SGD step; bf16
autocast on CUDA) with checkpointing off and with ``segments`` 1/2/4/8 (those
``<= cfg.max_segments``), at several batch sizes and input sizes (2D: 28 and 224 px; 3D:
28³ and 64³ volumes), and records

* peak device memory (``torch.cuda.max_memory_allocated`` over the timed steps);
* activation memory resident between forward and backward (``memory_allocated`` after
  the forward pass minus before it; CUDA only);
* bytes of tensors saved for backward, counted with
  ``torch.autograd.graph.saved_tensors_hooks`` (works on CPU too);
* median step time (CUDA events) and the host time to issue a step;
* the largest batch that fits under ``--mem-cap-gib`` with and without checkpointing
  (binary search under ``torch.cuda.set_per_process_memory_fraction``, OOM caught).

It proposes each family's default ``segments`` by the rule "at least 50 % of activation
memory saved for at most 35 % more step time; among those, the least overhead", writes
Markdown tables + one plot + raw JSON, and stops starting new work at ``--time-limit``.

Diagnosis: ``--profile FAMILY[,FAMILY]`` runs ``torch.profiler`` on steps with and
without checkpointing (top ops by device time, kernel launches per step, GPU busy share);
``--ablate`` times checkpoint options the backbone API does not expose (RNG-state
preservation, determinism check, BatchNorm-statistics restore, not checkpointing the last
group) through a script-side runner: the public ``forward_stem`` / ``units`` /
``forward_head`` steps around the library's own checkpoint loop
(``med_core.backbones.run_units``), called with those options.

Peak report: ``--peak-report`` measures what a user feels instead of the sweep: per
family at the reference input, checkpointing off, at each ``--budgets`` memory budget and
at the family default, the step time, the peak at the batch and at twice it, the largest
batch under the cap that this predicts and, for off and default, the largest batch
verified in child processes and the images/s there (``benchmarks/_gc_peak.py``);
``--snapshot-dir`` adds a CUDA memory snapshot of one step of off and default with what
is live at the peak (``benchmarks/_gc_snapshot.py``). ``--render-from`` merges the JSONs
of several runs (the families split over calls) into one report; ``--propose-defaults``
turns them into ``FAMILY_DEFAULTS`` budgets.

CPU smoke run (a few seconds)::

    python benchmarks/gradient_checkpointing.py --device cpu --sizes 28 --batch-sizes 2 \
        --families resnet --segments off,2

See ``--help`` and ``docs/benchmarks/gradient_checkpointing.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import faulthandler
import json
import os
import sys
import traceback
from collections.abc import Callable
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # run as a script: make `benchmarks` and `med_core` importable
    sys.path.insert(0, str(_REPO))

import torch  # noqa: E402

from benchmarks._common import Deadline  # noqa: E402
from benchmarks._common import command_line  # noqa: E402
from benchmarks._common import environment  # noqa: E402
from benchmarks._common import fmt  # noqa: E402
from benchmarks._common import is_fatal_device_error  # noqa: E402
from benchmarks._common import is_oom  # noqa: E402
from benchmarks._common import log  # noqa: E402
from benchmarks._common import markdown_table  # noqa: E402
from benchmarks._common import release_device_memory  # noqa: E402
from benchmarks._common import time_steps  # noqa: E402
from benchmarks._common import write_json  # noqa: E402
from benchmarks._common import write_text  # noqa: E402
from benchmarks._gc_analysis import _resolve_segments  # noqa: E402
from benchmarks._gc_analysis import add_relative  # noqa: E402
from benchmarks._gc_analysis import merge_peak_runs  # noqa: E402
from benchmarks._gc_analysis import propose_budget_defaults  # noqa: E402
from benchmarks._gc_analysis import propose_defaults  # noqa: E402
from benchmarks._gc_analysis import summarize  # noqa: E402
from benchmarks._gc_analysis import write_plot  # noqa: E402
from benchmarks._gc_measure import ABLATIONS  # noqa: E402
from benchmarks._gc_measure import REPRESENTATIVES  # noqa: E402
from benchmarks._gc_measure import CkptOptions  # noqa: E402
from benchmarks._gc_measure import Run  # noqa: E402
from benchmarks._gc_measure import Sweep  # noqa: E402
from benchmarks._gc_measure import _first_line  # noqa: E402
from benchmarks._gc_measure import _probe_worker_main  # noqa: E402
from benchmarks._gc_measure import _size_label  # noqa: E402
from benchmarks._gc_peak import run_peak_report  # noqa: E402
from benchmarks._gc_profile import profile_steps  # noqa: E402
from benchmarks._gc_render import _ablation_table  # noqa: E402
from benchmarks._gc_render import _print_profile_console  # noqa: E402
from benchmarks._gc_render import render_markdown  # noqa: E402
from benchmarks._gc_render import render_peak_markdown  # noqa: E402
from med_core.backbones import get_backbone_cfg  # noqa: E402
from med_core.backbones import list_backbones  # noqa: E402

DEFAULT_OUT = "docs/benchmarks/gradient_checkpointing.md"


DEFAULT_PROFILE_OUT = "docs/benchmarks/gradient_checkpointing_profile.md"


DEFAULT_PEAK_OUT = "docs/benchmarks/gradient_checkpointing_peak.md"


# ============================================================================ CLI
def _csv(s: str) -> list[str]:
    return [t.strip() for t in s.split(",") if t.strip()]


def _int_csv(s: str) -> list[int]:
    try:
        vals = [int(t) for t in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {s!r}")
    return vals


def _budget_csv(s: str) -> list[float]:
    try:
        vals = [float(t) for t in _csv(s)]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None
    if not vals or any(not 0 < v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"memory budgets lie in (0, 1), got {s!r}")
    return vals


def _segments_csv(s: str) -> list[str]:
    toks = _csv(s)
    for t in toks:
        if t not in ("off", "max", "default", "proposed", "none") and not (
            t.isdigit() and int(t) > 0
        ):
            raise argparse.ArgumentTypeError(
                f"segments tokens are off, max, default, proposed or integers > 0; got {t!r}"
            )
    if not toks:
        raise argparse.ArgumentTypeError("no segments given")
    return toks


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="benchmarks/gradient_checkpointing.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    g = p.add_argument_group("what to run")
    g.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    g.add_argument("--families", default="all", help="'all' or a comma list of families")
    g.add_argument(
        "--backbone",
        action="append",
        default=[],
        metavar="FAMILY=NAME",
        help="override a family's representative (repeatable)",
    )
    g.add_argument("--sizes", type=_int_csv, default=[28, 224], help="2D input sizes (square)")
    g.add_argument("--sizes-3d", type=_int_csv, default=[28, 64], help="3D input sizes (cubes)")
    g.add_argument("--batch-sizes", type=_int_csv, default=[32, 64, 128], help="2D batch sizes")
    g.add_argument("--batch-sizes-3d", type=_int_csv, default=[8, 16, 32], help="3D batch sizes")
    g.add_argument(
        "--segments",
        type=_segments_csv,
        default=["off", "1", "2", "4", "8"],
        help="tokens: off, integers (skipped above a family's max_segments), max, default",
    )
    g.add_argument(
        "--dtype",
        choices=["bf16", "fp32"],
        default=None,
        help="bf16 autocast (CUDA default) or fp32 (CPU: always fp32)",
    )
    g.add_argument("--in-chans", type=int, default=3)
    g.add_argument(
        "--channels-last", action="store_true", help="2D models and inputs in channels_last"
    )
    g.add_argument("--cudnn-benchmark", action="store_true")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument(
        "--rule-metric",
        choices=["auto", "act", "saved", "peak"],
        default="auto",
        help="memory measure for the rule; auto = act on CUDA, saved on CPU",
    )
    g.add_argument(
        "--rule-batch", type=int, default=None, help="2D reference batch (default: middle)"
    )
    g.add_argument(
        "--rule-batch-3d", type=int, default=None, help="3D reference batch (default: middle)"
    )
    g.add_argument(
        "--no-repeat-off",
        dest="repeat_off",
        action="store_false",
        help="skip re-measuring 'off' after each family's reference rows (noise estimate)",
    )
    g.add_argument(
        "--no-forward-timing",
        dest="forward_timing",
        action="store_false",
        help="skip timing forward+loss alone for 'off' rows (the 1-extra-fwd column)",
    )

    g = p.add_argument_group("timing and limits")
    g.add_argument("--warmup", type=int, default=2)
    g.add_argument("--repeats", type=int, default=10)
    g.add_argument(
        "--max-config-seconds",
        type=float,
        default=3.0,
        help="stop timing a configuration after this many seconds (>= 3 samples)",
    )
    g.add_argument(
        "--time-limit",
        type=float,
        default=480.0,
        help="start no new configuration after this many seconds; the rest is 'skipped'",
    )
    g.add_argument(
        "--watchdog-grace",
        type=float,
        default=60.0,
        help="hard-exit this many seconds after the time limit (0: off); results are "
        "flushed after every configuration",
    )
    g.add_argument("--mem-cap-gib", type=float, default=20.0)
    g.add_argument(
        "--no-max-batch",
        dest="max_batch",
        action="store_false",
        help="skip the largest-batch search",
    )
    g.add_argument("--max-batch-limit", type=int, default=4096)
    g.add_argument(
        "--max-batch-families",
        default="all",
        help="'all' or a comma list of families for the largest-batch search",
    )
    g.add_argument("--max-batch-seconds", type=float, default=15.0, help="per search")

    g = p.add_argument_group("checkpoint options (script-side runner; default = the library path)")
    g.add_argument(
        "--preserve-rng", dest="preserve_rng", action=argparse.BooleanOptionalAction, default=True
    )
    g.add_argument("--determinism-check", choices=["default", "none"], default="default")
    g.add_argument(
        "--norm-stats",
        choices=["freeze", "restore", "update"],
        default="freeze",
        help="BatchNorm running stats during recomputation: freeze (library: momentum=0, "
        "count detached), restore (the old library: clone + copy back), update (unprotected)",
    )
    g.add_argument(
        "--skip-last",
        action="store_true",
        help="keep the last group un-checkpointed in every row (the library's keep_last=True)",
    )

    g = p.add_argument_group("diagnosis")
    g.add_argument(
        "--profile",
        type=_csv,
        default=None,
        metavar="FAMILY[,FAMILY]",
        help="profile mode: torch.profiler on steps off vs. checkpointed (no sweep)",
    )
    g.add_argument("--profile-segments", type=_segments_csv, default=["default", "max"])
    g.add_argument("--profile-steps", type=int, default=2)
    g.add_argument("--profile-top", type=int, default=12)
    g.add_argument("--trace-dir", type=Path, default=None, help="also export Chrome traces here")
    g.add_argument(
        "--ablate",
        action="store_true",
        help="time checkpoint-option variants at each family's reference config",
    )
    g.add_argument("--ablate-segments", type=_segments_csv, default=["default", "max"])
    g.add_argument(
        "--keep-last-segments",
        type=_segments_csv,
        default=["2", "4", "8"],
        help="at the reference config also measure these segments with keep_last=True "
        "(the last group un-checkpointed); 'none' for no such rows",
    )
    g.add_argument(
        "--propose-defaults",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="print the FAMILY_DEFAULTS table of med_core/backbones/_checkpointing.py that "
        "a results JSON proposes (peak-report JSONs: memory budgets, several merged), and "
        "exit (no measurement)",
    )

    g = p.add_argument_group("peak report (what a user feels: peak, largest batch, img/s)")
    g.add_argument(
        "--peak-report",
        action="store_true",
        help="per family at the reference input: off, each --budgets value and default; "
        "step time, peak at the batch and at 2x, predicted and (off, default) verified "
        f"largest batch, img/s at it (no sweep; default --out {DEFAULT_PEAK_OUT})",
    )
    g.add_argument(
        "--budgets", type=_budget_csv, default=[0.3, 0.4, 0.5], help="memory budgets to measure"
    )
    g.add_argument(
        "--peak-extra",
        type=_csv,
        default=["default+selective", "default+offload"],
        help="more settings to measure (not verified): a budget or 'default' with "
        "+selective and/or +offload",
    )
    g.add_argument(
        "--snapshot-dir",
        type=Path,
        default=None,
        help="also record one step of off and default per family with the CUDA memory "
        "history: snapshot pickles, PNG timelines and what is live at the peak",
    )
    g.add_argument("--snapshot-max-entries", type=int, default=500_000)
    g.add_argument("--snapshot-top", type=int, default=8, help="rows per peak table")
    g.add_argument(
        "--render-from",
        type=Path,
        nargs="+",
        default=None,
        metavar="JSON",
        help="write the peak report of these peak-report JSONs (merged, e.g. the two halves "
        "of the families) to --out, and exit (no measurement)",
    )
    g.add_argument("--probe-worker", default=None, help=argparse.SUPPRESS)

    g = p.add_argument_group("output")
    g.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"Markdown report (default {DEFAULT_OUT}; profile mode {DEFAULT_PROFILE_OUT})",
    )
    g.add_argument(
        "--plot", type=Path, default=None, help="PNG plot (default: the report's path with .png)"
    )
    g.add_argument("--no-plot", dest="make_plot", action="store_false")
    g.add_argument("--json", type=Path, default=None, help="raw results as JSON")
    return p


def _plan(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(family, representative) pairs: ``REPRESENTATIVES`` order, then any other registered
    family (its first name); ``--backbone FAMILY=NAME`` overrides; ``--families`` filters."""
    registered: dict[str, list[str]] = {}
    for name in list_backbones():
        registered.setdefault(get_backbone_cfg(name).family, []).append(name)
    registered.pop("timm", None)
    families: dict[str, str] = {}
    for fam, rep in REPRESENTATIVES.items():
        if fam in registered:
            families[fam] = rep if rep in registered[fam] else registered[fam][0]
    for fam, names in registered.items():
        families.setdefault(fam, names[0])
    for ov in args.backbone:
        fam, sep, name = ov.partition("=")
        if not sep or not name:
            raise SystemExit(f"--backbone expects FAMILY=NAME, got {ov!r}")
        got = get_backbone_cfg(name).family
        if got != fam:
            raise SystemExit(f"--backbone {ov}: {name} belongs to family {got!r}, not {fam!r}")
        families[fam] = name
    wanted = list(families) if args.families == "all" else _csv(args.families)
    unknown = [f for f in wanted if f not in families]
    if unknown:
        raise SystemExit(f"unknown families {unknown}; known: {', '.join(families)}")
    return [(f, families[f]) for f in families if f in wanted]


def _grid_tier(
    tier: str,
    ref_size: tuple[int, ...],
    ref_batch: int,
    sizes: list[tuple[int, ...]],
    batches: list[int],
) -> list[tuple[tuple[int, ...], int]]:
    """(size, batch) pairs of one tier of the grid after the reference configuration."""
    other_sizes = [s for s in sorted(sizes) if s != ref_size]
    other_batches = [b for b in sorted(batches) if b != ref_batch]
    if tier == "a":
        return [(s, ref_batch) for s in other_sizes]
    if tier == "b":
        return [(ref_size, b) for b in other_batches]
    return [(s, b) for s in other_sizes for b in other_batches]


def _ref(values: list[int], explicit: int | None) -> int:
    """The reference batch: ``explicit`` or the middle value (lower middle for even counts)."""
    if explicit is not None:
        return explicit
    vs = sorted(values)
    return vs[(len(vs) - 1) // 2]


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    if args.probe_worker is not None:
        return _probe_worker_main(args.probe_worker)
    if args.propose_defaults is not None:
        datas = [json.loads(f.read_text(encoding="utf-8")) for f in args.propose_defaults]
        if any(d.get("peak") for d in datas):
            print(propose_budget_defaults(merge_peak_runs(datas)))
        elif len(datas) == 1:
            print(propose_defaults(datas[0]))
        else:
            raise SystemExit("--propose-defaults: several JSONs only for peak reports")
        return 0
    if args.render_from is not None:
        data = merge_peak_runs(
            [json.loads(f.read_text(encoding="utf-8")) for f in args.render_from]
        )
        out = args.out or Path(DEFAULT_PEAK_OUT)
        snap_dir = args.snapshot_dir or data["args"].get("snapshot_dir")
        write_text(out, render_peak_markdown(data, _link_dir(snap_dir, out)) + "\n")
        if args.json:
            write_json(args.json, data)
        print(f"report: {out}")
        return 0
    plan = _plan(args)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch.cuda.is_available() is False")
    if device.type == "cuda" and device.index is None:  # torch.cuda.* wants an index
        device = torch.device("cuda", torch.cuda.current_device())
    if device.type not in ("cuda", "cpu"):
        raise SystemExit(f"unsupported device {args.device!r}")
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(device)
    dtype = args.dtype or ("bf16" if cuda else "fp32")
    notes: list[str] = []
    if not cuda and dtype == "bf16":
        notes.append("--dtype bf16 ignored on CPU: the CPU run uses fp32 (no autocast).")
        dtype = "fp32"
    args.amp_dtype = torch.bfloat16 if dtype == "bf16" else None
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)
    rule_metric = args.rule_metric if args.rule_metric != "auto" else ("act" if cuda else "saved")
    if not cuda and rule_metric in ("act", "peak"):
        notes.append(
            f"--rule-metric {rule_metric} is unavailable on CPU; using saved-for-backward bytes."
        )
        rule_metric = "saved"
    options = CkptOptions(
        preserve_rng_state=args.preserve_rng,
        determinism_check=args.determinism_check,
        norm_stats=args.norm_stats,
        skip_last=args.skip_last,
    )
    profile_mode = args.profile is not None
    peak_mode = args.peak_report and not profile_mode
    out = args.out or Path(
        DEFAULT_PROFILE_OUT if profile_mode else DEFAULT_PEAK_OUT if peak_mode else DEFAULT_OUT
    )
    sweep_plot = args.make_plot and not profile_mode and not peak_mode
    plot = (args.plot or out.with_suffix(".png")) if sweep_plot else None

    limited = args.time_limit is not None and args.time_limit > 0
    deadline = Deadline(args.time_limit if limited else None)
    if limited and args.watchdog_grace > 0:
        faulthandler.dump_traceback_later(args.time_limit + args.watchdog_grace, exit=True)
    command = command_line(__file__, argv)
    log(f"$ {command}")
    env = environment(device)
    arg_record = {
        k: (str(v) if isinstance(v, (Path, torch.dtype)) else v) for k, v in vars(args).items()
    }
    arg_record["variant"] = options.label()
    run = Run(
        command=command,
        env=env,
        args=arg_record,
        device=device.type,
        dtype=dtype,
        rule_metric=rule_metric,
        notes=notes,
    )
    if not options.uses_library:
        run.notes.append(
            f"Checkpoint variant `{options.label()}` (script-side runner), not the library path."
        )
    plot_rel: str | None = None
    if plot is not None:
        try:
            plot_rel = str(Path(plot).resolve().relative_to(out.resolve().parent))
        except ValueError:
            plot_rel = str(Path(plot).resolve())

    def flush(final: bool = False) -> None:
        run.elapsed_s = deadline.elapsed()
        add_relative(run.results, rule_metric)
        add_relative(run.ablation, rule_metric)
        if final and plot is not None and run.summary:
            err = write_plot(run, plot)
            if err:
                run.notes.append(err)
        if peak_mode:
            md = render_peak_markdown(run.to_json(), _link_dir(args.snapshot_dir, out))
        else:
            md = render_markdown(
                run, plot_rel if (plot is not None and Path(plot).exists()) else None
            )
        write_text(out, md + "\n")
        if args.json:
            write_json(args.json, run.to_json())

    sweep = Sweep(args, run, device, deadline)

    def ref_of(name: str) -> tuple[tuple[int, ...], int, list[tuple[int, ...]], list[int]]:
        cfg = get_backbone_cfg(name)
        if cfg.spatial_dims == 3:
            sizes: list[tuple[int, ...]] = [(s, s, s) for s in args.sizes_3d]
            batches = list(args.batch_sizes_3d)
            rb = _ref(batches, args.rule_batch_3d)
        else:
            sizes = [(s, s) for s in args.sizes]
            batches = list(args.batch_sizes)
            rb = _ref(batches, args.rule_batch)
        return max(sizes), rb, sizes, batches

    def record(row: dict[str, Any], target: list[dict[str, Any]]) -> None:
        target.append(row)
        if row["status"] == "ok":
            add_relative(target, rule_metric)
            log(
                f"[{deadline.elapsed():6.1f}s] {row['family']:15s} {row['backbone']:18s} "
                f"{_size_label(row['size']):>5s} b{row['batch']:<4d} "
                f"seg={row['segments_label']:<16s} "
                f"{row['variant']:>10s}: {row['step_ms']:8.2f} ms (host {row['host_ms']:.2f}) "
                f"saved {fmt(row.get('saved_mib'), 1)} MiB act {fmt(row.get('act_mib'), 0)} MiB "
                f"peak {fmt(row.get('peak_mib'), 0)} MiB  "
                f"mem saved {fmt(row.get('mem_saved_pct'), 0)} % "
                f"overhead {fmt(row.get('overhead_pct'), 0)} %"
            )
        elif row["status"] != "skipped":
            log(
                f"[{deadline.elapsed():6.1f}s] {row['family']} {row['backbone']} "
                f"{_size_label(row['size'])} "
                f"b{row['batch']} seg={row['segments_label']}: {row['status']} {row['reason']}"
            )
        flush()

    fam_plan = []
    try:
        if profile_mode:
            _run_profile_mode(args, run, sweep, plan, ref_of, record, flush, cuda)
        elif peak_mode:
            run_peak_report(args, run, sweep, plan, ref_of, flush)
        else:
            # phase 1: the reference configuration of every family (sets the defaults)
            for fam, name in plan:
                size, rb, _, _ = ref_of(name)
                fam_plan.append((fam, name, size, rb))
                for k in _resolve_segments(args.segments, get_backbone_cfg(name)):
                    record(
                        sweep.measure(
                            fam,
                            name,
                            size,
                            rb,
                            k,
                            options,
                            phase="ref",
                            time_forward=args.forward_timing,
                        ),
                        run.results,
                    )
                keep_last = dataclasses.replace(options, skip_last=True)
                for k in _resolve_segments(args.keep_last_segments, get_backbone_cfg(name)):
                    if k >= 2:  # keep_last needs two groups
                        row = sweep.measure(fam, name, size, rb, k, keep_last, phase="ref")
                        record(row, run.results)
                if args.repeat_off:  # the same "off" step again: the noise floor of overhead %
                    row = sweep.measure(fam, name, size, rb, 0, options, phase="repeat")
                    record(row, run.results)
            summarize(run, fam_plan)
            flush()
            # optional: ablation at the reference configuration
            if args.ablate:
                _run_ablation(args, run, sweep, plan, ref_of, record)
            # phase 2: largest batch under the cap (CUDA only)
            if args.max_batch and cuda:
                mb_fams = (
                    None if args.max_batch_families == "all" else _csv(args.max_batch_families)
                )
                for fam, name in plan:
                    if mb_fams is not None and fam not in mb_fams:
                        continue
                    size, rb, _, _ = ref_of(name)
                    s = next(e for e in run.summary if e["backbone"] == name)
                    k = int(s["proposed"] or 0)
                    kl = bool(s["proposed_keep_last"]) if s["proposed"] else False
                    for seg in (0, k):
                        rec = sweep.max_batch(fam, name, size, seg, rb, keep_last=kl and seg > 0)
                        rec["segments_source"] = (
                            "off"
                            if seg == 0
                            else "proposed"
                            if s["proposed"]
                            else "library default"
                        )
                        run.max_batch.append(rec)
                        flush()
            elif args.max_batch and not cuda:
                run.notes.append(
                    "Largest-batch search skipped: it needs CUDA (OOM under a memory cap)."
                )
            # phase 3: the rest of the grid, in tiers so that a time limit cuts the least
            # useful rows: (a) the other sizes (28 px: the MedMNIST case) at the reference
            # batch, (b) the other batches at the reference size, (c) everything else
            for tier in ("a", "b", "c"):
                for fam, name in plan:
                    for size, b in _grid_tier(tier, *ref_of(name)):
                        for k in _resolve_segments(args.segments, get_backbone_cfg(name)):
                            row = sweep.measure(
                                fam,
                                name,
                                size,
                                b,
                                k,
                                options,
                                phase="grid",
                                time_forward=args.forward_timing,
                            )
                            record(row, run.results)
            summarize(run, fam_plan)
        skipped = sum(
            r["status"] == "skipped"
            for r in run.results
            + run.ablation
            + run.max_batch
            + [s for e in run.peak for s in e["settings"] or [e]]
        )
        if sweep.fatal:
            run.status = f"aborted: device error ({sweep.fatal}); {skipped} configurations skipped"
        elif skipped:
            run.status = (
                f"stopped at the time limit ({args.time_limit:g} s): "
                f"{skipped} configurations skipped"
            )
        else:
            run.status = "complete"
    except KeyboardInterrupt:
        run.status = "interrupted"
        raise
    except BaseException as exc:  # a bug or a fatal error: keep what was measured, re-raise
        run.status = f"failed: {_first_line(exc)}"
        raise
    finally:
        sweep.drop_bench()
        if fam_plan:
            summarize(run, fam_plan)
        flush(final=True)
        faulthandler.cancel_dump_traceback_later()
    _print_console_summary(run, out, plot, args.json)
    return 0


def _run_ablation(
    args: argparse.Namespace,
    run: Run,
    sweep: Sweep,
    plan: list[tuple[str, str]],
    ref_of: Callable[[str], Any],
    record: Callable[..., None],
) -> None:
    for fam, name in plan:
        size, rb, _, _ = ref_of(name)
        cfg = get_backbone_cfg(name)
        chosen = next((s["proposed"] for s in run.summary if s["backbone"] == name), None)
        record(sweep.measure(fam, name, size, rb, 0, CkptOptions(), phase="ablation"), run.ablation)
        for k in _resolve_segments(args.ablate_segments, cfg, chosen):
            if k == 0:
                continue
            # the library path again at the end: the spread between its two runs is the
            # noise floor of the "Δ vs library" column
            for label, opt in [*ABLATIONS.items(), ("library (repeat)", CkptOptions())]:
                row = sweep.measure(fam, name, size, rb, k, opt, phase="ablation")
                row["variant"] = label
                record(row, run.ablation)


def _profile_setting(
    args: argparse.Namespace,
    sweep: Sweep,
    entry: dict[str, Any],
    fam: str,
    name: str,
    size: tuple[int, ...],
    batch: int,
    segments: int,
) -> None:
    """Times and profiles one checkpoint setting; appends to ``entry`` (errors recorded)."""
    failed: BaseException | None = None
    try:
        bench = sweep.bench(fam, name, size)
        features = bench.configure(segments, CkptOptions())
        x, y = bench.batch(batch)
        timing = time_steps(
            partial(bench.step, features, x, y),
            sweep.device,
            warmup=args.warmup,
            repeats=args.repeats,
            min_repeats=min(3, args.repeats),
            max_seconds=args.max_config_seconds,
            deadline=sweep.deadline,
        )
        trace = None
        if args.trace_dir:
            trace = args.trace_dir / f"{name}_{size[0]}_b{batch}_seg{segments}.json"
        prof = profile_steps(bench, features, x, y, args.profile_steps, trace)
        entry["settings"].append(
            {
                "segments": segments,
                "label": "off" if segments == 0 else f"seg {segments}",
                "step_ms": timing.median_ms,
                "host_ms": timing.host_ms,
                "prof": prof,
            }
        )
    except Exception as exc:  # recorded in the report; the other settings still run
        failed = exc
        oom = is_oom(exc)
        entry.setdefault("errors", []).append(
            f"seg {segments}: {'OOM: ' if oom else ''}{_first_line(exc)}"
        )
        if not oom:
            log("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
            if is_fatal_device_error(exc):
                sweep.fatal = _first_line(exc)
    finally:
        if sweep._bench is not None:
            sweep._bench.optimizer.zero_grad(set_to_none=True)
    if failed is not None:
        del failed
        release_device_memory(sweep.device, collect=True)
    else:
        release_device_memory(sweep.device)


def _run_profile_mode(
    args: argparse.Namespace,
    run: Run,
    sweep: Sweep,
    plan: list[tuple[str, str]],
    ref_of: Callable[[str], Any],
    record: Callable[..., None],
    flush: Callable[..., None],
    cuda: bool,
) -> None:
    fams = dict(plan)
    unknown = [f for f in args.profile if f not in fams]
    if unknown:
        raise SystemExit(
            f"--profile: unknown or unselected families {unknown}; known: {', '.join(fams)}"
        )
    for fam in args.profile:
        name = fams[fam]
        cfg = get_backbone_cfg(name)
        _, rb, sizes, _ = ref_of(name)
        for size in sorted(sizes):
            entry: dict[str, Any] = {
                "family": fam,
                "backbone": name,
                "size": list(size),
                "batch": rb,
                "settings": [],
            }
            run.profile.append(entry)
            if sweep.deadline.expired() or sweep.fatal:
                entry["reason"] = "time limit" if not sweep.fatal else sweep.fatal
                continue
            ks = [0] + [k for k in _resolve_segments(args.profile_segments, cfg) if k > 0]
            for k in ks:
                if sweep.deadline.expired() or sweep.fatal:
                    break
                _profile_setting(args, sweep, entry, fam, name, size, rb, k)
            _print_profile_console(entry, cuda, args.profile_top)
            flush()
    if args.ablate:
        _run_ablation(args, run, sweep, [(f, fams[f]) for f in args.profile], ref_of, record)


def _link_dir(snapshot_dir: str | Path | None, out: Path) -> str | None:
    """The snapshot folder as the report ``out`` links it (relative where it can be)."""
    if snapshot_dir is None:
        return None
    return os.path.relpath(Path(snapshot_dir).resolve(), out.resolve().parent)


def _print_console_summary(run: Run, out: Path, plot: Path | None, json_path: Path | None) -> None:
    print(f"\nstatus: {run.status}; {run.elapsed_s:.0f} s")
    if run.summary:
        rows = [
            [
                s["family"],
                s["backbone"],
                f"{_size_label(s['ref_size'])} b{s['ref_batch']}",
                s["library_default"],
                s["proposed_label"] if s["meets_rule"] else "none",
                fmt(s["mem_saved_pct"], 0),
                fmt(s["overhead_pct"], 0),
                fmt(s["one_fwd_pct"], 0),
                fmt(s.get("noise_pct"), 1),
                "" if s["meets_rule"] else s["why_not"][:90],
            ]
            for s in run.summary
        ]
        print(
            markdown_table(
                [
                    "family",
                    "backbone",
                    "ref",
                    "lib default",
                    "proposed",
                    "saved %",
                    "overhead %",
                    "1 fwd %",
                    "noise %",
                    "note",
                ],
                rows,
                align="lllrrrrrrl",
            )
        )
    if run.max_batch:
        rows = [
            [
                m["family"],
                _size_label(m["size"]),
                m["segments"] or "off",
                m.get("max_batch"),
                m.get("first_fail"),
                m["status"],
                m.get("reason", ""),
            ]
            for m in run.max_batch
        ]
        print(
            markdown_table(
                ["family", "size", "segments", "max batch", "fails at", "status", "note"],
                rows,
                align="llrrrll",
            )
        )
    if run.ablation:
        print(_ablation_table(run))
    for e in run.peak:
        d: dict[str, Any] = next((s for s in e["settings"] if s["setting"] == "default"), {})
        print(
            f"{e['family']:15s} {e['backbone']:18s} default plan {d.get('plan_label', '–')}: "
            f"{fmt(d.get('overhead_pct'), 0)} % time, peak {fmt(d.get('peak_change_pct'), 0)} %, "
            f"max batch ×{fmt(d.get('verified_gain') or d.get('predicted_gain'), 2)} → "
            f"{(e.get('verdict') or {}).get('text', e['status'])}"
        )
    bad = [r for r in run.results + run.ablation if r["status"] in ("OOM", "error")]
    if bad:
        print(f"{len(bad)} configurations OOM/error (see report).")
    print(
        f"report: {out}"
        + (f"; plot: {plot}" if plot else "")
        + (f"; json: {json_path}" if json_path else "")
    )


if __name__ == "__main__":
    sys.exit(main())
