"""tests/browser.py: without Chromium a browser test skips with the way to install it,
and under CI (``CI=true``, set by .ci/run) it fails instead."""

from __future__ import annotations

import shutil

import browser
import pytest


@pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception),
                                              ("true", pytest.fail.Exception)])
def test_a_missing_browser_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException],
) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome, match="apt-get install -y chromium"):
        browser.chromium()


def test_a_browser_on_the_path_is_used(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda name: f"/opt/{name}" if name == "chromium-browser"
                        else None)
    monkeypatch.setenv("CI", "true")
    assert browser.chromium() == "/opt/chromium-browser"
