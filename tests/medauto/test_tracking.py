"""MlflowTracker on a real MLflow SQLite store: experiment kind and system metrics."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import optuna
import pytest
from mlflow import MlflowClient

from med_core.config import TrainConfig
from medauto.keys import MLFLOW_RUN_ATTR
from medauto.tracking import CLASSIC_EXPERIMENT_KIND
from medauto.tracking import EXPERIMENT_KIND_TAG
from medauto.tracking import MlflowTracker

HAS_PSUTIL = importlib.util.find_spec("psutil") is not None


def _one_trial(tmp_path: Path, name: str) -> tuple[MlflowClient, MlflowTracker, str]:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = MlflowTracker(uri, artifact_location=(tmp_path / "art").as_uri())
    study = optuna.create_study(study_name=name, direction="maximize")
    tracker.start_study(study)
    trial = study.ask()
    assert tracker.trial_callback(trial, TrainConfig()) is not None
    time.sleep(0.6)  # a few system-metrics samples, where psutil is there
    study.tell(trial, 0.5)
    tracker.end_trial(study, study.trials[0])
    tracker.flush()  # the trial's writes are queued on the tracker's background writer
    assert tracker.enabled  # nothing failed on the way
    return MlflowClient(uri), tracker, study.trials[0].user_attrs[MLFLOW_RUN_ATTR]


def test_new_and_untagged_experiments_open_in_the_classic_training_view(
    tmp_path: Path,
) -> None:
    client, tracker, _ = _one_trial(tmp_path, "kind")
    exp = client.get_experiment(tracker.experiment_id)
    assert exp.tags[EXPERIMENT_KIND_TAG] == CLASSIC_EXPERIMENT_KIND == "custom_model_development"
    # an experiment created before (untagged) is tagged when a study joins it
    other = client.create_experiment("older", artifact_location=(tmp_path / "o").as_uri())
    assert EXPERIMENT_KIND_TAG not in client.get_experiment(other).tags
    MlflowTracker(tracker.tracking_uri, experiment="older").start_study(
        optuna.create_study(study_name="older"))
    assert client.get_experiment(other).tags[EXPERIMENT_KIND_TAG] == CLASSIC_EXPERIMENT_KIND


@pytest.mark.skipif(not HAS_PSUTIL, reason="psutil is not installed: MLflow's system "
                    "metrics need it (pip install psutil)")
def test_trial_runs_get_system_metrics_where_psutil_is_present(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.1")
    client, _, run_id = _one_trial(tmp_path, "sys")
    keys = set(client.get_run(run_id).data.metrics)
    assert "system/cpu_utilization_percentage" in keys, keys


@pytest.mark.skipif(HAS_PSUTIL, reason="checks the path without psutil")
def test_without_psutil_trial_runs_are_tracked_without_system_metrics(tmp_path: Path) -> None:
    client, _, run_id = _one_trial(tmp_path, "nosys")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert not [k for k in run.data.metrics if k.startswith("system/")]


def test_workers_joining_a_new_study_at_once_share_one_parent_run(tmp_path: Path) -> None:
    """Four trackers (as four workers) start a new study in the same instant: each sees no
    parent yet, yet they end with one parent run between them, and no stray RUNNING one
    (a stray parent was left RUNNING by the killed-worker test). The experiment exists,
    untagged, so they also race to tag it (that race once turned tracking off)."""
    import threading

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="race", storage=storage)
    MlflowTracker(uri, experiment="other").start_study(  # a parent of another study
        optuna.create_study(study_name="bystander"))
    trackers = [MlflowTracker(uri, experiment="race") for _ in range(4)]
    trackers[0].client.create_experiment("race")
    barrier = threading.Barrier(len(trackers))

    def join(tracker: MlflowTracker) -> None:
        study = optuna.load_study(study_name="race", storage=storage)
        barrier.wait()
        tracker.start_study(study)

    threads = [threading.Thread(target=join, args=(t,)) for t in trackers]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert all(t.enabled for t in trackers)
    parents = {t.parent_run_id for t in trackers}
    assert len(parents) == 1, parents
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("race")
    alive = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in alive] == list(parents)
    stored = optuna.load_study(study_name="race", storage=storage).user_attrs
    assert set(stored.values()) & parents


def test_new_local_stores_start_from_one_cached_empty_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first store builds the template (MLflow's migrations, seconds); later new stores
    are copies that MLflow opens as its own, with the Default experiment pointing where a
    new store would point it, and one store seeded by several workers at once is whole."""
    import threading

    from medauto.tracking import mlflow_client

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)
    mlflow_client(f"sqlite:///{tmp_path / 'a' / 'mlflow.db'}").search_experiments()
    (template,) = (tmp_path / "cache" / "medauto").glob("mlflow-*.db")
    uri = f"sqlite:///{tmp_path / 'b' / 'mlflow.db'}"
    threads = [threading.Thread(target=mlflow_client, args=(uri,)) for _ in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["mlflow.db"]  # no leftovers
    tracker = MlflowTracker(uri)
    tracker.start_study(optuna.create_study(study_name="seeded"))
    assert tracker.enabled and tracker.parent_run_id
    (default,) = [e for e in MlflowClient(uri).search_experiments() if e.name == "Default"]
    assert default.artifact_location == str(tmp_path / "mlruns" / "0")
    assert template.stat().st_size > 0


def test_the_default_store_keeps_artifacts_where_the_docs_say(tmp_path: Path) -> None:
    """`make_tracker(None, RUN_DIR)` puts a new experiment's artifacts in
    RUN_DIR/mlartifacts, the path docs/retrain_and_report.md gives (it once named a stale
    one)."""
    from medauto.tracking import make_tracker

    tracker = make_tracker(None, tmp_path)
    assert isinstance(tracker, MlflowTracker)
    tracker.start_study(optuna.create_study(study_name="where"))
    exp = MlflowClient(tracker.tracking_uri).get_experiment(tracker.experiment_id)
    assert exp.artifact_location == (tmp_path.resolve() / "mlartifacts").as_uri()
    doc = (Path(__file__).resolve().parents[2] / "docs" / "retrain_and_report.md").read_text()
    assert "artifacts under `RUN_DIR/mlartifacts`" in doc
    assert "mlruns" not in doc  # the stale artifact root it named before
