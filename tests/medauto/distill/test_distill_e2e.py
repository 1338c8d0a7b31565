"""``medauto distill`` end to end: a real search's ensemble distilled into a student."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runner import run_cli
from distill_helpers import STUDY
from distill_helpers import Searched

from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from medauto.distill import DISTILL_FILE
from medauto.distill import DistillError
from medauto.distill import DistillResult
from medauto.distill import distill
from medauto.distill import student_dir
from medauto.final import final_dir
from medauto.model_file import load_model
from medauto.scoring import eval_loader
from medauto.scoring import predict_scores
from medauto.scoring import split_metrics
from medauto.storage import default_storage_url
from medauto.storage import open_storage
from medauto.study import load_existing_study


@pytest.mark.slow  # shares the fixture that also measures the deployment table
def test_distill_trains_tests_once_saves_a_model_file_and_logs_to_mlflow(
    distilled: tuple[Searched, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    searched, out = distilled
    folder = student_dir(searched.run_dir, "kd")
    result = DistillResult.load(folder / DISTILL_FILE)
    assert "AUC gap closed" in out and f"{folder}/{DISTILL_FILE}" in out
    assert (result.temperature, result.alpha, result.epochs_run) == (3.0, 0.5, 2)
    assert result.mode == "cached" and result.teacher_samples == 96  # once per train image
    # the saved file is a normal model file (load_model: what `medauto export` reads), and
    # its test metrics are what it predicts
    loaded = load_model(folder / result.model)
    assert loaded.meta["distill"]["mode"] == "cached"
    ds = load_dataset("breastmnist", data_dir=searched.data_dir)
    loader = eval_loader(ds.test, loaded.config, spatial_dims=2, batch_size=64)
    y, s = predict_scores(loaded.model, loader, task="binary", tta=loaded.config.tta)
    assert split_metrics("binary", y, s)["auc"] == pytest.approx(result.test["auc"], abs=1e-6)
    assert result.test_teacher and result.test_single and result.n_test == 48
    # MLflow: a distill child run of the study's run, with the student as a logged model
    from mlflow import MlflowClient

    uri = f"sqlite:///{searched.run_dir.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow["run_id"])  # type: ignore[index]
    assert run.data.tags["medauto.role"] == "distill"
    assert run.data.metrics["test_auc"] == pytest.approx(result.test["auc"])
    assert run.data.params["temperature"] == "3.0"
    assert len(client.get_metric_history(run.info.run_id, "val_auc")) == result.epochs_run
    (model_id,) = result.mlflow["model_ids"]  # type: ignore[index]
    model = client.get_logged_model(model_id)
    assert model.status.name == "READY" and model.source_run_id == run.info.run_id
    assert model.metrics and {m.key for m in model.metrics} >= {"test_auc"}
    import mlflow.pyfunc  # the student serves like the final model (a pyfunc logged model)

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert mlflow.pyfunc.load_model(f"models:/{model_id}") is not None


def test_a_student_of_another_input_shape_is_refused_before_training(
    searched: Searched,
) -> None:
    out_dir = searched.root / "refused"
    code, out = run_cli(["distill", *searched.argv, "--device", "cpu", "--student", "r3d_18",
                         "--out", str(out_dir)], searched.root)
    assert code == 1
    assert not out_dir.exists()  # refused up front: nothing trained, nothing written


def test_a_student_of_other_classes_is_refused_with_a_clear_error(
    searched: Searched, medmnist_dir: Path, tmp_path: Path,
) -> None:
    src = cut_medmnist(medmnist_dir / "pneumoniamnist.npz", tmp_path / "pneumoniamnist.npz",
                       16, both_classes=True)
    other = load_dataset(src)
    study = load_existing_study("kd", open_storage(default_storage_url(searched.run_dir)))
    with pytest.raises(DistillError) as e:
        distill(study, run_dir=searched.run_dir, dataset=other, tracking=False,
                out_dir=tmp_path / "out")
    assert str(e.value).startswith("student: its classes must match the teacher's (binary, ")
    assert not (tmp_path / "out").exists()
    with pytest.raises(DistillError, match=r"got 'r3d_18' \(a 3-D backbone\)"):
        distill(study, run_dir=searched.run_dir, student="r3d_18", tracking=False,
                data_dir=searched.data_dir, out_dir=tmp_path / "out")


def test_the_ensemble_teacher_is_the_predictor_on_the_students_batches(
    searched: Searched,
) -> None:
    """At the members' own size the teacher's probabilities are ``predict_proba``'s (the
    predictor's weights, TTA and binary threshold), from the normalised batch."""
    import torch

    from med_core.data import build_loader
    from medauto.distill import EnsembleTeacher
    from medauto.ensemble import Predictor

    pred = Predictor.load(final_dir(searched.run_dir, STUDY) / "predictor")
    ds = load_dataset("breastmnist", data_dir=searched.data_dir)
    x, _ = next(iter(build_loader(ds.val, batch_size=48, train=False)))
    got = EnsembleTeacher(pred)(x)
    want = torch.from_numpy(pred.predict_proba(ds.val.images)).float()
    assert pred.threshold is not None and torch.allclose(got, want, atol=1e-5)
