"""A search ends with the final ensemble: portfolio first, cross-validated or holdout
selection, members saved, one predictor, and the test split read only at the very end."""

from __future__ import annotations

import traceback
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from med_core.data import MedicalDataset
from med_core.data import Split
from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from medauto import AutoMLOptimizer
from medauto.concurrency import ProbeReading
from medauto.ensemble import PREDICTOR_FILE
from medauto.ensemble import Predictor
from medauto.final import FINAL_FILE
from medauto.final import FinalResult
from medauto.final import final_dir
from medauto.fingerprint import Selection
from medauto.keys import MEMBERS_ATTR
from medauto.keys import SETTINGS_ATTR
from medauto.keys import TRAIN_S_ATTR
from medauto.space import SearchSpace
from medauto.storage import default_storage_url

TINY = {
    "name": "tiny",
    "spatial_dims": 2,
    "fixed": {"model.pretrained": False, "amp_dtype": "none", "compile": False,
              "epochs": 1, "batch_size": 32, "augment.policy": "none"},
    "params": {"model.backbone": ["mobilenet_v3_small"],
               "optim.lr": {"type": "float", "low": 1e-3, "high": 1e-2, "log": True}},
    "portfolio": [{"name": "first", "params": {"model.backbone": "mobilenet_v3_small",
                                               "optim.lr": 0.003}}],
}


class GuardedSplit(Split):
    """A test split that fails any read made before the final predictor is saved, or
    from outside ``medauto.final.build_final``."""

    def __init__(self, split: Split, run_dir: Path) -> None:
        object.__setattr__(self, "_split", split)
        object.__setattr__(self, "_run_dir", run_dir)
        object.__setattr__(self, "reads", [])

    def _check(self) -> Split:
        stack = [f.name for f in traceback.extract_stack()]
        saved = list(self._run_dir.glob(f"final/*/predictor/{PREDICTOR_FILE}"))
        if "build_final" not in stack or not saved:
            raise AssertionError(f"test split read too early: {stack[-6:]}")
        self.reads.append(stack)
        return self._split

    def __getattribute__(self, name: str) -> Any:
        if name in ("images", "labels", "subset", "nbytes", "spatial_dims"):
            return getattr(object.__getattribute__(self, "_check")(), name)
        return object.__getattribute__(self, name)

    def __len__(self) -> int:
        return len(self._check())


@pytest.fixture
def guarded(medmnist_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    src = cut_medmnist(medmnist_dir / "breastmnist.npz", tmp_path / "d" / "breastmnist.npz",
                       {"train": 48, "val": 32, "test": 40}, both_classes=True)
    ds = load_dataset(src)
    run_dir = tmp_path / "run"
    test = GuardedSplit(ds.test, run_dir)
    data = MedicalDataset(ds.info, ds.train, ds.val, test)
    monkeypatch.setattr(AutoMLOptimizer, "_load_data", lambda self: data)
    return src, run_dir, test


def _optimizer(src: Path, run_dir: Path, **kw: Any) -> AutoMLOptimizer:
    return AutoMLOptimizer(str(src), SearchSpace.from_dict(TINY), run_dir=run_dir,
                           device="cpu", tracking=False, pruner="none", **kw)


def test_cross_validated_search_ends_with_a_tested_ensemble(guarded: Any) -> None:
    src, run_dir, test = guarded
    opt = _optimizer(src, run_dir, n_trials=2)
    result = opt.optimize()
    assert opt.selection_ is not None and opt.selection_.mode == "cv"  # 32 val images
    trials = result.study.get_trials()
    # the portfolio entry is the first trial, with exactly its params
    assert trials[0].user_attrs["portfolio"] == "first"
    assert trials[0].params == {"model.backbone": "mobilenet_v3_small", "optim.lr": 0.003}
    k = opt.selection_.folds
    for t in trials:
        assert sorted(t.intermediate_values) == list(range(1, k + 1))  # one report per fold
        assert len(t.user_attrs["fold_values"]) == k
        folder = run_dir / t.user_attrs[MEMBERS_ATTR]
        assert sorted(p.name for p in folder.glob("model_*.pt")) == [
            f"model_{j}.pt" for j in range(k)]
        with np.load(folder / "selection.npz") as z:
            assert str(z["kind"]) == "oof" and len(z["y"]) == 48 + 32
        spent = t.user_attrs[TRAIN_S_ATTR]
        assert len(spent) == k and all(s > 0 for s in spent)  # every fold's fit is timed
        # the concurrency probe reads the training time of every fold, not the first's
        reading = ProbeReading.of_trial(t, peak_bytes=0, free_bytes=0, gpu_util=None)
        assert reading.train_s == pytest.approx(sum(spent))
    final = result.final
    assert final is not None and final.selection == "oof"
    assert abs(sum(m["weight"] for m in final.members) - 1.0) < 1e-9
    # the test split was read only by build_final, after the predictor was saved
    assert test.reads and all("build_final" in s for s in test.reads)
    out = final_dir(run_dir, result.study.study_name)
    assert FinalResult.load(out / FINAL_FILE).test == final.test
    pred = Predictor.load(out / "predictor")
    assert len(pred.members) == sum(m["models"] for m in final.members)
    images, labels = test._split.images, test._split.labels
    assert pred.evaluate(images, labels)["auc"] == pytest.approx(final.test["auc"])
    assert opt.predict_proba(images).shape == (40, 2)
    board = opt.leaderboard()
    assert list(board["trial"])[0] == result.best_trial_number
    assert board["ensemble_weight"].sum() == pytest.approx(1.0)
    from medauto.report import write_report

    paths = write_report(result.study, out_dir=run_dir / "report", final=out / FINAL_FILE)
    md = paths.markdown.read_text()
    assert "## Final model" in md and f"| ensemble | {final.test['auc']:.3f} |" in md
    # honest results: per-class rates, intervals, the confusion matrix and the ROC curve
    ev = final.evaluation
    assert [c["n"] for c in ev["per_class"]] == np.bincount(labels.reshape(-1)).tolist()
    assert ev["metrics"]["auc"] == pytest.approx(final.test["auc"])
    assert ev["confusion"] == final.confusion and sum(map(sum, final.confusion)) == 40
    lo, hi = ev["ci"]["auc"]
    assert lo <= final.test["auc"] <= hi
    assert any("too small" in w for w in final.warnings)  # 40 test images
    assert (out / final.roc).read_bytes()[:4] == b"\x89PNG"
    summary = final.summary()
    assert "95 % CI from 1000 bootstrap resamples" in summary and "sensitivity" in summary
    assert "### Final model: honest test results" in md and "![" in md
    assert "| true \\ predicted | malignant | normal, benign |" in md
    assert (run_dir / "report" / "final_roc.png").is_file()
    assert "WARNING: the test split (40 images) is too small" in md


def test_holdout_selection_keeps_one_model_per_trial(guarded: Any) -> None:
    src, run_dir, test = guarded
    result = _optimizer(src, run_dir, n_trials=1, selection="holdout").optimize()
    t = result.study.get_trials()[0]
    folder = run_dir / t.user_attrs[MEMBERS_ATTR]
    assert [p.name for p in folder.glob("model_*.pt")] == ["model_0.pt"]
    with np.load(folder / "selection.npz") as z:
        assert str(z["kind"]) == "val" and len(z["y"]) == 32
    assert "fold_values" not in t.user_attrs
    assert result.final is not None and result.final.selection == "val"
    assert result.final.n_test == 40 and test.reads


def test_without_a_final_model_the_test_split_is_never_read(guarded: Any) -> None:
    src, run_dir, test = guarded
    result = _optimizer(src, run_dir, n_trials=1, final_model=False).optimize()
    assert result.final is None and not test.reads
    assert MEMBERS_ATTR not in result.study.get_trials()[0].user_attrs
    assert not (run_dir / "members").exists()


def test_final_model_is_logged_as_a_servable_pyfunc_model_of_its_run(
    guarded: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    src, run_dir, _ = guarded
    uri = f"sqlite:///{run_dir / 'mlflow.db'}"
    result = AutoMLOptimizer(str(src), SearchSpace.from_dict(TINY), run_dir=run_dir,
                             device="cpu", tracking=uri, pruner="none", n_trials=1,
                             selection="holdout").optimize()
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(result.study.study_name)
    (run,) = [r for r in client.search_runs([exp.experiment_id])
              if r.data.tags.get("medauto.role") == "final"]
    assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"]
    assert run.data.metrics["test_auc"] == pytest.approx(result.final.test["auc"])
    assert FINAL_FILE in {a.path for a in client.list_artifacts(run.info.run_id)}
    (out,) = run.outputs.model_outputs
    lm = client.get_logged_model(out.model_id)
    assert lm.source_run_id == run.info.run_id and lm.name == "final"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    served = mlflow.pyfunc.load_model(f"models:/{lm.model_id}")
    images = load_dataset(src).test.images  # a fresh copy: the guarded one is spent
    predictor = Predictor.load(final_dir(run_dir, result.study.study_name) / "predictor")
    assert np.abs(served.predict(images) - predictor.predict_proba(images)).max() < 1e-5


def test_a_joining_worker_trains_the_folds_the_study_was_created_with(guarded: Any) -> None:
    # A budget may step 5 folds down to 4 or 3 when the study is created; the workers that
    # join it (`medauto worker`, packed workers) used to read only the mode back and train
    # 5 folds, so trials of one study were scored on different folds.
    src, run_dir, _ = guarded
    opt = _optimizer(src, run_dir, n_trials=1, selection="cv")
    study = opt.create_study()
    assert opt.selection_ == Selection("cv", folds=5)
    assert study.user_attrs[SETTINGS_ATTR]["folds"] == 5
    stepped = dict(study.user_attrs[SETTINGS_ATTR], folds=3)  # as a step-down stores it
    study.set_user_attr(SETTINGS_ATTR, stepped)
    joined = AutoMLOptimizer.from_study(study.study_name, default_storage_url(run_dir),
                                        run_dir=run_dir, device="cpu", tracking=False)
    joined.create_study()
    assert joined.selection_ == Selection("cv", folds=3)
    again = _optimizer(src, run_dir, n_trials=1)  # `medauto search` again: resumes alike
    again.create_study()
    assert again.selection_ == Selection("cv", folds=3)
