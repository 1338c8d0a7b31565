"""CPU smoke test of benchmarks/search_overhead.py (a 3-trial search; the GPU run is manual)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "search_overhead.py"


def test_cpu_smoke_search_breakdown(bench: ModuleType, tmp_path: Path) -> None:
    out, js = tmp_path / "so.md", tmp_path / "so.json"
    argv = ["--device", "cpu", "--trials", "3", "--epochs", "1", "--batch", "16",
            "--backbone", "mobilenet_v3_small", "--max-train", "32", "--max-val", "16",
            "--pruner", "none", "--threads", "1", "--time-limit", "120",
            "--out", str(out), "--json", str(js)]
    assert bench.main(argv) == 0

    md = out.read_text(encoding="utf-8")
    assert "python benchmarks/search_overhead.py --device cpu --trials 3" in md
    assert "| torch |" in md and "| CPU |" in md
    for category in bench.CATEGORIES:
        assert f"| {category} |" in md
    assert "**Overhead**" in md and "MLflow tracking on" in md

    result = json.loads(js.read_text())
    assert result["returncode"] == 0
    assert result["trials_trained"] == 3
    assert result["states"] == {"COMPLETE": 3}
    rows = {r["category"]: r for r in result["categories"]}
    assert sum(r["share_pct"] for r in rows.values()) == pytest.approx(100.0, abs=0.5)
    assert all(r["seconds"] >= 0 for r in rows.values())
    for must_be_positive in ("training steps", "process start + imports", "MLflow logging",
                             "sampler ask/tell + storage round-trips",
                             "model construction (Trainer set-up)", "evaluation (validation)",
                             "artifact plotting + upload"):
        assert rows[must_be_positive]["seconds"] > 0, must_be_positive
    assert 0 < result["overhead_pct"] < 100
    # the per-trial row: positive, below the wall time per trial, and printed
    assert 0 < result["per_trial_overhead_ms"] < 1e3 * result["wall_s"] / 3
    assert f"**{result['per_trial_overhead_ms']:.0f} ms** per trial" in md
    phases = {r["phase"] for r in result["records"]}
    assert {"ask", "tell", "objective", "model_setup", "train_steps:0", "artifacts",
            "tracking_trial_start", "tracking_epoch_log", "release_memory"} <= phases
