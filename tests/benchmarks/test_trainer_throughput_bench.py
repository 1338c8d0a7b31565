"""CPU smoke tests of benchmarks/trainer_throughput.py (tiny sizes; the GPU run is manual)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "trainer_throughput.py"

TINY = [
    "--device", "cpu", "--threads", "1", "--epochs", "1", "--warmup-epochs", "0",
    "--max-train", "16", "--max-val", "8", "--batch-sizes", "16",
    "--configs", "baseline,eager-fp32", "--time-limit", "600",
]  # fmt: skip


@pytest.fixture(autouse=True)
def _restore_torch_threads() -> Iterator[None]:
    """main() sets torch's global thread count (``--threads 1``); give it back."""
    import torch

    n = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(n)


def _table_rows(md: str) -> list[list[str]]:
    """Body rows of the results table (the one whose header starts with ``| config |``
    and has a ``× baseline`` column)."""
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| config | batch | dtype"))
    rows = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split("|")])
    return rows


def test_cpu_smoke_run_writes_report(bench: ModuleType, tmp_path: Path) -> None:
    out, js = tmp_path / "tt.md", tmp_path / "tt.json"
    assert bench.main([*TINY, "--out", str(out), "--json", str(js)]) == 0
    md = out.read_text()

    # the exact command, in the section of this run, after the static header
    assert md.startswith("# Trainer throughput")
    assert "<!-- trainer_throughput:cpu:begin -->" in md
    assert "<!-- trainer_throughput:cpu:end -->" in md
    cmd = re.search(r"```bash\n(.+)\n```", md)
    assert cmd is not None
    assert cmd.group(1).startswith("python benchmarks/trainer_throughput.py --device cpu")
    assert f"--out {out}" in cmd.group(1)
    assert "CC BY-NC" in md  # the licence note on the synthetic DermaMNIST-shaped data

    rows = {r[0]: r for r in _table_rows(md)}
    assert set(rows) == {"`baseline`", "`eager-fp32`"}
    base, fast = rows["`baseline`"], rows["`eager-fp32`"]
    assert base[1] == "128" and base[-1] == "ok" and base[8] == "1.00×"
    assert "workers=0" in base[5]
    assert fast[1] == "16" and fast[-1] == "ok" and "tensor loader" in fast[5]
    assert float(fast[6].replace(",", "")) > 0
    assert re.fullmatch(r"\d+\.\d\d×", fast[8])

    data = json.loads(js.read_text())
    assert data["finished"] is True and data["killed"] is False
    by_config = {r["config"]: r for r in data["rows"]}
    b, f = by_config["baseline"], by_config["eager-fp32"]
    assert b["images_per_epoch"] == 16 and f["images_per_epoch"] == 16
    assert f["ratio"] == pytest.approx(f["images_per_s"] / b["images_per_s"])


def test_errors_go_into_the_table(bench: ModuleType, tmp_path: Path) -> None:
    out = tmp_path / "err.md"
    argv = [*TINY, "--backbone", "no_such_backbone", "--out", str(out)]
    assert bench.main(argv) == 1  # every configuration failed, but the run finished
    rows = _table_rows(out.read_text())
    assert len(rows) == 2
    for r in rows:
        assert r[-1].startswith("error: UnknownBackboneError"), r
        assert r[6] == "–" and r[8] == "–"


def test_sections_are_merged_not_overwritten(bench: ModuleType) -> None:
    doc = bench.merge_section(None, "cpu", "## CPU\ncpu table v1")
    assert doc.startswith(bench.HEADER.rstrip())
    doc = doc.replace("## What is measured", "## What is measured\n\nA hand-written line.")
    doc = bench.merge_section(doc, "gpu", "## GPU\ngpu table")
    doc = bench.merge_section(doc, "cpu", "## CPU\ncpu table v2")
    assert "cpu table v2" in doc and "cpu table v1" not in doc
    assert "gpu table" in doc and "A hand-written line." in doc
    assert doc.index("cpu table v2") < doc.index("gpu table")  # CPU keeps its place
    assert doc.count("<!-- trainer_throughput:cpu:begin -->") == 1


def test_synthetic_data_is_dermamnist_shaped(bench: ModuleType) -> None:
    ds = bench.synthetic_dermamnist(0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (7007, 1003, 2005)
    assert ds.train.images.shape[1:] == (3, 28, 28) and ds.train.images.dtype.name == "uint8"
    assert ds.info.num_classes == 7 and ds.info.task == "multi-class"
    assert ds.label_counts("train") == dict(enumerate(bench.DERMA_TRAIN_COUNTS))
    assert len(ds.label_counts("val")) == 7  # every class present in validation
    assert ds.train.images.std() > 50  # random bytes, not zeros


def test_watchdog_writes_report_and_exits_at_time_limit(tmp_path: Path) -> None:
    """A run longer than --time-limit is cut at the limit, with what it measured on disk."""
    out = tmp_path / "wd.md"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    argv = [
        sys.executable, str(SCRIPT), "--device", "cpu", "--threads", "1",
        "--max-train", "4000", "--configs", "baseline", "--time-limit", "8",
        "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "watchdog" in proc.stderr
    md = out.read_text()
    assert "stopped by the --time-limit watchdog" in md
    assert "The watchdog stopped the run at --time-limit during" in md
    # the baseline row is marked, unless start-up alone outlasted the limit (a busy machine)
    assert "killed at --time-limit" in md or "during between configurations" in md
