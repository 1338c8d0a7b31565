"""The timeline arithmetic of ``benchmarks/_ddp_profile.py`` on hand-made intervals and
events (the real profiler path runs in test_ddp_scaling_bench.py)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from torch.profiler import DeviceType

from benchmarks._ddp_profile import EPOCH_MARKER
from benchmarks._ddp_profile import Timeline
from benchmarks._ddp_profile import intersect
from benchmarks._ddp_profile import merge
from benchmarks._ddp_profile import summarize
from benchmarks._ddp_profile import timeline
from benchmarks._ddp_profile import total
from benchmarks._ddp_profile import window_stats


def test_union_and_intersection_of_unsorted_overlapping_intervals() -> None:
    assert merge([(5, 7), (0, 2), (1, 3), (3, 4), (9, 9)]) == [(0, 4), (5, 7)]
    assert total([(0, 10), (2, 3), (8, 12)]) == 12
    assert intersect([(0, 4), (6, 9)], [(3, 7), (8, 20)]) == [(3, 4), (6, 7), (8, 9)]
    assert intersect([(0, 1)], [(1, 2)]) == []  # touching is not overlapping


def test_window_splits_wall_time_into_compute_exposed_comm_and_idle() -> None:
    # window 10..30: compute 10-16 and 18-24 (nested op 12-14 counted once), comm 15-21 and
    # 26-28 (the second exposed); a comm range that starts before the window is clipped.
    compute = [(10, 16), (12, 14), (18, 24)]
    comm = [(5, 11), (15, 21), (26, 28)]
    w = window_stats((10, 30), compute, comm)
    assert (w.wall_us, w.compute_us, w.comm_us) == (20, 12, 9)
    assert w.overlap_us == 1 + 1 + 3  # 10-11, 15-16, 18-21
    assert w.exposed_comm_us == 4  # 16-18 and 26-28
    assert w.idle_us == 4  # 24-26 and 28-30
    assert w.wall_us == w.compute_us + w.exposed_comm_us + w.idle_us
    assert w.overlap_fraction == pytest.approx(5 / 9)
    assert w.collectives == 2  # started inside the window
    assert window_stats((0, 5), [(0, 5)], []).overlap_fraction is None


def test_summary_leaves_out_the_first_step_and_reports_the_tail_apart() -> None:
    tl = Timeline(
        epoch=(0, 100),
        step_ends=[10, 30, 50],  # analysed steps: 10-30 and 30-50
        compute=[(0, 10), (10, 25), (30, 40), (60, 90)],
        comm=[(20, 30), (40, 50), (55, 60)],
    )
    s = summarize(tl)
    assert s["steps"] == 2 and s["step_ms"] == pytest.approx(0.020)
    assert s["compute_ms"] == pytest.approx((15 + 10) / 2 / 1e3)
    assert s["comm_ms"] == pytest.approx(0.010)
    assert s["overlap"] == pytest.approx(5 / 20)  # 20-25 of 20 us of communication
    assert s["exposed_comm_ms"] == pytest.approx((5 + 10) / 2 / 1e3)
    assert s["idle_ms"] == pytest.approx((0 + 0) / 2 / 1e3)
    assert (s["epoch_ms"], s["tail_ms"], s["tail_comm_ms"]) == pytest.approx((0.1, 0.05, 0.005))
    assert s["tail_collectives"] == 1
    with pytest.raises(ValueError, match=">= 2 optimizer steps"):
        summarize(Timeline(epoch=(0, 1), step_ends=[1], compute=[], comm=[]))


def _event(name: str, start: float, end: float, **kw: Any) -> SimpleNamespace:
    fields = {"thread": 1, "is_async": False, "device_type": DeviceType.CPU, "id": 0,
              "linked_correlation_id": 0, "is_user_annotation": False, **kw}  # fmt: skip
    return SimpleNamespace(name=name, time_range=SimpleNamespace(start=start, end=end), **fields)


def test_cuda_lanes_are_device_kernels_and_steps_end_with_the_optimizers_kernels() -> None:
    cuda = {"device_type": DeviceType.CUDA, "thread": 7}
    events = [
        _event(EPOCH_MARKER, 1, 99, is_user_annotation=True, **cuda),  # its GPU mirror
        _event(EPOCH_MARKER, 0, 100, is_user_annotation=True),
        _event("Optimizer.step#SGD.step", 10, 12),
        _event("aten::_fused_sgd_", 10.5, 11.5, id=41),
        _event("Optimizer.step#SGD.step", 40, 42),
        _event("aten::_fused_sgd_", 40.5, 41.5, id=42),
        _event("nccl:all_reduce", 30, 31, is_async=True),  # host side: not a lane
        _event("void fused_sgd_kernel", 20, 25, linked_correlation_id=41, **cuda),
        _event("ncclDevKernel_AllReduce_Sum_f32_RING_LL", 24, 33, **cuda),
        _event("void conv_kernel", 26, 30, **cuda),
        _event("void fused_sgd_kernel", 45, 50, linked_correlation_id=42, **cuda),
    ]
    tl = timeline(events, cuda=True)
    assert tl.epoch == (0, 100)
    assert tl.step_ends == [25, 50]  # where the optimizer's device work ends, not the host's
    assert tl.comm == [(24, 33)]
    assert sorted(tl.compute) == [(20, 25), (26, 30), (45, 50)]
    # the same events read as a CPU run: host ops of the main thread; async gloo-like comm
    cpu = timeline(events, cuda=False)
    assert cpu.step_ends == [12, 42] and cpu.comm == [(30, 31)]
    assert (10, 12) in cpu.compute and (0, 100) not in cpu.compute  # the marker is no op
    with pytest.raises(ValueError, match=EPOCH_MARKER):
        timeline([e for e in events if e.name != EPOCH_MARKER], cuda=False)
