"""What sets the peak of a training step: a CUDA memory snapshot of one step, the
allocations live at its peak grouped into categories, and a PNG timeline (the
``--snapshot-dir`` part of ``benchmarks/gradient_checkpointing.py --peak-report``).

The step runs under ``torch.cuda.memory._record_memory_history(stacks="python")`` (the
documented memory-snapshot API); the snapshot pickle is dumped as is (open it in
https://pytorch.org/memory_viz). To tell the phases and units apart, the step allocates a
one-element *marker* tensor from :func:`_snapshot_mark` at the start of the forward,
backward and optimizer phases and at the start of every unit (a forward pre-hook; it
fires again when checkpoint recomputes the unit during backward); the k-th marker
allocation of the trace is the k-th label. :func:`analyze_trace` then replays the trace
(everything in it is plain data, so the unit tests feed it synthetic traces).
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import synchronize
from benchmarks._gc_measure import MIB
from benchmarks._gc_measure import Bench
from med_core.torch_compat import memory_snapshot
from med_core.torch_compat import record_memory_history

__all__ = [
    "CATEGORIES",
    "MARK_FRAME",
    "analyze_trace",
    "classify",
    "frame_label",
    "record_step",
    "write_timeline_png",
]

#: Name of the function whose allocations are phase/unit markers in the trace.
MARK_FRAME = "_snapshot_mark"

#: Category key → description, in the order of the tables and of the timeline's stack.
CATEGORIES: dict[str, str] = {
    "before": "allocated before the step (parameters, optimizer state, inputs)",
    "forward": "forward activations (kept for backward)",
    "autocast": "autocast bf16 weight copies",
    "recompute": "recomputation in checkpoint (backward)",
    "act_grad": "gradients of activations, backward temporaries (autograd)",
    "param_grad": "parameter gradients",
    "optimizer": "optimizer step",
    "scratch": "op scratch: freed before the next allocation (cuDNN/cuBLAS workspace)",
}

_PHASES = ("forward", "backward", "optimizer", "end")
_FREES = ("free_requested", "free_completed")
#: Frames that say nothing about what allocated (module dispatch, checkpoint plumbing).
_PLUMBING = ("torch/nn/modules/module.py", "torch/utils/checkpoint.py", "/contextlib.py")
_CHECKPOINT = "torch/utils/checkpoint.py"


def _round_block(nbytes: int) -> int:
    """Bytes rounded up to the caching allocator's 512-byte block granularity."""
    return max(512, -(-nbytes // 512) * 512)


def frame_label(frames: Sequence[dict[str, Any]]) -> str:
    """``file:line function`` of the innermost frame that is not dispatch plumbing
    (``module.py``, ``checkpoint.py``, ``contextlib``; the innermost frame if all are);
    ``"(no Python frame)"`` for an allocation of autograd's engine (backward runs in C++,
    without a Python stack).

    Example:
        >>> frame_label([{"filename": "/x/site-packages/torch/nn/modules/conv.py",
        ...               "line": 543, "name": "_conv_forward"}])
        'torch/nn/modules/conv.py:543 _conv_forward'
    """
    if not frames:
        return "(no Python frame)"
    f = next(
        (f for f in frames if not any(p in str(f.get("filename", "")) for p in _PLUMBING)),
        frames[0],
    )
    short = str(f.get("filename", "")).split("site-packages/")[-1]
    return f"{short}:{f.get('line', 0)} {f.get('name', '')}"


def classify(
    phase: str,
    frames: Sequence[dict[str, Any]],
    size: int,
    *,
    is_param_grad: bool,
    is_scratch: bool,
    weight_copy_sizes: frozenset[int],
) -> str:
    """The :data:`CATEGORIES` key of one allocation made during the step.

    ``phase`` is the step phase it was made in (``"forward"``, ``"backward"``,
    ``"optimizer"``; ``"end"`` counts as optimizer). A parameter's gradient and an op's
    scratch buffer are told by the caller (addresses of ``p.grad`` after backward; freed
    before the next allocation); a block of a bf16 weight copy's size (``weight_copy_sizes``,
    rounded to 512 bytes) made with a Python stack in forward or recomputation is an
    autocast copy; in backward, a stack through ``torch/utils/checkpoint.py`` is
    recomputation, no Python stack is autograd's engine.
    """
    if is_param_grad:
        return "param_grad"
    if is_scratch:
        return "scratch"
    if phase in ("optimizer", "end"):
        return "optimizer"
    in_checkpoint = any(_CHECKPOINT in str(f.get("filename", "")) for f in frames)
    if frames and _round_block(size) in weight_copy_sizes:
        if phase == "forward" or in_checkpoint:
            return "autocast"
    if phase == "backward":
        return "recompute" if in_checkpoint else "act_grad"
    return "forward"


@dataclass
class _Block:
    size: int
    category: str
    detail: str
    frame: str


def _events(
    trace: Iterable[dict[str, Any]], labels: Sequence[str]
) -> tuple[list[tuple[dict[str, Any], str, str]], list[tuple[str, int]]]:
    """The trace's allocations and frees without markers, each with ``(phase, unit)`` at
    that point, and the ``(label, event index)`` of every marker (index into the events).

    A block's free is its ``free_requested`` (where ``memory_allocated`` drops); the
    ``free_completed`` that follows it is dropped (one without a request counts as the
    free). Every returned event's ``action`` is ``"alloc"`` or ``"free"``.
    """
    phase, unit = "forward", "stem"
    marker_addrs: set[int] = set()
    requested: set[int] = set()
    marks: list[tuple[str, int]] = []
    out: list[tuple[dict[str, Any], str, str]] = []
    for e in trace:
        action, addr = e.get("action"), e.get("addr")
        if action == "free_completed" and addr in requested:
            requested.discard(addr)
            continue
        if action == "free_requested":
            requested.add(addr)  # type: ignore[arg-type]
        if action == "alloc" and any(f.get("name") == MARK_FRAME for f in e.get("frames", ())):
            label = labels[len(marks)] if len(marks) < len(labels) else "?"
            marks.append((label, len(out)))
            if label in _PHASES:
                phase, unit = label, ("stem" if label == "forward" else "")
            else:
                unit = label
            marker_addrs.add(e["addr"])
        elif action in _FREES and addr in marker_addrs:
            marker_addrs.discard(addr)  # type: ignore[arg-type]
        elif action == "alloc":
            out.append((e, phase, unit))
        elif action in _FREES:
            out.append(({**e, "action": "free"}, phase, unit))
    return out, marks


def analyze_trace(
    trace: Sequence[dict[str, Any]],
    *,
    baseline_bytes: int,
    labels: Sequence[str],
    grad_addrs: Iterable[int] = (),
    weight_copy_sizes: Iterable[int] = (),
    top: int = 10,
    points: int = 600,
) -> dict[str, Any]:
    """The allocations live at the step's peak, by category, and a sampled timeline.

    Args:
        trace: ``snapshot["device_traces"][device]`` of one recorded step.
        baseline_bytes: ``torch.cuda.memory_allocated`` when recording started (blocks
            allocated before it appear only through their frees).
        labels: The marker labels, in the order the markers were allocated.
        grad_addrs: ``p.grad.data_ptr()`` of every parameter after backward; the last
            backward allocation at such an address is that parameter's gradient.
        weight_copy_sizes: Bytes of each parameter's bf16 copy (autocast); empty in fp32.
        top: Rows of the ``groups`` and ``largest`` tables.
        points: Samples of the timeline (the peak is always one).

    Returns:
        A JSON-able dict: ``peak_mib``, ``peak_event``, ``peak_phase``, ``peak_unit``,
        ``events``, ``phases`` (``[label, first event, end]``), ``by_category`` (MiB and
        blocks per category at the peak), ``groups`` (category × unit/frame), ``largest``
        (single blocks), and ``timeline`` (``x``, ``series`` per category in MiB; the
        caller draws it and drops it before writing JSON).
    """
    events, marks = _events(trace, labels)
    grads = set(grad_addrs)
    copies = frozenset(_round_block(int(s)) for s in weight_copy_sizes)
    # the last backward allocation at each gradient address is that parameter's gradient
    grad_event: dict[int, int] = {}
    for i, (e, phase, _) in enumerate(events):
        if e["action"] == "alloc" and phase == "backward" and e["addr"] in grads:
            grad_event[e["addr"]] = i
    # scratch: freed before the next allocation (the workspace of a single op)
    scratch: set[int] = set()
    pending: dict[int, int] = {}
    for i, (e, _, _) in enumerate(events):
        if e["action"] == "alloc":
            pending = {e["addr"]: i}
        elif e["addr"] in pending:
            scratch.add(pending.pop(e["addr"]))

    def block(i: int) -> _Block:
        e, phase, unit = events[i]
        frames = e.get("frames", [])
        cat = classify(
            phase,
            frames,
            int(e["size"]),
            is_param_grad=grad_event.get(e["addr"]) == i,
            is_scratch=i in scratch,
            weight_copy_sizes=copies,
        )
        detail = unit if cat in ("forward", "recompute", "autocast") else ""
        return _Block(int(e["size"]), cat, detail, frame_label(frames))

    blocks = [block(i) if e["action"] == "alloc" else None for i, (e, _, _) in enumerate(events)]
    keys = list(CATEGORIES)

    def replay(upto: int, sample: int = 0) -> tuple[dict[int, _Block], dict[str, int], int, int]:
        """Live blocks and bytes per category after event ``upto`` (and the peak total
        and its event before it); every ``sample``-th state is appended to the timeline."""
        totals = dict.fromkeys(keys, 0)
        totals["before"] = baseline_bytes
        live: dict[int, _Block] = {}
        top, top_i = sum(totals.values()), -1
        for i in range(upto + 1):
            e, b = events[i][0], blocks[i]
            if b is not None:
                live[e["addr"]] = b
                totals[b.category] += b.size
            elif e["addr"] in live:
                gone = live.pop(e["addr"])
                totals[gone.category] -= gone.size
            else:  # a block from before the step, freed now
                totals["before"] -= int(e["size"])
            total = sum(totals.values())
            if total > top:
                top, top_i = total, i
            if sample and i % sample == 0:
                xs.append(i)
                for col, k in zip(series, keys, strict=True):
                    col.append(totals[k] / MIB)
        return live, totals, top, top_i

    stride = max(1, len(events) // max(1, points))
    xs: list[int] = []
    series: list[list[float]] = [[] for _ in keys]
    _, _, peak, peak_i = replay(len(events) - 1, stride)
    at_peak, peak_totals, _, _ = replay(peak_i)  # the blocks live at the peak
    by_cat: dict[str, list[float]] = {k: [peak_totals[k] / MIB, 0] for k in keys}
    groups: dict[tuple[str, str], list[Any]] = {}
    for b in at_peak.values():
        by_cat[b.category][1] += 1
        g = groups.setdefault((b.category, b.detail), [0.0, 0, Counter()])
        g[0] += b.size / MIB
        g[1] += 1
        g[2][b.frame] += b.size
    if peak_i >= 0 and peak_i % stride:  # the peak is always a sample
        pos = next((j for j, x in enumerate(xs) if x > peak_i), len(xs))
        xs.insert(pos, peak_i)
        for col, k in zip(series, keys, strict=True):
            col.insert(pos, peak_totals[k] / MIB)
    phases = [(label, idx) for label, idx in marks if label in _PHASES]
    spans: list[tuple[str, int, int]] = [
        (label, idx, phases[j + 1][1] if j + 1 < len(phases) else len(events))
        for j, (label, idx) in enumerate(phases)
        if label != "end"
    ]
    peak_phase = next((lab for lab, lo, hi in spans if lo <= peak_i < hi), "forward")
    return {
        "peak_mib": peak / MIB,
        "peak_event": peak_i,
        "peak_phase": peak_phase if peak_i >= 0 else "before the step",
        "peak_unit": events[peak_i][2] if peak_i >= 0 else "",
        "events": len(events),
        "markers": len(marks),
        "phases": [list(sp) for sp in spans],
        "by_category": [
            {"category": k, "label": CATEGORIES[k], "mib": v[0], "blocks": v[1]}
            for k, v in sorted(by_cat.items(), key=lambda kv: -kv[1][0])
            if v[0] > 0
        ],
        "groups": [
            {
                "category": cat,
                "detail": detail,
                "mib": g[0],
                "blocks": g[1],
                "frame": g[2].most_common(1)[0][0],
            }
            for (cat, detail), g in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]
        ],
        "largest": [
            {"mib": b.size / MIB, "category": b.category, "detail": b.detail, "frame": b.frame}
            for b in sorted(at_peak.values(), key=lambda b: -b.size)[:top]
        ],
        "timeline": {"x": xs, "categories": keys, "series": series},
    }


def _snapshot_mark(device: torch.device) -> None:
    """Allocates (and drops) one element: a marker in the memory trace (see module doc)."""
    torch.empty(1, device=device)


def record_step(
    bench: Bench,
    features: Any,
    x: torch.Tensor,
    y: torch.Tensor,
    pickle_path: Path,
    *,
    max_entries: int,
    top: int = 10,
) -> dict[str, Any]:
    """One training step of ``bench`` under the memory history; dumps the snapshot to
    ``pickle_path`` and returns :func:`analyze_trace` of it, plus ``measured_peak_mib``
    (``max_memory_allocated`` over the step) and ``wrapped`` (the trace hit
    ``max_entries``: its start is lost, the analysis is incomplete). CUDA only; run a
    warm-up step first (plans, cuDNN algorithms and optimizer state exist then)."""
    dev = bench.device
    labels: list[str] = []
    grads: set[int] = set()
    params = [p for g in bench.optimizer.param_groups for p in g["params"]]
    item = torch.finfo(bench.amp_dtype).bits // 8 if bench.amp_dtype is not None else 0
    copies = [p.numel() * item for p in params if item and p.ndim >= 2]

    def mark(label: str) -> None:
        if label == "optimizer":
            grads.update(p.grad.data_ptr() for p in params if p.grad is not None)
        labels.append(label)
        _snapshot_mark(dev)

    def unit_mark(i: int, *_: object) -> None:
        mark(f"unit {i}")

    units = bench.backbone.units()
    hooks = [u.register_forward_pre_hook(partial(unit_mark, i)) for i, u in enumerate(units)]
    hooks.append(units[-1].register_forward_hook(lambda *_: mark("head")))
    synchronize(dev)
    baseline = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    record_memory_history(enabled="all", context="all", stacks="python",
                          max_entries=max_entries)
    try:
        bench.step(features, x, y, mark=mark)
        synchronize(dev)
        snapshot = memory_snapshot(dev)
    finally:
        record_memory_history(enabled=None)
        for h in hooks:
            h.remove()
    measured = torch.cuda.max_memory_allocated(dev) / MIB
    pickle_path.parent.mkdir(parents=True, exist_ok=True)
    with pickle_path.open("wb") as f:
        pickle.dump(snapshot, f)
    trace = snapshot["device_traces"][dev.index if dev.index is not None else 0]
    res = analyze_trace(
        trace,
        baseline_bytes=baseline,
        labels=labels,
        grad_addrs=grads,
        weight_copy_sizes=copies,
        top=top,
    )
    res["measured_peak_mib"] = measured
    res["wrapped"] = len(trace) >= max_entries
    res["pickle"] = str(pickle_path)
    return res


def write_timeline_png(
    analysis: dict[str, Any], path: Path, title: str, ymax_mib: float | None = None
) -> str | None:
    """Stacked allocated MiB per category over the step's allocator events, phases
    shaded, the peak marked. Returns an error string instead of raising when matplotlib
    is unavailable."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        return f"timeline not written: {exc}"
    tl = analysis["timeline"]
    fig, ax = plt.subplots(figsize=(7.5, 3.2))
    cmap = plt.get_cmap("tab10")
    ax.stackplot(
        tl["x"],
        [[v / 1024 for v in s] for s in tl["series"]],
        labels=[CATEGORIES[k].split(" (")[0].split(":")[0] for k in tl["categories"]],
        colors=[cmap(i) for i in range(len(tl["categories"]))],
        linewidth=0,
    )
    shades = {"forward": "#dddddd", "backward": "#f3f3f3", "optimizer": "#dddddd"}
    top = (ymax_mib or analysis["peak_mib"]) / 1024 * 1.08
    for label, lo, hi in analysis["phases"]:
        ax.axvspan(lo, hi, color=shades.get(label, "white"), zorder=-1)
        ax.text((lo + hi) / 2, top * 0.97, label, ha="center", va="top", fontsize=7)
    ax.axvline(analysis["peak_event"], color="black", lw=0.8, ls="--")
    ax.annotate(
        f"peak {analysis['peak_mib'] / 1024:.2f} GiB",
        (analysis["peak_event"], analysis["peak_mib"] / 1024),
        xytext=(4, -10),
        textcoords="offset points",
        fontsize=7,
    )
    ax.set_ylim(0, top)
    ax.set_xlim(0, max(1, analysis["events"]))
    ax.set_xlabel("allocator events in the step (alloc/free, in order)", fontsize=8)
    ax.set_ylabel("allocated GiB", fontsize=8)
    ax.set_title(title, fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None
