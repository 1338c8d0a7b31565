"""``medauto dashboard`` as a real process: the study, its trials, user attributes and
artifacts read back through optuna-dashboard's HTTP API; loopback-only by default."""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest
from dashboard_helpers import DashboardProcess
from dashboard_helpers import DemoStudy
from dashboard_helpers import http_get
from dashboard_helpers import http_json
from dashboard_helpers import listening_addresses
from dashboard_helpers import non_loopback_ipv4

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _study_id(dashboard: DashboardProcess, name: str) -> int:
    summaries = http_json(f"{dashboard.base}/api/studies")["study_summaries"]
    ids = [s["study_id"] for s in summaries if s["study_name"] == name]
    assert len(ids) == 1, summaries
    return int(ids[0])


def _detail(dashboard: DashboardProcess, demo: DemoStudy) -> dict[str, Any]:
    return http_json(f"{dashboard.base}/api/studies/{_study_id(dashboard, demo.name)}")  # type: ignore[no-any-return]


def test_api_lists_the_study_and_its_trials(
    dashboard: DashboardProcess, demo_study: DemoStudy
) -> None:
    summaries = http_json(f"{dashboard.base}/api/studies")["study_summaries"]
    assert [s["study_name"] for s in summaries] == [demo_study.name]
    assert summaries[0]["directions"] == ["maximize"]

    detail = _detail(dashboard, demo_study)
    assert detail["name"] == demo_study.name
    trials = sorted(detail["trials"], key=lambda t: t["number"])
    assert len(trials) == len(demo_study.states) == 5
    assert [t["state"].upper() for t in trials] == demo_study.states
    assert [t["number"] for t in detail["best_trials"]] == [demo_study.best_number]
    assert {p["name"] for p in trials[0]["params"]} == {"optim.lr", "model.backbone"}
    assert [iv["step"] for iv in trials[0]["intermediate_values"]] == [1, 2, 3, 4]


def test_api_shows_backbone_config_history_and_mlflow_run(
    dashboard: DashboardProcess, demo_study: DemoStudy
) -> None:
    import json

    trials = sorted(_detail(dashboard, demo_study)["trials"], key=lambda t: t["number"])
    for trial in trials:
        attrs = {a["key"]: a["value"] for a in trial["user_attrs"]}
        expected = demo_study.user_attrs[trial["number"]]
        assert attrs["backbone"] == expected["backbone"]
        assert attrs["mlflow_run_id"] == expected["mlflow_run_id"]
        assert json.loads(attrs["config"]) == expected["config"]
        assert json.loads(attrs["history"]) == expected["history"]


def test_api_lists_each_trials_artifacts(
    dashboard: DashboardProcess, demo_study: DemoStudy
) -> None:
    trials = sorted(_detail(dashboard, demo_study)["trials"], key=lambda t: t["number"])
    for trial in trials:
        listed = {a["filename"]: a for a in trial["artifacts"]}
        expected = demo_study.artifacts.get(trial["number"], {})
        assert set(listed) == set(expected), f"trial {trial['number']}: {sorted(listed)}"
        assert all(a["mimetype"] == "image/png" for a in listed.values())


def test_dashboard_serves_the_artifact_bytes(
    dashboard: DashboardProcess, demo_study: DemoStudy
) -> None:
    """The PNGs are downloadable (what the trial page's previews load): this needs the
    dashboard to be started with the run directory's artifact store."""
    meta = http_json(f"{dashboard.base}/api/meta")
    assert meta["artifact_is_available"] is True, (
        "medauto dashboard was started without an artifact store "
        "(run_server(..., artifact_store=artifact_store_for(run_dir)))"
    )
    detail = _detail(dashboard, demo_study)
    study_id = _study_id(dashboard, demo_study.name)
    served = 0
    for trial in detail["trials"]:
        for art in trial["artifacts"]:
            url = f"{dashboard.base}/artifacts/{study_id}/{trial['trial_id']}/{art['artifact_id']}"
            status, body, headers = http_get(url)
            assert status == 200, f"GET {url} -> {status}"
            assert headers.get("Content-Type") == "image/png"
            assert body[:8] == PNG_SIGNATURE
            assert body == demo_study.artifacts[trial["number"]][art["filename"]]
            served += 1
    assert served == 4


def test_default_bind_is_loopback_only(dashboard: DashboardProcess) -> None:
    assert listening_addresses(dashboard.port) == {"127.0.0.1"}
    assert "dashboard bound to" not in dashboard.stderr()  # no public-address warning
    for address in non_loopback_ipv4():
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((address, dashboard.port), timeout=3).close()


def test_public_host_warns_and_is_reachable(
    start_dashboard: Callable[..., DashboardProcess], demo_study: DemoStudy
) -> None:
    server = start_dashboard(demo_study.url, demo_study.run_dir, "--host", "0.0.0.0")
    stderr = server.stderr()
    assert "dashboard bound to 0.0.0.0" in stderr, stderr
    assert "anyone who can reach this address can read the study" in stderr
    assert listening_addresses(server.port) == {"0.0.0.0"}
    for address in non_loopback_ipv4():  # the check above is not vacuous: this one connects
        socket.create_connection((address, server.port), timeout=3).close()
    assert _study_id(server, demo_study.name) >= 1
