"""Where the deployment table measures: the GPU column only on the command's CUDA device,
and the distill command's latency options refused before any training."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli

from medauto.deploy import gpu_device


@pytest.mark.parametrize(("device", "gpu"), [("cuda", "cuda"), ("cuda:1", "cuda:1"),
                                             ("cpu", None), ("mps", None)])
def test_the_gpu_column_runs_on_the_commands_cuda_device_only(device: str,
                                                               gpu: str | None) -> None:
    """A CPU run on a machine with CUDA has no GPU column (it used to be measured whenever
    CUDA was there, on cuda:0, whatever --device said)."""
    assert gpu_device(device) == gpu


@pytest.mark.parametrize("bad", [["--latency-seconds", "0"], ["--latency-iters", "0"]])
def test_bad_latency_options_are_refused_before_training(bad: list[str],
                                                        tmp_path: Path) -> None:
    code, _ = run_cli(["distill", "--study", "nope", "--run-dir", str(tmp_path / "runs"),
                       "--device", "cpu", "--deploy-table", *bad], tmp_path)
    assert code == 2
    assert not (tmp_path / "runs" / "final").exists()
