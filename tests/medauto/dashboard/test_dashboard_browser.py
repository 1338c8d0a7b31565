"""Headless Chromium renders the study in ``medauto dashboard``: screenshots under the test's
temp dir, and the rendered DOM shows the study name, the metric's name, the trial count, the
user attributes, the trial's note and its artifacts. Needs Debian's ``chromium`` (CI
installs it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import assert_screenshot
from browser import render
from dashboard_helpers import DashboardProcess
from dashboard_helpers import DemoStudy
from dashboard_helpers import http_json

pytestmark = pytest.mark.slow

def _study_id(dashboard: DashboardProcess, name: str) -> int:
    summaries = http_json(f"{dashboard.base}/api/studies")["study_summaries"]
    return int(next(s["study_id"] for s in summaries if s["study_name"] == name))


def test_study_page_renders_name_and_best_trial(
    dashboard: DashboardProcess, demo_study: DemoStudy, tmp_path: Path
) -> None:
    study_id = _study_id(dashboard, demo_study.name)
    shot, text = render(f"{dashboard.base}/dashboard/studies/{study_id}", tmp_path, "study")
    assert_screenshot(shot)
    assert f"{demo_study.name} (id={study_id})" in text
    assert f"Best Trial (number={demo_study.best_number})" in text
    assert "History" in text and "Hyperparameter Importance" in text
    assert "val_auc" in text and "Objective 0" not in text  # the study names its metric


@pytest.fixture(scope="module")
def trials_page(
    dashboard: DashboardProcess, demo_study: DemoStudy, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[str]]:
    """The study's "Trials (List)" page, rendered once: (screenshot, visible text lines)."""
    study_id = _study_id(dashboard, demo_study.name)
    shot, text = render(
        f"{dashboard.base}/dashboard/studies/{study_id}/trials",
        tmp_path_factory.mktemp("trials-page"), "trials",
    )
    return shot, text.splitlines()


def test_trials_page_renders_count_and_user_attributes(
    trials_page: tuple[Path, list[str]], demo_study: DemoStudy
) -> None:
    shot, lines = trials_page
    assert_screenshot(shot)
    assert any(demo_study.name in line for line in lines)
    assert f"{len(demo_study.states)} Trials" in lines  # the list's header: "5 Trials"
    for number in range(len(demo_study.states)):
        assert f"Trial {number}" in lines
    assert {"Complete", "Pruned", "Fail", "Best Trial"} <= set(lines)
    # the first trial is selected: its user attributes are on the page
    attrs = demo_study.user_attrs[0]
    assert f"backbone {attrs['backbone']}" in lines
    assert f"mlflow_run_id {attrs['mlflow_run_id']}" in lines
    assert any(line.startswith("config {") for line in lines)
    assert any(line.startswith("history [{") for line in lines)
    # the selected trial's note, rendered from Markdown: heading, facts, config as YAML
    assert "Trial 0 · COMPLETE · val_auc 0.7000" in lines, lines
    assert {"Epochs", "Configuration"} <= set(lines)


def test_trials_page_shows_the_trials_artifacts(
    trials_page: tuple[Path, list[str]], demo_study: DemoStudy
) -> None:
    """The UI shows the Artifacts section (with previews) only when the dashboard was
    started with an artifact store."""
    _, lines = trials_page
    assert "Artifacts" in lines, "no Artifacts section: dashboard has no artifact store"
    for filename in demo_study.artifacts[0]:
        assert filename in lines, f"{filename} not rendered"
