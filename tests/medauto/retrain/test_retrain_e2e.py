"""`medauto retrain` end to end on real data, real Optuna storage and a real MLflow store.

One search (2 ResNet-18 trials) and one retrain (top-2 ensemble x seeds 0 and 1, static
int8) are shared by every test here (fixtures in conftest.py).
"""

from __future__ import annotations

import functools
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from cli_runner import run_cli
from retrain_helpers import STUDY
from retrain_helpers import Retrained
from retrain_helpers import Searched

from med_core.models import build_classifier
from med_core.training import compute_metrics
from medauto.exceptions import MedautoError

pytestmark = pytest.mark.slow


@functools.lru_cache(maxsize=8)
def _independent_scores(model_file: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """Test labels and positive-class scores of a saved model, computed without medauto's
    loaders: raw .npz → normalised tensor → freshly built classifier → softmax."""
    state = torch.load(model_file, map_location="cpu", weights_only=True)
    model = build_classifier(
        state["config"]["model"], num_classes=state["num_classes"], in_chans=state["in_chans"],
        img_size=tuple(state["img_size"]),
    )
    model.load_state_dict(state["model"])
    model.eval()
    with np.load(data_dir / "breastmnist.npz") as d:
        x = torch.from_numpy(d["test_images"]).float().div(255).sub(0.5).div(0.5).unsqueeze(1)
        y = d["test_labels"][:, 0].astype(np.int64)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=1)[:, 1].numpy()
    return y, p


def _close(
    a: dict[str, float], b: dict[str, float], keys: tuple[str, ...] = ("auc", "acc")
) -> bool:
    return all(abs(a[k] - b[k]) <= 1e-6 for k in keys)


def test_test_metrics_match_a_separate_evaluation_of_each_saved_model(
    retrained: Retrained,
) -> None:
    result = retrained.result
    assert len(result.models) == 4 and result.n_test == 48
    for m in result.models:
        y, p = _independent_scores(retrained.out_dir / m.path, retrained.searched.data_dir)
        mine = {k: float(v) for k, v in compute_metrics("binary", y, p).items()}
        all_metrics = ("auc", "acc", "balanced_acc", "macro_f1")
        assert _close(mine, m.test, all_metrics), (m.name, mine, m.test)
        with np.load(retrained.out_dir / "predictions.npz") as npz:
            assert np.abs(npz[m.name] - p).max() < 1e-5
            assert np.array_equal(npz["y_true"], y)


def test_ensemble_scores_are_the_mean_of_its_members(retrained: Retrained) -> None:
    result = retrained.result
    data_dir = retrained.searched.data_dir
    assert result.ensemble == 2
    for seed_result in result.per_seed:
        assert len(seed_result.members) == 2
        by_name = {m.name: m for m in result.models}
        scores = [
            _independent_scores(retrained.out_dir / by_name[n].path, data_dir)
            for n in seed_result.members
        ]
        y = scores[0][0]
        mean = (scores[0][1] + scores[1][1]) / 2
        with np.load(retrained.out_dir / "predictions.npz") as npz:
            assert np.abs(npz[f"ensemble-seed{seed_result.seed}"] - mean).max() < 1e-6
        expected = {k: float(v) for k, v in compute_metrics("binary", y, mean).items()}
        assert _close(expected, seed_result.test), (expected, seed_result.test)


def test_seeds_give_mean_and_sample_std(retrained: Retrained) -> None:
    result = retrained.result
    assert result.seeds == [0, 1] and [s.seed for s in result.per_seed] == [0, 1]
    for k in ("auc", "acc"):
        vals = [s.test[k] for s in result.per_seed]
        assert result.test_mean[k] == pytest.approx(np.mean(vals), abs=1e-12)
        assert result.test_std[k] == pytest.approx(np.std(vals, ddof=1), abs=1e-12)
    assert f"{result.test_mean['auc']:.4f} ± {result.test_std['auc']:.4f}" in retrained.stdout
    # the two seeds really trained different models
    a, b = (retrained.out_dir / f"models/trial{result.trials[0]}-seed{s}/model.pt" for s in (0, 1))
    wa = torch.load(a, weights_only=True)["model"]
    wb = torch.load(b, weights_only=True)["model"]
    assert any(not torch.equal(wa[k], wb[k]) for k in wa if wa[k].is_floating_point())


def test_top_k_trials_in_value_order_full_budget_best_val_weights(
    searched: Searched, retrained: Retrained
) -> None:
    study = searched.study()
    result = retrained.result
    by_value = sorted(study.trials, key=lambda t: -t.value)
    assert result.trials == [t.number for t in by_value[:2]]
    assert result.trial_values == [t.value for t in by_value[:2]]
    assert result.weights == "best" and not result.train_on_val
    for m in result.models:
        assert m.train_samples == 48  # the training split only
        cfg = study.trials[m.trial].user_attrs["config"]
        assert m.epochs_run == cfg["epochs"]  # the full epoch budget, nothing pruned
        state = torch.load(retrained.out_dir / m.path, weights_only=True)
        assert state["seed"] == m.seed and state["config"]["seed"] == m.seed
        assert state["config"]["optim"] == cfg["optim"]  # the trial's hyperparameters


def test_train_on_val_trains_on_train_plus_val_and_keeps_the_last_epoch(
    searched: Searched, tmp_path: Path
) -> None:
    from medauto.retrain import RetrainOptions
    from medauto.retrain import retrain

    result = retrain(searched.study(), RetrainOptions(train_on_val=True), device="cpu",
                     tracking=False, run_dir=searched.run_dir, out_dir=tmp_path / "tov")
    (m,) = result.models
    assert result.train_on_val and result.weights == m.weights == "last"
    assert m.epoch == m.epochs_run - 1
    assert m.train_samples == 48 + 24
    state = torch.load(tmp_path / "tov" / m.path, weights_only=True)
    assert state["config"]["data"]["train_on_val"] is True and state["weights"] == "last"


def test_result_json_round_trips(retrained: Retrained) -> None:
    from medauto.retrain import RetrainResult

    result = retrained.result
    again = RetrainResult.from_dict(result.to_dict())
    assert again.to_dict() == result.to_dict()
    assert again.quantization is not None and again.quantization.method == "static"


def test_static_quantization_writes_a_smaller_int8_model_and_table(
    retrained: Retrained,
) -> None:
    from med_core.optimization import load_quantized
    from med_core.optimization import quantization_info

    q = retrained.result.quantization
    assert q is not None and q.error is None, q
    best = retrained.result.models[0]
    assert q.model == best.name and q.float_path == best.path
    int8 = retrained.out_dir / q.int8_path
    assert int8.is_file() and int8.stat().st_size == q.int8_size_bytes
    assert (retrained.out_dir / best.path).stat().st_size == q.float_size_bytes
    assert q.int8_size_bytes * 3 < q.float_size_bytes  # ResNet-18: about 3.8x
    assert q.size_ratio == pytest.approx(q.float_size_bytes / q.int8_size_bytes)
    info = quantization_info(load_quantized(int8))
    assert info is not None and info.method == "static" and info.int8_weights == info.layers
    # the float row is the same model as the retrain row, evaluated on CPU again
    assert _close(q.float_test, best.test)
    assert all(0.0 <= q.int8_test[k] <= 1.0 for k in ("auc", "acc"))
    assert q.acc_drop_points == pytest.approx(100 * (q.float_test["acc"] - q.int8_test["acc"]))
    assert q.float_latency_ms > 0 and q.int8_latency_ms > 0 and q.latency_batch_size == 8
    assert "int8 (static)" in retrained.stdout and "x smaller" in retrained.stdout


def test_retrain_is_logged_to_mlflow_under_the_study_parent_run(
    searched: Searched, retrained: Retrained
) -> None:
    from mlflow import MlflowClient
    from mlflow.entities import LoggedModelStatus

    from medauto.keys import PARENT_RUN_ATTR

    result = retrained.result
    assert result.mlflow is not None
    client = MlflowClient(tracking_uri=f"sqlite:///{searched.run_dir / 'mlflow.db'}")
    run = client.get_run(result.mlflow["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["medauto.role"] == "retrain"
    assert run.data.tags["mlflow.parentRunId"] == searched.study().user_attrs[PARENT_RUN_ATTR]
    assert run.data.metrics["test_auc_mean"] == pytest.approx(result.test_mean["auc"])
    assert run.data.params["ensemble"] == "2" and run.data.params["seeds"] == "0,1"
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {
        "retrain.json", "predictions.npz"}
    ids = result.mlflow["model_ids"]
    assert len(ids) == len(result.models)
    # each logged model is an output of the retrain run (the run's "Logged models" tab)
    assert sorted(o.model_id for o in run.outputs.model_outputs) == sorted(ids)
    for mid, m in zip(ids, result.models, strict=True):
        lm = client.get_logged_model(mid)
        assert lm.name == m.name and lm.source_run_id == run.info.run_id
        assert lm.status == LoggedModelStatus.READY
        assert {x.key: x.value for x in lm.metrics}["test_auc"] == pytest.approx(m.test["auc"])
        files = {a.path for a in client.list_logged_model_artifacts(mid)}
        assert {"MLmodel", "requirements.txt"} <= files  # an MLflow model, not loose files
        data = {a.path for a in client.list_logged_model_artifacts(mid, f"data/{m.name}")}
        assert {f"data/{m.name}/model.pt", f"data/{m.name}/model.json"} <= data
    int8 = client.list_logged_model_artifacts(ids[0], f"data/{result.models[0].name}")
    assert f"data/{result.models[0].name}/model.int8.pt2" in {a.path for a in int8}
    # the study's experiment opens in MLflow 3's classic training view, not GenAI/traces
    exp = client.get_experiment(run.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"


def test_logged_model_loads_as_pyfunc_and_predicts_like_the_model_file(
    searched: Searched, retrained: Retrained, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{searched.run_dir / 'mlflow.db'}")
    result = retrained.result
    m = result.models[0]
    served = mlflow.pyfunc.load_model(f"models:/{result.mlflow['model_ids'][0]}")
    with np.load(searched.data_dir / "breastmnist.npz") as d:
        images = d["test_images"][:, None]  # uint8 (N, 1, 28, 28), what a client sends
    probs = served.predict(images)
    assert probs.shape == (len(images), 2) and probs.dtype == np.float32
    with np.load(retrained.out_dir / "predictions.npz") as npz:
        assert np.abs(probs[:, 1] - npz[m.name]).max() < 1e-5
    assert np.allclose(probs.sum(1), 1.0, atol=1e-5)
    with pytest.raises(Exception, match="shape"):  # the tensor signature refuses 3D input
        served.predict(images[:, :, None])


def test_unreachable_or_broken_tracking_never_fails_retrain(
    retrained: Retrained, searched: Searched, tmp_path: Path
) -> None:
    from medauto.tracking import log_retrain

    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("medauto.tracking")
    logger.addHandler(handler)
    study = searched.study()
    (tmp_path / "a-file").write_text("not a folder")
    try:
        for uri in ("http://127.0.0.1:9", f"sqlite:///{tmp_path / 'a-file' / 'mlflow.db'}"):
            records.clear()
            out = log_retrain(study, retrained.result, retrained.out_dir, uri,
                              run_dir=tmp_path)
            assert out is None  # no exception, no ids
            assert len(records) == 1 and "MLflow" in records[0].getMessage(), uri
    finally:
        logger.removeHandler(handler)


def test_export_onnx_of_the_retrained_model(retrained: Retrained, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    out = tmp_path / "best.onnx"
    code, stdout = run_cli(
        ["export", "--study", STUDY, "--run-dir", str(retrained.searched.run_dir),
         "--format", "onnx", "--out", str(out)],
        retrained.searched.root,
    )
    assert code == 0, stdout
    assert out.is_file() and "parity: max |onnxruntime - torch|" in stdout


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--ensemble", "5"], "retraining the top 5 needs at least 5"),
        (["--weights", "best", "--train-on-val"], "weights='best' selects the epoch"),
        (["--seeds", "1", "1"], "seeds must be distinct"),
    ],
)
def test_bad_requests_fail_before_training(
    searched: Searched, extra: list[str], message: str, capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    code, _ = run_cli(["retrain", *searched.argv, "--device", "cpu", "--no-tracking",
                       "--out", str(tmp_path / "x"), *extra], searched.root)
    assert code == 1
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_no_test_metric_is_nan(retrained: Retrained) -> None:
    result = retrained.result
    assert all(math.isfinite(v) for v in result.test_mean.values())


def test_retrain_reports_honest_test_results(searched: Searched, retrained: Retrained) -> None:
    """Balanced accuracy, per-class sensitivity/specificity, CIs, confusion matrix and ROC
    of the first seed's final model (the top-2 ensemble), on stdout, in retrain.json and in
    the MLflow run; a model that calls every case one class would say so."""
    from mlflow import MlflowClient

    from medauto.evaluation import evaluate_test

    result = retrained.result
    ev = result.evaluation
    with np.load(retrained.out_dir / "predictions.npz") as z:
        y, s = z["y_true"], z["ensemble-seed0"]
    again = evaluate_test(result.task, y, s, ["malignant", "normal, benign"],
                          what="the retrained model (seed 0)")
    assert ev == again.to_dict()
    assert ev["metrics"]["auc"] == pytest.approx(result.per_seed[0].test["auc"])
    assert sum(map(sum, ev["confusion"])) == result.n_test == 48
    out = retrained.stdout
    assert f"test balanced ACC: {result.test_mean['balanced_acc']:.4f}" in out
    assert "seed 0 per class: malignant (n=" in out and "specificity" in out
    assert "WARNING: the test split (48 images) is too small" in out  # 48 < 30 per class
    assert (retrained.out_dir / "roc.png").read_bytes()[:4] == b"\x89PNG"
    client = MlflowClient(tracking_uri=f"sqlite:///{searched.run_dir / 'mlflow.db'}")
    run = client.get_run(result.mlflow["run_id"])
    assert run.data.metrics["test_auc_ci_low"] == pytest.approx(ev["ci"]["auc"][0])
    assert run.data.metrics["test_sensitivity_malignant"] == pytest.approx(
        ev["per_class"][0]["sensitivity"])
    assert "roc.png" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_optimizer_retrain_takes_retrain_options_by_name(
    searched: Searched, tmp_path: Path
) -> None:
    from medauto import AutoMLOptimizer

    opt = AutoMLOptimizer("breastmnist", study_name=STUDY, run_dir=searched.run_dir,
                          device="cpu", tracking=False, data_dir=searched.data_dir)
    with pytest.raises(MedautoError, match=r"unknown retrain option\(s\) \['seed'\]"):
        opt.retrain(seed=(1,), out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
    result = opt.retrain(seeds=(3,), tta="on", out_dir=tmp_path / "opt")
    (m,) = result.models
    assert result.seeds == [3] and result.tta == "on" and m.tta is True
    assert torch.load(tmp_path / "opt" / m.path, weights_only=True)["config"]["tta"] is True
