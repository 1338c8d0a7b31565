"""The rule that proposes each family's default ``segments`` from the measurements, and the
plot of memory saved against step time; for the peak report, the largest batch predicted
from two peaks, the verdict against the issue's targets and the proposed memory budgets.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from benchmarks._gc_measure import RULE_MAX_OVERHEAD_PCT
from benchmarks._gc_measure import RULE_MIN_SAVED_PCT
from benchmarks._gc_measure import Run
from benchmarks._gc_measure import _pct_more
from benchmarks._gc_measure import _pct_saved
from benchmarks._gc_measure import _size_label
from med_core.backbones import get_backbone_cfg

__all__ = [
    "TARGET_BATCH_GAIN",
    "TARGET_MAX_OVERHEAD_PCT",
    "TARGET_PEAK_CHANGE_PCT",
    "add_peak_relative",
    "add_relative",
    "choose",
    "choose_budget",
    "meets_rule",
    "merge_peak_runs",
    "peak_verdict",
    "predict_max_batch",
    "propose_budget_defaults",
    "propose_defaults",
    "summarize",
    "write_plot",
]


# ============================================================================ analysis
def add_relative(rows: list[dict[str, Any]], metric: str) -> None:
    """Fills memory-saved and overhead percentages of each row relative to its "off" row
    (same backbone, size, batch, variant group)."""
    off_rows = {
        (r["backbone"], tuple(r["size"]), r["batch"], r["phase"] == "ablation"): r
        for r in rows
        if r["status"] == "ok" and r["segments"] == 0 and r["phase"] != "repeat"
    }
    for r in rows:
        if r["status"] != "ok":
            continue
        off = off_rows.get((r["backbone"], tuple(r["size"]), r["batch"], r["phase"] == "ablation"))
        if off is None:
            for k in (
                "act_saved_pct",
                "saved_saved_pct",
                "peak_saved_pct",
                "mem_saved_pct",
                "overhead_pct",
            ):
                r[k] = None
            continue
        r["act_saved_pct"] = _pct_saved(off.get("act_mib"), r.get("act_mib"))
        r["saved_saved_pct"] = _pct_saved(off.get("saved_mib"), r.get("saved_mib"))
        r["peak_saved_pct"] = _pct_saved(off.get("peak_mib"), r.get("peak_mib"))
        r["mem_saved_pct"] = (
            r["act_saved_pct"]
            if metric == "act"
            else (r["peak_saved_pct"] if metric == "peak" else r["saved_saved_pct"])
        )
        r["overhead_pct"] = _pct_more(off.get("step_ms"), r.get("step_ms"))
        r["one_fwd_pct_ref"] = off.get("one_fwd_pct")


def meets_rule(r: dict[str, Any]) -> bool:
    s, o = r.get("mem_saved_pct"), r.get("overhead_pct")
    return (
        s is not None and o is not None and s >= RULE_MIN_SAVED_PCT and o <= RULE_MAX_OVERHEAD_PCT
    )


def choose(
    rows: list[dict[str, Any]], noise_pct: float | None = None
) -> tuple[dict[str, Any] | None, str]:
    """The rule's choice among checkpointed rows of one (backbone, size, batch).

    Among the rows meeting the rule, the least overhead; rows whose overhead is within
    ``noise_pct`` (the run's measured noise) of that minimum count as tied, and the tie
    goes to the larger memory saving.
    """
    cands = [r for r in rows if r["segments"] > 0 and r["status"] == "ok"]
    if not cands:
        return None, "no checkpointed measurement"
    good = [r for r in cands if meets_rule(r)]
    if good:
        least = min(r["overhead_pct"] for r in good)
        tied = [r for r in good if r["overhead_pct"] <= least + (noise_pct or 0.0)]
        return max(tied, key=lambda r: (r["mem_saved_pct"], -r["overhead_pct"])), ""
    measurable = [
        r for r in cands if r.get("mem_saved_pct") is not None and r.get("overhead_pct") is not None
    ]
    if not measurable:
        return None, "no baseline (off) measurement"
    cheap = [r for r in measurable if r["overhead_pct"] <= RULE_MAX_OVERHEAD_PCT]
    big = [r for r in measurable if r["mem_saved_pct"] >= RULE_MIN_SAVED_PCT]
    parts = []
    if cheap:
        best = max(cheap, key=lambda r: r["mem_saved_pct"])
        parts.append(
            f"within {RULE_MAX_OVERHEAD_PCT:.0f} % time at most {best['mem_saved_pct']:.0f} % "
            f"saved (segments={best['segments']})"
        )
    if big:
        best = min(big, key=lambda r: r["overhead_pct"])
        parts.append(
            f"≥ {RULE_MIN_SAVED_PCT:.0f} % saved costs at least {best['overhead_pct']:.0f} % "
            f"time (segments={best['segments']})"
        )
    if not parts:
        parts.append("no setting saves 50 % or stays within 35 %")
    return None, "; ".join(parts)


def summarize(run: Run, fam_plan: list[tuple[str, str, tuple[int, ...], int]]) -> None:
    run.summary = []
    rows = [
        r
        for r in run.results
        if r["phase"] != "ablation"
        and r["variant"] in ("library", "keep_last", run.args["variant"])
    ]
    for family, name, ref_size, ref_batch in fam_plan:
        cfg = get_backbone_cfg(name)
        ref = [
            r
            for r in rows
            if r["backbone"] == name and tuple(r["size"]) == ref_size and r["batch"] == ref_batch
        ]
        off = next(
            (r for r in ref if r["segments"] == 0 and r["status"] == "ok" and r["phase"] == "ref"),
            None,
        )
        rep = next((r for r in ref if r["phase"] == "repeat" and r["status"] == "ok"), None)
        noise = abs(rep["overhead_pct"]) if rep and rep.get("overhead_pct") is not None else None
        chosen, why = choose(ref, noise)
        entry: dict[str, Any] = {
            "family": family,
            "backbone": name,
            "ref_size": list(ref_size),
            "ref_batch": ref_batch,
            "max_segments": cfg.max_segments,
            "library_default": None,  # the library's default is a memory budget now
            "proposed": chosen["segments"] if chosen else None,
            "proposed_keep_last": bool(chosen.get("keep_last")) if chosen else None,
            "proposed_label": (
                f"{chosen['segments']}{' keep last' if chosen.get('keep_last') else ''}"
                if chosen
                else None
            ),
            "meets_rule": chosen is not None,
            "why_not": why,
            "mem_saved_pct": chosen.get("mem_saved_pct") if chosen else None,
            "peak_saved_pct": chosen.get("peak_saved_pct") if chosen else None,
            "overhead_pct": chosen.get("overhead_pct") if chosen else None,
            "off_step_ms": off.get("step_ms") if off else None,
            "one_fwd_pct": off.get("one_fwd_pct") if off else None,
            "noise_pct": noise,
            "holds": None,
            "holds_of": None,
        }
        entry["library_default_saved_pct"] = None
        entry["library_default_overhead_pct"] = None
        if chosen:
            others = [
                r
                for r in rows
                if r["backbone"] == name
                and r["segments"] == chosen["segments"]
                and bool(r.get("keep_last")) == bool(chosen.get("keep_last"))
                and r["status"] == "ok"
                and r.get("overhead_pct") is not None
                and (tuple(r["size"]), r["batch"]) != (ref_size, ref_batch)
            ]
            entry["holds"] = sum(meets_rule(r) for r in others)
            entry["holds_of"] = len(others)
            entry["fails_at"] = [
                f"{_size_label(r['size'])} b{r['batch']}" for r in others if not meets_rule(r)
            ]
        run.summary.append(entry)


# ============================================================================ plot
def write_plot(run: Run, path: Path) -> str | None:
    """Memory saved % vs. step-time overhead % at each family's reference configuration.
    Returns an error string instead of raising when matplotlib is unavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"plot not written: {exc}"
    fig, ax = plt.subplots(figsize=(9, 6.5))
    ax.fill_between(
        [-1000, RULE_MAX_OVERHEAD_PCT],
        RULE_MIN_SAVED_PCT,
        105,
        color="tab:green",
        alpha=0.08,
        label=f"target: ≥ {RULE_MIN_SAVED_PCT:.0f} % saved, ≤ {RULE_MAX_OVERHEAD_PCT:.0f} % time",
    )
    refs = {(s["backbone"], tuple(s["ref_size"]), s["ref_batch"]) for s in run.summary}
    cmap = plt.get_cmap("tab20")
    xmax = 60.0
    all_x: list[float] = []
    for i, s in enumerate(run.summary):
        pts = [
            r
            for r in run.results
            if r["phase"] != "ablation"
            and r["status"] == "ok"
            and r["segments"] > 0
            and (r["backbone"], tuple(r["size"]), r["batch"]) in refs
            and r["backbone"] == s["backbone"]
            and tuple(r["size"]) == tuple(s["ref_size"])
            and r["batch"] == s["ref_batch"]
            and r.get("overhead_pct") is not None
            and r.get("mem_saved_pct") is not None
        ]
        if not pts:
            continue
        pts.sort(key=lambda r: r["segments"])
        xs = [r["overhead_pct"] for r in pts]
        ys = [r["mem_saved_pct"] for r in pts]
        xmax = max(xmax, *xs)
        all_x += xs
        ax.plot(
            xs, ys, "o-", color=cmap(i % 20), label=f"{s['family']} ({s['backbone']})", ms=5, lw=1
        )
        for r in pts:
            ax.annotate(
                str(r["segments"]),
                (r["overhead_pct"], r["mem_saved_pct"]),
                fontsize=7,
                xytext=(3, 3),
                textcoords="offset points",
            )
    ax.axhline(RULE_MIN_SAVED_PCT, color="gray", lw=0.6, ls="--")
    ax.axvline(RULE_MAX_OVERHEAD_PCT, color="gray", lw=0.6, ls="--")
    xmin = min([-5.0, *all_x])
    ax.set_xlim(xmin - 5, xmax * 1.05 + 5)
    ax.set_ylim(min(0, ax.get_ylim()[0]), 102)
    metric = {
        "act": "resident activation memory",
        "saved": "bytes saved for backward",
        "peak": "peak memory",
    }[run.rule_metric]
    ax.set_xlabel("step-time overhead vs. off (%)")
    ax.set_ylabel(f"{metric} saved vs. off (%)")
    ax.set_title(
        f"Gradient checkpointing, {run.device}, {run.dtype}: each family at its reference "
        "size and batch (point labels: segments)",
        fontsize=9,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return None


def _resolve_segments(tokens: Sequence[str], cfg: Any, chosen: int | None = None) -> list[int]:
    out: list[int] = []
    for t in tokens:
        if t == "off":
            k = 0
        elif t == "max":
            k = cfg.max_segments
        elif t == "default":  # the library default is a memory budget, not a count
            continue
        elif t == "proposed":
            if chosen is None:
                continue
            k = chosen
        elif t == "none":
            continue
        else:
            k = int(t)
            if k > cfg.max_segments:
                continue
        if k not in out:
            out.append(k)
    return out


def propose_defaults(data: dict[str, Any]) -> str:
    """The ``FAMILY_DEFAULTS`` literal that a results JSON (``--json``) proposes.

    Families whose reference configuration met the rule get the chosen ``(segments,
    keep_last)``; the others are left out (they keep ``round(sqrt(units))``), with a
    comment saying why. Paste the output over ``FAMILY_DEFAULTS`` in
    ``med_core/backbones/_checkpointing.py`` and regenerate the docs table.
    """
    dev = data.get("env", {}).get("GPU") or data.get("device", "?")
    lines = [
        f"# from {data.get('command', '?')}",
        f"# device {dev}, dtype {data.get('dtype', '?')}, status {data.get('status', '?')}",
        "FAMILY_DEFAULTS: dict[str, tuple[int, bool]] = {",
    ]
    for e in sorted(data.get("summary", []), key=lambda e: e["family"]):
        ref = f"{e['backbone']} {_size_label(e['ref_size'])} b{e['ref_batch']}"
        if e.get("meets_rule") and e.get("proposed"):
            kl = bool(e.get("proposed_keep_last"))
            lines.append(
                f'    "{e["family"]}": ({e["proposed"]}, {kl}),  # {ref}: '
                f"{e['mem_saved_pct']:.0f} % saved, +{e['overhead_pct']:.0f} %"
            )
        else:
            lines.append(f"    # {e['family']}: none meets the rule ({ref}: {e.get('why_not')})")
    lines.append("}")
    return "\n".join(lines)


# ============================================================================ peak report
#: The issue's targets for the default setting (H200, ratios within one run).
TARGET_BATCH_GAIN = 2.0
TARGET_MAX_OVERHEAD_PCT = 30.0
TARGET_PEAK_CHANGE_PCT = -40.0


def predict_max_batch(
    batch: int, peak_mib: float | None, peak2_mib: float | None, cap_mib: float
) -> dict[str, float | int | None]:
    """The largest batch under ``cap_mib`` predicted from the step's peak at ``batch`` and
    at ``2 * batch``, assuming the peak is linear in the batch: ``per_sample_mib`` = the
    difference / ``batch``, ``static_mib`` = what is left at batch 0 (parameters,
    gradients, optimizer state, workspaces), ``predicted_max_batch`` =
    ``floor((cap - static) / per_sample)`` (``None`` without both peaks or when the
    peak does not grow with the batch; 0 when even the static part exceeds the cap).

    Example:
        >>> predict_max_batch(64, 1124.0, 2148.0, 20 * 1024)
        {'per_sample_mib': 16.0, 'static_mib': 100.0, 'predicted_max_batch': 1273}
    """
    none: dict[str, float | int | None] = {
        "per_sample_mib": None,
        "static_mib": None,
        "predicted_max_batch": None,
    }
    if peak_mib is None or peak2_mib is None or batch <= 0:
        return none
    per = (peak2_mib - peak_mib) / batch
    if per <= 0:
        return none
    static = peak_mib - batch * per
    return {
        "per_sample_mib": per,
        "static_mib": static,
        "predicted_max_batch": max(0, math.floor((cap_mib - static) / per)),
    }


def _ratio(new: float | None, base: float | None) -> float | None:
    return new / base if new is not None and base else None


def add_peak_relative(entry: dict[str, Any]) -> None:
    """Fills each setting's changes against the family's ``off`` setting: ``overhead_pct``
    (step time at the fixed batch), ``peak_change_pct`` (peak at the fixed batch; < 0 is
    less), ``predicted_gain`` and ``verified_gain`` (largest batch, ×)."""
    off = next((s for s in entry["settings"] if s["setting"] == "off"), None)

    def verified(s: dict[str, Any] | None) -> int | None:
        v = (s or {}).get("verified") or {}
        return v.get("max_batch") or None

    for s in entry["settings"]:
        if s["status"] != "ok" or off is None or off["status"] != "ok":
            s.update(overhead_pct=None, peak_change_pct=None, predicted_gain=None)
            s["verified_gain"] = None
            continue
        s["overhead_pct"] = _pct_more(off.get("step_ms"), s.get("step_ms"))
        change = _pct_more(off.get("peak_mib"), s.get("peak_mib"))
        s["peak_change_pct"] = change
        s["predicted_gain"] = _ratio(s.get("predicted_max_batch"), off.get("predicted_max_batch"))
        s["verified_gain"] = _ratio(verified(s), verified(off))


def _check(
    target: str,
    value: float | None,
    passes: Callable[[float], bool],
    shown: Callable[[float], str],
    miss: Callable[[float], str],
    unmeasured: str = "not measured",
) -> dict[str, Any]:
    """One target check of ``value``: ``ok`` (``None`` when there is no value) and
    ``text``: the value shown and, for a miss, by how much."""
    if value is None:
        return {"target": target, "ok": None, "text": unmeasured}
    ok = passes(value)
    return {"target": target, "ok": ok, "text": shown(value) + ("" if ok else f": {miss(value)}")}


def peak_verdict(entry: dict[str, Any]) -> dict[str, Any]:
    """The family's ``default`` setting against the issue's targets: largest batch ≥ 2×
    the batch without checkpointing (the verified search where it ran, else the
    prediction), ≤ 30 % more step time at the fixed batch, peak at the fixed batch
    −40 % or less. Each check has ``ok`` (``None``: not measured) and a text that says
    by how much a miss misses."""
    d = next((s for s in entry["settings"] if s["setting"] == "default"), None)
    if d is None or d["status"] != "ok":
        return {"meets": None, "checks": [], "text": "default not measured"}
    gain, source = d.get("verified_gain"), "verified"
    if gain is None:
        gain, source = d.get("predicted_gain"), "predicted"
    g, o, p = TARGET_BATCH_GAIN, TARGET_MAX_OVERHEAD_PCT, TARGET_PEAK_CHANGE_PCT
    checks = [
        _check(
            f"largest batch ≥ {g:g}×",
            gain,
            lambda v: v >= g,
            lambda v: f"{v:.2f}× ({source})",
            lambda v: f"{g - v:.2f}× short",
        ),
        _check(
            f"step time ≤ +{o:g} %",
            d.get("overhead_pct"),
            lambda v: v <= o,
            lambda v: f"{v:+.0f} %",
            lambda v: f"{v - o:.0f} points over",
        ),
        _check(
            f"peak at the fixed batch ≤ {p:g} %",
            d.get("peak_change_pct"),
            lambda v: v <= p,
            lambda v: f"{v:+.0f} %",
            lambda v: f"{v - p:.0f} points short",
            unmeasured="not measured (no device memory on CPU)",
        ),
    ]
    oks = [c["ok"] for c in checks]
    meets = None if None in oks else all(oks)
    misses = [f"{c['target']}: {c['text']}" for c in checks if c["ok"] is False]
    text = "meets all targets" if meets else "; ".join(misses) or "not all measured"
    return {"meets": meets, "checks": checks, "text": text}


def choose_budget(entry: dict[str, Any]) -> tuple[dict[str, Any] | None, bool]:
    """The explicit-budget setting to propose for a family and whether it is within the
    time target: the largest predicted max-batch gain among those with overhead ≤ 30 %
    (ties: less overhead); if none is, the least overhead (a miss)."""
    cands = [
        s
        for s in entry["settings"]
        if s["status"] == "ok"
        and s.get("budget") is not None
        and s["setting"] != "default"
        and "+" not in s["setting"]  # a plain budget: the default has no options
        and s.get("overhead_pct") is not None
    ]
    if not cands:
        return None, False
    good = [s for s in cands if s["overhead_pct"] <= TARGET_MAX_OVERHEAD_PCT]
    if good:
        best = max(good, key=lambda s: (s.get("predicted_gain") or 0.0, -s["overhead_pct"]))
        return best, True
    return min(cands, key=lambda s: s["overhead_pct"]), False


def propose_budget_defaults(data: dict[str, Any]) -> str:
    """The ``FAMILY_DEFAULTS: dict[str, float]`` literal that a peak-report JSON proposes
    (see :func:`choose_budget`); families without a measured budget are a comment."""
    dev = data.get("env", {}).get("GPU") or data.get("device", "?")
    lines = [
        *(f"# from {c}" for c in str(data.get("command", "?")).splitlines()),
        f"# device {dev}, dtype {data.get('dtype', '?')}, status {data.get('status', '?')}",
        f"# rule: the largest predicted max-batch gain with step time ≤ "
        f"+{TARGET_MAX_OVERHEAD_PCT:g} %; else the least overhead (miss)",
        "FAMILY_DEFAULTS: dict[str, float] = {",
    ]
    for e in sorted(data.get("peak", []), key=lambda e: e["family"]):
        best, ok = choose_budget(e)
        ref = f"{e['backbone']} {_size_label(e['size'])} b{e['batch']}"
        if best is None:
            lines.append(f"    # {e['family']}: no budget measured ({ref}: {e.get('reason')})")
            continue
        gain = best.get("predicted_gain")
        peak = best.get("peak_change_pct")
        lines.append(
            f'    "{e["family"]}": {best["budget"]:g},  # {ref}: '
            f"predicted max batch {'–' if gain is None else f'{gain:.2f}'}×, "
            f"{best['overhead_pct']:+.0f} % step time, peak "
            f"{'–' if peak is None else f'{peak:+.0f}'} %" + ("" if ok else " (miss)")
        )
    lines.append("}")
    return "\n".join(lines)


def merge_peak_runs(datas: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One peak-report JSON from several (e.g. the families split over two GPU calls):
    the first one's environment and arguments, every command, status and note, and the
    families in order (a family measured twice: the later run)."""
    if not datas:
        raise ValueError("no peak-report JSON given")
    merged = dict(datas[0])
    by_family: dict[str, dict[str, Any]] = {}
    for d in datas:
        for e in d.get("peak", []):
            by_family[e["family"]] = e
    merged["peak"] = list(by_family.values())
    merged["command"] = "\n".join(str(d.get("command", "")) for d in datas)
    merged["status"] = "; ".join(str(d.get("status", "?")) for d in datas)
    merged["elapsed_s"] = sum(float(d.get("elapsed_s") or 0.0) for d in datas)
    merged["notes"] = list(dict.fromkeys(n for d in datas for n in d.get("notes", [])))
    return merged
