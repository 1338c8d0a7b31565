"""``benchmarks/ddp_scaling.py --profile``: ``torch.profiler`` on one epoch of every DDP
rank, and what its timeline says about communication.

:class:`EpochProfiler` is a trainer callback: it profiles one whole epoch of
``Trainer.fit()`` (CPU activities, plus CUDA on a GPU), marks it with a
``record_function`` named :data:`EPOCH_MARKER`, writes one Chrome trace per rank and
summarizes the timeline (:func:`summarize`). The timeline has two lanes:

* **compute**: on CUDA every device kernel, copy or memset that is not a collective; on
  CPU every op on the main thread (the one that ran the epoch; CPU backward runs there);
* **communication**: the collectives, recognized by name (:data:`COMM_KEYS`): on CUDA
  the NCCL kernels; on CPU gloo's work items (``gloo:all_reduce``, ...), which the
  profiler records as asynchronous events on gloo's own threads, from the moment a
  worker thread picks them up to their completion.

A *step* ends where the optimizer's step ends (the ``Optimizer.step#...`` range torch
records; on CUDA the end of the last device work launched inside it), so step ``k`` is
everything from the end of optimizer step ``k-1`` to the end of optimizer step ``k``:
loading, zero_grad, forward, backward with its all-reduces, the optimizer. The first
step of the epoch is left out (it starts at the epoch's set-up). Per step,
``wall = compute + exposed communication + idle`` exactly, where *exposed* is
communication that overlaps no compute and *idle* is time covered by neither lane (on
CPU: the main thread runs no op and no collective is in flight; on CUDA: the device runs
nothing). The *tail* is what comes after the last step until the end of the epoch's
``on_epoch_end`` callbacks: the loss all-reduce, the BatchNorm buffer broadcast,
validation and its gathers: the per-epoch costs, reported apart from the per-step ones.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import fmt
from benchmarks._common import markdown_table
from med_core.training import Callback
from med_core.training import Trainer

__all__ = [
    "COMM_KEYS",
    "EPOCH_MARKER",
    "EpochProfiler",
    "Timeline",
    "WindowStats",
    "as_row",
    "intersect",
    "merge",
    "profile_table",
    "summarize",
    "timeline",
    "total",
    "window_stats",
]

#: Lower-case substrings that make an event a collective (gloo work items, NCCL kernels).
COMM_KEYS = ("nccl", "gloo", "allreduce", "all_reduce", "broadcast", "allgather", "all_gather")
#: The ``record_function`` around the profiled epoch (not counted as compute).
EPOCH_MARKER = "ddp_profile.epoch"
#: Prefix of the range torch's optimizers record around ``step()``.
STEP_PREFIX = "Optimizer.step#"

Interval = tuple[float, float]


# ============================================================================ intervals
def merge(intervals: Iterable[Interval]) -> list[Interval]:
    """The union of ``intervals`` as sorted, disjoint intervals (empty ones dropped).

    Example:
        >>> merge([(5, 7), (0, 2), (1, 3), (4, 4)])
        [(0, 3), (5, 7)]
    """
    out: list[Interval] = []
    for s, e in sorted(i for i in intervals if i[1] > i[0]):
        if out and s <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], e))
        else:
            out.append((s, e))
    return out


def total(intervals: Iterable[Interval]) -> float:
    """The length of the union of ``intervals``."""
    return sum(e - s for s, e in merge(intervals))


def intersect(a: Iterable[Interval], b: Iterable[Interval]) -> list[Interval]:
    """Where the union of ``a`` and the union of ``b`` overlap (sorted, disjoint).

    Example:
        >>> intersect([(0, 4), (6, 9)], [(3, 7)])
        [(3, 4), (6, 7)]
    """
    ma, mb = merge(a), merge(b)
    out: list[Interval] = []
    i = j = 0
    while i < len(ma) and j < len(mb):
        s, e = max(ma[i][0], mb[j][0]), min(ma[i][1], mb[j][1])
        if e > s:
            out.append((s, e))
        if ma[i][1] < mb[j][1]:
            i += 1
        else:
            j += 1
    return out


@dataclass(frozen=True)
class WindowStats:
    """The two lanes in one time window (all in microseconds).

    ``wall == compute_us + exposed_comm_us + idle_us``.
    """

    wall_us: float
    compute_us: float
    comm_us: float
    overlap_us: float
    idle_us: float
    collectives: int

    @property
    def exposed_comm_us(self) -> float:
        """Communication that overlaps no compute (the time the step waits for it)."""
        return self.comm_us - self.overlap_us

    @property
    def overlap_fraction(self) -> float | None:
        """The share of communication time that overlaps compute (``None``: no comm)."""
        return self.overlap_us / self.comm_us if self.comm_us > 0 else None


def window_stats(
    window: Interval, compute: Sequence[Interval], comm: Sequence[Interval]
) -> WindowStats:
    """Compute, communication, their overlap and the idle time inside ``window``.

    Example:
        >>> w = window_stats((0, 10), compute=[(0, 4), (6, 8)], comm=[(3, 7)])
        >>> w.compute_us, w.comm_us, w.overlap_us, w.idle_us, w.exposed_comm_us
        (6, 4, 2, 2, 2)
    """
    inside = [window]
    cmp, com = intersect(compute, inside), intersect(comm, inside)
    started = sum(1 for s, _ in comm if window[0] <= s < window[1])
    return WindowStats(
        wall_us=window[1] - window[0],
        compute_us=total(cmp),
        comm_us=total(com),
        overlap_us=total(intersect(cmp, com)),
        idle_us=(window[1] - window[0]) - total(cmp + com),
        collectives=started,
    )


# ============================================================================ timeline
@dataclass(frozen=True)
class Timeline:
    """The profiled epoch of one rank as intervals (microseconds, profiler clock)."""

    epoch: Interval
    step_ends: list[float]
    compute: list[Interval]
    comm: list[Interval]


def _is_comm(name: str) -> bool:
    low = name.lower()
    return any(k in low for k in COMM_KEYS)


def _span(e: Any) -> Interval:
    return float(e.time_range.start), float(e.time_range.end)


def timeline(events: Sequence[Any], *, cuda: bool) -> Timeline:
    """The lanes of :func:`summarize` from ``torch.profiler.profile.events()``.

    Raises:
        ValueError: the events hold no :data:`EPOCH_MARKER` range.
    """
    from torch.profiler import DeviceType

    host = [e for e in events if e.device_type == DeviceType.CPU]
    marker = next((e for e in host if e.name == EPOCH_MARKER), None)
    if marker is None:
        raise ValueError(f"no {EPOCH_MARKER!r} range among {len(events)} profiler events")
    main = marker.thread
    on_main = [e for e in host if e.thread == main and not e.is_async and e is not marker]
    steps = sorted((e for e in on_main if e.name.startswith(STEP_PREFIX)), key=_span)
    if cuda:
        # user annotations mirrored onto the GPU timeline (record_function ranges) are no work
        device = [
            e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation
        ]
        compute = [_span(e) for e in device if not _is_comm(e.name)]
        comm = [_span(e) for e in device if _is_comm(e.name)]
        step_ends = [_device_end(s, on_main, device) for s in steps]
    else:
        compute = [_span(e) for e in on_main]
        comm = [_span(e) for e in host if _is_comm(e.name) and (e.is_async or e.thread != main)]
        step_ends = [float(s.time_range.end) for s in steps]
    return Timeline(epoch=_span(marker), step_ends=step_ends, compute=compute, comm=comm)


def _device_end(step: Any, on_main: Sequence[Any], device: Sequence[Any]) -> float:
    """The end of the last device work launched by an op inside the host range ``step``
    (the host end when it launched none)."""
    s, e = _span(step)
    ids = {op.id for op in on_main if s <= op.time_range.start <= e} - {0}  # 0: no link
    ends = [float(d.time_range.end) for d in device if d.linked_correlation_id in ids]
    return max(ends, default=e)


# ============================================================================ summary
def summarize(tl: Timeline) -> dict[str, Any]:
    """Per-step means over the steps after the first, and the epoch's tail (milliseconds).

    Returns:
        ``steps``; per step ``step_ms``, ``compute_ms``, ``comm_ms``, ``overlap``
        (overlapped share of the communication time, over all analysed steps),
        ``exposed_comm_ms``, ``idle_ms``, ``collectives``; per epoch ``epoch_ms``,
        ``tail_ms``, ``tail_comm_ms``, ``tail_collectives``.

    Raises:
        ValueError: fewer than two optimizer steps in the epoch.
    """
    ends = tl.step_ends
    if len(ends) < 2:
        raise ValueError(f"need >= 2 optimizer steps in the profiled epoch, got {len(ends)}")
    windows = zip(ends[:-1], ends[1:], strict=True)
    steps = [window_stats(w, tl.compute, tl.comm) for w in windows]
    tail = window_stats((ends[-1], max(ends[-1], tl.epoch[1])), tl.compute, tl.comm)
    comm = sum(w.comm_us for w in steps)
    mean = {k: statistics.fmean(getattr(w, k) for w in steps) / 1e3 for k in (
        "wall_us", "compute_us", "comm_us", "exposed_comm_us", "idle_us")}  # fmt: skip
    return {
        "steps": len(steps),
        "step_ms": mean["wall_us"],
        "compute_ms": mean["compute_us"],
        "comm_ms": mean["comm_us"],
        "overlap": sum(w.overlap_us for w in steps) / comm if comm > 0 else None,
        "exposed_comm_ms": mean["exposed_comm_us"],
        "idle_ms": mean["idle_us"],
        "collectives": statistics.fmean(w.collectives for w in steps),
        "epoch_ms": (tl.epoch[1] - tl.epoch[0]) / 1e3,
        "tail_ms": tail.wall_us / 1e3,
        "tail_comm_ms": tail.comm_us / 1e3,
        "tail_collectives": tail.collectives,
    }


# ============================================================================ callback
class EpochProfiler(Callback):
    """Profiles epoch ``epoch`` of a fit on this rank; :attr:`summary` holds the result.

    Args:
        epoch: The 0-based epoch to profile (after the warm-up epochs).
        trace: Where this rank's Chrome trace goes (``None``: no file).
    """

    def __init__(self, epoch: int, trace: Path | None = None) -> None:
        self.epoch = epoch
        self.trace = trace
        self.summary: dict[str, Any] | None = None
        self._prof: Any = None
        self._marker: Any = None

    def on_epoch_start(self, trainer: Trainer, epoch: int) -> None:
        if epoch != self.epoch:
            return
        from torch.profiler import ProfilerActivity
        from torch.profiler import profile
        from torch.profiler import record_function

        cuda = trainer.torch_device.type == "cuda"
        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        if cuda:
            torch.cuda.synchronize(trainer.torch_device)
        self._prof = profile(activities=acts)
        self._prof.start()
        self._marker = record_function(EPOCH_MARKER)
        self._marker.__enter__()

    def on_epoch_end(self, trainer: Trainer, epoch: int, metrics: dict[str, float]) -> None:
        if epoch != self.epoch or self._prof is None:
            return
        self._stop(trainer)
        if self.trace is not None:
            self.trace.parent.mkdir(parents=True, exist_ok=True)
            self._prof.export_chrome_trace(str(self.trace))
        cuda = trainer.torch_device.type == "cuda"
        self.summary = summarize(timeline(self._prof.events(), cuda=cuda))
        self._prof = None

    def on_exception(self, trainer: Trainer, exc: BaseException) -> None:
        if self._prof is not None:
            self._stop(trainer)
            self._prof = None

    def _stop(self, trainer: Trainer) -> None:
        if trainer.torch_device.type == "cuda":
            torch.cuda.synchronize(trainer.torch_device)
        self._marker.__exit__(None, None, None)
        self._prof.stop()


# ============================================================================ rendering
def profile_table(rows: Sequence[dict[str, Any]]) -> str:
    """A Markdown table of the per-rank summaries; ``rows`` carry ``checkpointing``,
    ``rank`` and the keys of :func:`summarize` (or a ``status`` other than ``ok``)."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.0f} %"

    body = [
        [
            "on" if r["checkpointing"] else "off",
            r.get("rank", "–"),
            r.get("steps", "–"),
            fmt(r.get("step_ms"), 1),
            fmt(r.get("compute_ms"), 1),
            fmt(r.get("comm_ms"), 1),
            pct(r.get("overlap")),
            fmt(r.get("exposed_comm_ms"), 1),
            fmt(r.get("idle_ms"), 1),
            fmt(r.get("collectives"), 1),
            fmt(r.get("epoch_ms"), 0),
            fmt(r.get("tail_ms"), 1),
            fmt(r.get("tail_comm_ms"), 1),
            r.get("tail_collectives", "–"),
            r.get("status", "ok"),
        ]
        for r in rows
    ]
    return markdown_table(
        [
            "checkpointing",
            "rank",
            "steps",
            "step ms",
            "compute ms",
            "comm ms",
            "comm overlapped",
            "exposed comm ms",
            "idle ms",
            "collectives / step",
            "epoch ms",
            "tail ms",
            "tail comm ms",
            "tail collectives",
            "status",
        ],
        body,
    )


def as_row(checkpointing: bool, rank: int, summary: dict[str, Any]) -> dict[str, Any]:
    """One row of :func:`profile_table` (JSON-safe)."""
    return {"checkpointing": checkpointing, "rank": rank, "status": "ok", **summary}
