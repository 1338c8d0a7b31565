"""measure_latency and the optional-import helper."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from med_core.optimization import measure_latency
from med_core.optimization._imports import try_import


class _Sleeper(nn.Module):
    """Takes at least ``seconds`` per call, so the measured latency has a known floor."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        time.sleep(self.seconds)
        return x


def test_latency_statistics_and_call_count() -> None:
    model = _Sleeper(0.004)
    stats = measure_latency(model, torch.zeros(3, 1, 4, 4), warmup=2, iters=5)
    assert model.calls == 7  # warmup + timed calls
    assert 4.0 <= stats["min_ms"] <= stats["median_ms"] <= stats["p90_ms"]
    assert stats["median_ms"] < 200
    assert (stats["batch_size"], stats["iters"], stats["warmup"]) == (3, 5, 2)


def test_threads_are_set_for_the_measurement_and_restored() -> None:
    before = torch.get_num_threads()
    seen: list[int] = []

    def probe(x: torch.Tensor) -> torch.Tensor:
        seen.append(torch.get_num_threads())
        return x

    stats = measure_latency(probe, torch.zeros(1, 1), warmup=0, iters=2, threads=1)
    assert seen == [1, 1] and stats["threads"] == 1
    assert torch.get_num_threads() == before


def test_max_seconds_stops_a_slow_model_early_after_three_calls() -> None:
    model = _Sleeper(0.05)
    stats = measure_latency(model, torch.zeros(1, 1), warmup=1, iters=100, max_seconds=0.12)
    assert stats["iters"] == 3 and model.calls == 4  # 3 x 50 ms pass 0.12 s; warmup + 3
    stats = measure_latency(model, torch.zeros(1, 1), warmup=0, iters=2, max_seconds=1e-6)
    assert stats["iters"] == 2  # never more than iters, never fewer than min(iters, 3)
    assert stats["median_ms"] >= 50


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_seconds": 0}, "max_seconds must be > 0 or None, got 0"),
        ({"iters": 0}, "iters must be >= 1, got 0"),
        ({"warmup": -1}, "warmup must be >= 0, got -1"),
        ({"threads": 0}, "threads must be >= 1 or None, got 0"),
    ],
)
def test_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        measure_latency(nn.Identity(), torch.zeros(1), **kwargs)


def test_try_import_defers_the_error_and_names_the_extra() -> None:
    with try_import("onnx") as ok:
        import json  # noqa: F401
    ok.check()
    assert ok.is_successful()

    with try_import("onnx") as missing:
        import a_module_that_does_not_exist  # noqa: F401
    assert not missing.is_successful()
    with pytest.raises(ImportError, match=r"'a_module_that_does_not_exist'.*medauto\[onnx\]"):
        missing.check()

    with pytest.raises(ValueError, match="unknown extra 'gpu'"):
        try_import("gpu")
