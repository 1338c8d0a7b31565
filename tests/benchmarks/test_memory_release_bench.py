"""CPU smoke test of benchmarks/memory_release.py (the GPU run is manual; its result is in
docs/benchmarks/memory_release.md)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "memory_release.py"


def test_cpu_run_counts_memory_per_trial_and_passes(
    bench: ModuleType, tmp_path: Path, medmnist_dir: Path
) -> None:
    out, js = tmp_path / "mr.md", tmp_path / "mr.json"
    argv = ["--device", "cpu", "--trials", "3", "--epochs", "1", "--max-train", "48",
            "--backbones", "mobilenet_v3_small,regnet_x_400mf", "--data-dir", str(medmnist_dir),
            "--out", str(out), "--json", str(js)]
    assert bench.main(argv) == 0

    md = out.read_text(encoding="utf-8")
    assert "python benchmarks/memory_release.py --device cpu --trials 3" in md
    assert "| no live torch.Tensor survives a trial |" in md and "PASS" in md
    assert "FAIL" not in md
    data = json.loads(js.read_text(encoding="utf-8"))
    assert len(data["trials"]) == 3 and len(data["samples"]) == 4  # + one after the last
    assert all(s["live_tensors"] == 0 and s["rss_mib"] > 0 for s in data["samples"])
    assert all(s["allocated_mib"] is None for s in data["samples"])  # CUDA only


def test_memory_kept_across_trials_fails_the_checks(bench: ModuleType) -> None:
    growing = [bench.Sample(trial=i, allocated_mib=10.0 + i, reserved_mib=64.0,
                            prev_peak_mib=100.0, live_tensors=i, rss_mib=500.0)
               for i in range(3)]
    results = {name: ok for name, _, ok in bench.checks(growing, 0.5, without_cublas_mib=12.0)}
    assert results == {
        "allocated device memory does not grow from trial to trial": False,
        "allocated device memory back at the baseline once cuBLAS's workspaces are freed": False,
        "no live torch.Tensor survives a trial": False,
    }
    # The first trial's one-off workspaces (65 MiB on an H200) are kept, then nothing grows.
    steady = [bench.Sample(trial=i, allocated_mib=0.0 if i == 0 else 65.0, reserved_mib=66.0,
                           prev_peak_mib=100.0, live_tensors=0, rss_mib=500.0) for i in range(3)]
    assert all(ok for _, _, ok in bench.checks(steady, 0.0, without_cublas_mib=0.0))
