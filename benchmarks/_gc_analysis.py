"""The rule that proposes each family's default ``segments`` from the measurements, and the
plot of memory saved against step time.
"""

from __future__ import annotations

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

__all__ = ["add_relative", "choose", "meets_rule", "propose_defaults", "summarize", "write_plot"]


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
