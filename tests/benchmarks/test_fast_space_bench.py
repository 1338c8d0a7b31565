"""benchmarks/fast_space.py: both sections from real (tiny) fits on cut BreastMNIST folds."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "benchmarks" / "fast_space.py"


@pytest.mark.usefixtures("one_cpu_thread")
def test_quality_and_cpu_time_sections_come_from_the_folds(
    bench: ModuleType, micro_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEDAUTO_DATA_DIR", str(micro_data_dir))
    out = tmp_path / "fast_space.md"
    argv = ["--quality", "--cpu-times", "--config", "mobilenet_v3_small:1", "--folds", "2",
            "--seeds", "2", "--threads", "1", "--out", str(out)]
    assert bench.main(argv) == 0
    doc = out.read_text()
    assert doc.startswith(bench.HEADER)
    assert "<!-- quality:begin -->" in doc and "<!-- cpu_times:begin -->" in doc
    row = next(line for line in doc.splitlines() if line.startswith("| mobilenet_v3_small | 1 |"))
    oof = row.split("|")[3].strip()
    assert " ± " in oof and 0.0 <= float(oof.split(" ± ")[0]) <= 1.0  # two seeds: a spread
    assert "(32 training images per fold" in doc  # 2 folds of a pool of 32 train + 32 val
    # one section again replaces its block and keeps the other
    assert bench.main(["--cpu-times", "--config", "mobilenet_v3_small:1", "--folds", "2",
                       "--threads", "1", "--out", str(out)]) == 0
    again = out.read_text()
    assert again.count("<!-- cpu_times:begin -->") == 1 and row in again
