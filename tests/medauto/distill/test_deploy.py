"""The deployment table of a real distilled student: ONNX parity, int8 size, the report."""

from __future__ import annotations

import math

import pytest
from cli_runner import run_cli
from distill_helpers import STUDY
from distill_helpers import Searched

from medauto.deploy import DEPLOY_FILE
from medauto.deploy import load_rows
from medauto.distill import DISTILL_FILE
from medauto.distill import DistillResult
from medauto.distill import student_dir
from medauto.final import final_dir

pytestmark = pytest.mark.slow  # one quantization and one ONNX export of a real student

NAMES = ["ensemble", "best single", "distilled student", "int8 student", "ONNX student"]


def test_every_deployable_form_is_measured(distilled: tuple[Searched, str]) -> None:
    searched, out = distilled
    rows = {r.name: r for r in load_rows(final_dir(searched.run_dir, STUDY) / DEPLOY_FILE)}
    assert list(rows) == NAMES
    assert "deployment table: " in out
    for r in rows.values():
        assert r.size_bytes > 0 and math.isfinite(r.test_auc) and math.isfinite(r.test_acc)
        assert r.cpu_ms_b1 > 0 and r.cpu_ms_b64 > 0
    student = DistillResult.load(student_dir(searched.run_dir, STUDY) / DISTILL_FILE)
    assert rows["distilled student"].test_auc == student.test["auc"]
    assert rows["distilled student"].size_bytes == student.size_bytes


def test_onnx_student_matches_pytorch_to_1e_4_on_the_test_split(
    distilled: tuple[Searched, str],
) -> None:
    searched, _ = distilled
    rows = {r.name: r for r in load_rows(final_dir(searched.run_dir, STUDY) / DEPLOY_FILE)}
    onnx, fp32 = rows["ONNX student"], rows["distilled student"]
    assert onnx.max_abs_diff is not None and onnx.max_abs_diff <= 1e-4, onnx.note
    assert abs(onnx.test_auc - fp32.test_auc) <= 1e-3


def test_int8_student_is_smaller_by_the_ratio_it_reports(
    distilled: tuple[Searched, str],
) -> None:
    """mobilenet_v3_small (this space's student) shrinks 2.2x, not the issue's 3x: its
    per-channel scales, fp32 biases and the .pt2 program weigh much beside 1.5 M int8
    weights (docs/benchmarks/deploy.md; ResNet-18 reaches 3.9x, see
    tests/med_core/optimization/test_quantization.py)."""
    searched, _ = distilled
    rows = {r.name: r for r in load_rows(final_dir(searched.run_dir, STUDY) / DEPLOY_FILE)}
    fp32, int8 = rows["distilled student"].size_bytes, rows["int8 student"].size_bytes
    assert fp32 >= 2 * int8
    assert rows["int8 student"].note.startswith(f"{fp32 / int8:.2f}x smaller")


def test_report_shows_the_deployment_table(distilled: tuple[Searched, str]) -> None:
    searched, _ = distilled
    code, out = run_cli(["report", *searched.argv], searched.root)
    assert code == 0, out
    md = (searched.run_dir / "report" / STUDY / "report.md").read_text()
    assert "## Deployment" in md
    assert md.index("## Final model") < md.index("## Deployment")
    for name in NAMES:
        assert f"| {name} |" in md
