"""``--profile``: ``torch.profiler`` on steps with and without checkpointing (top ops by
device time, kernel launches per step, GPU busy share).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._common import synchronize
from benchmarks._gc_measure import Bench

__all__ = ["profile_steps"]


# ============================================================================ profiling
_DEVICE_CPU = torch.autograd.DeviceType.CPU  # type: ignore[attr-defined]


_DEVICE_CUDA = torch.autograd.DeviceType.CUDA  # type: ignore[attr-defined]


_LAUNCH_NAMES = (
    "cudaLaunchKernel",
    "cudaLaunchKernelExC",
    "cuLaunchKernel",
    "cuLaunchKernelEx",
    "cudaLaunchCooperativeKernel",
    "cudaGraphLaunch",
)


_CATEGORIES: list[tuple[str, tuple[str, ...]]] = [
    ("convolution", ("conv",)),
    (
        "matmul / attention",
        (
            "::mm",
            "::bmm",
            "::addmm",
            "::baddbmm",
            "::_scaled_dot",
            "attention",
            "::linear",
            "::matmul",
        ),
    ),
    ("batch norm", ("batch_norm",)),
    ("layer norm", ("layer_norm",)),
    ("casts (_to_copy)", ("::_to_copy",)),
    ("copies (copy_/clone)", ("::copy_", "::clone")),
    ("optimizer", ("_foreach", "sgd")),
]


_COUNTED_OPS = (
    "aten::convolution",
    "aten::convolution_backward",
    "aten::batch_norm",
    "aten::layer_norm",
    "aten::linear",
    "aten::_to_copy",
    "aten::clone",
    "aten::copy_",
)


def _self_device_us(e: Any) -> float:
    for attr in ("self_device_time_total", "self_cuda_time_total"):
        v = getattr(e, attr, None)
        if v is not None:
            return float(v)
    return 0.0


def _category(name: str) -> str:
    low = name.lower()
    for cat, keys in _CATEGORIES:
        if any(k in low for k in keys):
            return cat
    return "other (elementwise, pooling, ...)"


def profile_steps(
    bench: Bench,
    features: Callable[[torch.Tensor], Any],
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    trace: Path | None,
) -> dict[str, Any]:
    """``torch.profiler`` over ``steps`` training steps; per-step aggregates."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile

    cuda = bench.device.type == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    synchronize(bench.device)
    with profile(activities=acts) as prof:
        for _ in range(steps):
            bench.step(features, x, y)
        synchronize(bench.device)
    if trace is not None:
        trace.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(trace))
    events = prof.events()
    dev_events = [e for e in events if getattr(e, "device_type", _DEVICE_CPU) == _DEVICE_CUDA]
    launches = sum(1 for e in events if e.name in _LAUNCH_NAMES)
    gpu_us = sum(e.time_range.elapsed_us() for e in dev_events)
    ops: dict[str, dict[str, float]] = {}
    for a in prof.key_averages():
        if getattr(a, "device_type", _DEVICE_CPU) != _DEVICE_CPU or a.key in _LAUNCH_NAMES:
            continue
        ops[a.key] = {
            "calls": a.count / steps,
            "self_device_ms": _self_device_us(a) / 1e3 / steps,
            "self_cpu_ms": a.self_cpu_time_total / 1e3 / steps,
        }
    cats: dict[str, float] = {}
    for name, o in ops.items():
        c = _category(name)
        cats[c] = cats.get(c, 0.0) + (o["self_device_ms"] if cuda else o["self_cpu_ms"])
    return {
        "device_ops_per_step": len(dev_events) / steps if cuda else None,
        # None where the trace holds no runtime launch events (then only GPU ops are known)
        "launches_per_step": launches / steps if cuda and launches else None,
        "gpu_ms_per_step": gpu_us / 1e3 / steps if cuda else None,
        "aten_calls_per_step": sum(o["calls"] for n, o in ops.items() if n.startswith("aten::")),
        "counted_ops": {n: ops[n]["calls"] if n in ops else 0.0 for n in _COUNTED_OPS},
        "categories_ms": cats,
        "ops": ops,
    }
