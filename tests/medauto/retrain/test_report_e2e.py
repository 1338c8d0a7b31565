"""`medauto report` on the shared real study and retrain (fixtures in conftest.py)."""

from __future__ import annotations

import re

import pytest
from cli_runner import run_cli
from retrain_helpers import Retrained

from medauto.report import pruning_statistics

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(retrained: Retrained) -> tuple[str, str, Retrained]:
    searched = retrained.searched
    code, out = run_cli(["report", *searched.argv], searched.root)
    assert code == 0, out
    folder = searched.run_dir / "report" / "rt"
    assert f"markdown: {folder / 'report.md'}" in out
    return (folder / "report.md").read_text(), (folder / "report.html").read_text(), retrained


def test_report_shows_the_best_trial_and_its_params(report: tuple[str, str, Retrained]) -> None:
    md, page, retrained = report
    study = retrained.searched.study()
    best = study.best_trial
    assert f"Trial {best.number}: val_auc = {best.value:.4f}" in md
    assert f"| optim.lr | {best.params['optim.lr']:.4g} |" in md
    assert "backbone: resnet18" in md  # the full config block
    assert f"<td>optim.lr</td><td>{best.params['optim.lr']:.4g}</td>" in page


def test_report_test_metrics_match_retrain_and_sit_next_to_baselines(
    report: tuple[str, str, Retrained],
) -> None:
    md, page, retrained = report
    r = retrained.result
    m, s = r.test_mean, r.test_std
    row = f"| medauto (rt) | {m['auc']:.3f} ± {s['auc']:.3f} | {m['acc']:.3f} ± {s['acc']:.3f} |"
    assert row in md
    for published in ("| ResNet-18 (28) | 0.901 | 0.863 |", "| AutoKeras | 0.871 | 0.831 |",
                      "| Google AutoML Vision | 0.919 | 0.861 |"):
        assert published in md
    for text in (md, page):
        assert "Scientific Data 10, 41 (2023)" in text
        assert "https://doi.org/10.1038/s41597-022-01721-8" in text
    assert f"AUC: {m['auc'] - 0.919:+.3f} vs. the best published row (Google AutoML Vision" in md
    for model in r.models:  # per-model table
        assert f"| {model.name} | resnet18 |" in md


def test_report_pruning_statistics_match_the_study(report: tuple[str, str, Retrained]) -> None:
    md, _, retrained = report
    study = retrained.searched.study()
    st = pruning_statistics(study)
    run = sum(t.user_attrs["epochs_run"] for t in study.trials)
    budget = sum(t.user_attrs["config"]["epochs"] for t in study.trials)
    assert (st.epochs_run, st.epochs_budget, st.trials) == (run, budget, 2)
    assert f"| epochs trained | {run} |" in md
    assert f"| epochs without pruning (each trial to its max_epochs) | {budget} |" in md


def test_report_quantization_table(report: tuple[str, str, Retrained]) -> None:
    md, page, retrained = report
    q = retrained.result.quantization
    assert q is not None
    assert (f"| float32 | {q.float_size_bytes / 1e6:.2f} | {q.float_test['auc']:.3f} | "
            f"{q.float_test['acc']:.3f} |") in md
    assert (f"| int8 (static) | {q.int8_size_bytes / 1e6:.2f} | {q.int8_test['auc']:.3f} | "
            f"{q.int8_test['acc']:.3f} |") in md
    assert f"{q.size_ratio:.2f}x smaller on disk" in md
    assert "<td>int8 (static)</td>" in page


def test_html_is_self_contained_and_markdown_links_pngs(
    report: tuple[str, str, Retrained],
) -> None:
    md, page, retrained = report
    folder = retrained.searched.run_dir / "report" / "rt"
    for png in ("history.png", "importance.png"):
        assert f"]({png})" in md
        assert (folder / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', page)
    gallery = len(list(folder.glob("gallery-*.png")))
    assert len(srcs) == 3 + gallery  # history, importances, the retrained model's ROC
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert "<script" not in page and "<link" not in page  # nothing fetched when opened


def test_report_shows_the_honest_test_results(report: tuple[str, str, Retrained]) -> None:
    md, page, retrained = report
    ev = retrained.result.evaluation
    assert "### Retrained model (seed 0): honest test results" in md
    lo, hi = ev["ci"]["auc"]
    assert f"| auc | {ev['metrics']['auc']:.3f} | [{lo:.3f}, {hi:.3f}] |" in md
    for c in ev["per_class"]:
        rates = f"{c['sensitivity']:.3f} | {c['specificity']:.3f}"
        assert f"| {c['class']} | {c['n']} | {rates} |" in md
    assert "| true \\ predicted | malignant | normal, benign |" in md
    assert "](retrain_roc.png)" in md and "1000 bootstrap resamples" in page
    for w in ev["warnings"]:
        assert f"WARNING: {w}" in md


def test_the_honest_results_render_in_a_headless_browser(
    report: tuple[str, str, Retrained], tmp_path
) -> None:
    """Chromium shows the retrained model's honest test results as a reader sees them:
    the CI table, per-class sensitivity and specificity, the named confusion matrix, the
    bootstrap note, every warning, and the ROC curve embedded."""
    from browser import assert_screenshot
    from browser import render

    _, _, retrained = report
    ev = retrained.result.evaluation
    page = retrained.searched.run_dir / "report" / "rt" / "report.html"
    shot, text = render(page.as_uri(), tmp_path, "report-honest")
    assert_screenshot(shot, min_bytes=5_000, min_colours=20)
    lines = text.splitlines()
    assert "Retrained model (seed 0): honest test results" in lines
    assert {"95 % CI", "sensitivity", "specificity", "true \\ predicted"} <= set(lines)
    lo, hi = ev["ci"]["auc"]
    assert f"[{lo:.3f}, {hi:.3f}]" in lines
    for c in ev["per_class"]:
        assert c["class"] in lines and f"{c['sensitivity']:.3f}" in lines
    assert any("1000 bootstrap resamples" in ln for ln in lines)
    for w in ev["warnings"]:
        assert any(w in ln for ln in lines), w
    roc = r'<img alt="[^"]*test ROC curve" src="data:image/png;base64,'
    assert re.search(roc, page.read_text())
