"""CPU smoke test of benchmarks/trial_packing.py (K = 1, 2 with one tiny epoch)."""

from __future__ import annotations

import json
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "trial_packing.py"


# Starts four Python processes that each import torch (~90 s on a loaded 2-core box).
@pytest.mark.slow
def test_cpu_smoke_k1_k2(bench: ModuleType, tmp_path: Path) -> None:
    out, js = tmp_path / "tp.md", tmp_path / "tp.json"
    argv = ["--device", "cpu", "--ks", "1,2", "--epochs", "1", "--trials-per-worker", "1",
            "--backbone", "mobilenet_v3_small", "--batch", "16", "--max-train", "32",
            "--max-val", "16", "--threads-per-worker", "1", "--time-limit", "120",
            "--out", str(out), "--json", str(js)]
    assert bench.main(argv) == 0

    md = out.read_text(encoding="utf-8")
    assert "python benchmarks/trial_packing.py --device cpu --ks 1,2" in md
    assert "| torch |" in md and "| CPU |" in md
    assert "| `plain` | 1 | 1/1 |" in md and "| `plain` | 2 | 2/2 |" in md
    assert "**Target**" in md

    rows = json.loads(js.read_text())["rows"]
    assert [(r["mode"], r["k"], r["finished"], r["status"]) for r in rows] == [
        ("plain", 1, 1, "ok"), ("plain", 2, 2, "ok"),
    ]
    for r in rows:
        assert r["wall_s"] > 0 and r["trials_per_gpu_hour"] > 0 and r["images_per_s"] > 0
        assert r["trial_images_per_s"] > 0
    assert rows[0]["ratio_same_mode"] == pytest.approx(1.0)
    assert rows[1]["ratio_plain_k1"] == pytest.approx(
        rows[1]["trials_per_gpu_hour"] / rows[0]["trials_per_gpu_hour"]
    )
