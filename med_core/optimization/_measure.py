"""CPU latency measurement of a model (or any callable) on one input batch."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

__all__ = ["measure_latency"]


def measure_latency(
    model: Callable[..., Any],
    example_input: torch.Tensor | tuple[torch.Tensor, ...],
    *,
    warmup: int = 5,
    iters: int = 50,
    threads: int | None = None,
    max_seconds: float | None = None,
) -> dict[str, float]:
    """Wall-clock latency of ``model(example_input)`` per batch, under ``torch.no_grad()``.

    Each of ``iters`` timed calls is measured separately with ``time.perf_counter`` after
    ``warmup`` untimed calls (which also absorb ``torch.compile``'s first-call compilation).
    Meant for CPU models: a CUDA model would need synchronisation, which this does not do.

    Args:
        model: The model or callable (e.g. the result of ``compile_quantized``).
        example_input: One input batch, or a tuple of positional inputs.
        warmup: Untimed calls before measuring (>= 0).
        iters: Timed calls (>= 1).
        threads: Intra-op CPU threads during the measurement (``torch.set_num_threads``;
            the previous value is restored). ``None`` keeps the current setting.
        max_seconds: Stop timing once the timed calls add up to this many seconds, after
            at least ``min(iters, 3)`` of them (a slow model then costs seconds, not
            ``iters`` slow calls); ``None``: always ``iters`` calls.

    Returns:
        ``{"median_ms", "p90_ms", "mean_ms", "min_ms"}`` in milliseconds per batch, plus
        ``"batch_size"``, ``"iters"`` (the timed calls made), ``"warmup"`` and ``"threads"``
        (the thread count used).

    Raises:
        ValueError: If ``warmup < 0``, ``iters < 1``, ``threads < 1`` or
            ``max_seconds <= 0``.

    Example:
        >>> stats = measure_latency(torch.nn.Linear(8, 2), torch.randn(4, 8), warmup=1, iters=3)
        >>> stats["batch_size"], stats["iters"], stats["median_ms"] > 0
        (4, 3, True)
    """
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1 or None, got {threads}")
    if max_seconds is not None and not max_seconds > 0:
        raise ValueError(f"max_seconds must be > 0 or None, got {max_seconds}")
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    previous = torch.get_num_threads()
    done = 0
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        times = np.empty(iters, dtype=np.float64)
        with torch.no_grad():
            for _ in range(warmup):
                model(*args)
            while done < iters:
                start = time.perf_counter()
                model(*args)
                times[done] = time.perf_counter() - start
                done += 1
                if (max_seconds is not None and done >= min(iters, 3)
                        and times[:done].sum() >= max_seconds):
                    break
    finally:
        if threads is not None:
            torch.set_num_threads(previous)
    times = times[:done] * 1000.0
    return {
        "median_ms": float(np.median(times)),
        "p90_ms": float(np.percentile(times, 90)),
        "mean_ms": float(times.mean()),
        "min_ms": float(times.min()),
        "batch_size": int(args[0].shape[0]),
        "iters": done,
        "warmup": warmup,
        "threads": used,
    }
