"""medauto.artifacts: the PNGs, the upload into Optuna's artifact store, name safety, and the
objective's hook (which must never fail a trial)."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.artifacts import download_artifact
from optuna.artifacts import get_all_artifact_meta
from PIL import Image

from medauto.artifacts import CONFUSION_MATRIX_NAME
from medauto.artifacts import LEARNING_CURVE_NAME
from medauto.artifacts import _confusion_counts
from medauto.artifacts import artifact_store_for
from medauto.artifacts import confusion_matrix_png
from medauto.artifacts import learning_curve_png
from medauto.artifacts import predicted_labels
from medauto.artifacts import safe_artifact_name
from medauto.artifacts import trial_artifacts
from medauto.artifacts import upload_trial_artifacts
from medauto.exceptions import MedautoError

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

optuna.logging.set_verbosity(optuna.logging.WARNING)


def assert_real_png(path: Path, *, size: tuple[int, int] | None = None) -> None:
    """A PNG file with a drawing in it: signature, > 8 kB, decodable, many colours."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, f"{path} is not a PNG: {data[:8]!r}"
    assert len(data) > 8_000, f"{path} is suspiciously small ({len(data)} bytes)"
    with Image.open(path) as im:
        im.load()
        if size is not None:
            assert im.size == size
        colours = im.convert("RGB").getcolors(maxcolors=1_000_000)
    assert colours is not None and len(colours) > 50, "the image is (nearly) blank"


def _rows(n: int) -> list[dict[str, Any]]:
    return [
        {
            "epoch": e,
            "train_loss": 0.7 / (e + 1),
            "val_loss": 0.8 / (e + 1) + 0.01 * e,
            "val_auc": 0.6 + 0.04 * e,
            "val_acc": None if e == 2 else 0.55 + 0.03 * e,  # a non-finite value → a gap
            "lr": 1e-3 * math.cos(e / n),
            "epoch_time_s": 1.5,
            "images_per_s": 300.0,
        }
        for e in range(n)
    ]


@pytest.fixture
def study(tmp_path: Path) -> optuna.Study:
    return optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}")


@pytest.fixture
def artifact_log() -> Iterator[list[logging.LogRecord]]:
    """Records of the ``medauto.artifacts`` logger (the medauto root does not propagate)."""
    records: list[logging.LogRecord] = []

    class _Handler(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("medauto.artifacts")
    handler = _Handler(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


# -- PNGs ----------------------------------------------------------------------------------


def test_learning_curve_png_draws_the_history(tmp_path: Path) -> None:
    out = learning_curve_png(_rows(6), tmp_path / "nested" / "lc.png", monitor="val_auc")
    assert out == tmp_path / "nested" / "lc.png"
    assert_real_png(out, size=(1000, 400))


def test_learning_curve_png_of_a_loss_monitor_and_sparse_rows(tmp_path: Path) -> None:
    rows = [{"train_loss": 1.0}, {"train_loss": 0.5, "val_loss": 0.7}]  # no epoch, no lr
    assert_real_png(learning_curve_png(rows, tmp_path / "lc.png", monitor="val_loss"))


def test_learning_curve_png_needs_an_epoch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="at least one epoch"):
        learning_curve_png([], tmp_path / "lc.png", monitor="val_auc")
    assert not (tmp_path / "lc.png").exists()


def test_confusion_matrix_png_draws_the_matrix(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 4, 300)
    y_pred = np.where(rng.random(300) < 0.7, y_true, rng.integers(0, 4, 300))
    names = ["normal", "drusen", "choroidal neovascularization", "diabetic macular edema"]
    out = confusion_matrix_png(y_true, y_pred, names, tmp_path / "cm.png")
    assert_real_png(out)


def test_confusion_matrix_png_accepts_a_label_column_and_no_names(tmp_path: Path) -> None:
    y = np.array([[0], [1], [1], [0]])
    assert_real_png(confusion_matrix_png(y, [0, 1, 0, 0], None, tmp_path / "cm.png"))


def test_confusion_counts_rows_are_true_classes() -> None:
    counts = _confusion_counts(np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 0, 2]), 4)
    assert counts.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


@pytest.mark.parametrize(
    ("y_true", "y_pred", "names", "fragment"),
    [
        ([0, 2], [0, 1], ["a", "b"], r"labels must lie in \[0, 1\] for 2 classes"),
        ([0, -1], [0, 1], ["a", "b"], "labels must lie in"),
        ([0, 1, 1], [0, 1], ["a", "b"], "equally long"),
        ([], [], ["a", "b"], "non-empty"),
        ([[0, 1], [1, 0]], [0, 1], ["a", "b"], "one class index per sample"),
    ],
)
def test_confusion_matrix_png_rejects_bad_labels(
    tmp_path: Path, y_true: Any, y_pred: Any, names: list[str], fragment: str
) -> None:
    with pytest.raises(ValueError, match=fragment):
        confusion_matrix_png(y_true, y_pred, names, tmp_path / "cm.png")
    assert not (tmp_path / "cm.png").exists()


def test_predicted_labels_threshold_and_argmax() -> None:
    assert predicted_labels(np.array([0.2, 0.5, 0.49, 0.9])).tolist() == [0, 1, 0, 1]
    assert predicted_labels(np.array([[0.3], [0.7]])).tolist() == [0, 1]
    scores = np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]])
    assert predicted_labels(scores).tolist() == [1, 0]
    with pytest.raises(ValueError, match=r"\(N,\) or \(N, C\)"):
        predicted_labels(np.zeros((2, 2, 2)))


# -- upload ---------------------------------------------------------------------------------


def _pngs(tmp_path: Path) -> dict[str, Path]:
    src = tmp_path / "src"
    return {
        LEARNING_CURVE_NAME: learning_curve_png(_rows(3), src / "a.png", monitor="val_auc"),
        CONFUSION_MATRIX_NAME: confusion_matrix_png(
            [0, 1, 1], [0, 1, 0], ["x", "y"], src / "b.png"
        ),
    }


def test_upload_lists_the_files_on_the_trial(tmp_path: Path, study: optuna.Study) -> None:
    files = _pngs(tmp_path)
    store = artifact_store_for(tmp_path / "run")
    trial = study.ask()
    metas = upload_trial_artifacts(study, trial, files, store)
    study.tell(trial, 1.0)

    frozen = study.get_trials()[0]
    listed = get_all_artifact_meta(frozen, storage=study._storage)
    assert {m.filename for m in listed} == {LEARNING_CURVE_NAME, CONFUSION_MATRIX_NAME}
    assert {m.mimetype for m in listed} == {"image/png"}
    assert sorted(metas, key=lambda m: m.filename) == sorted(listed, key=lambda m: m.filename)
    assert len(os.listdir(tmp_path / "run" / "artifacts")) == 2
    for meta in metas:  # the bytes in the store are the files' bytes
        out = tmp_path / "dl" / meta.filename
        out.parent.mkdir(exist_ok=True)
        download_artifact(artifact_store=store, artifact_id=meta.artifact_id, file_path=str(out))
        assert out.read_bytes() == files[meta.filename].read_bytes()


def test_upload_of_paths_uses_their_names(tmp_path: Path, study: optuna.Study) -> None:
    files = _pngs(tmp_path)
    trial = study.ask()
    metas = upload_trial_artifacts(None, trial, list(files.values()), artifact_store_for(tmp_path))
    assert [m.filename for m in metas] == ["a.png", "b.png"]


def test_upload_to_a_frozen_trial_needs_the_study(tmp_path: Path, study: optuna.Study) -> None:
    trial = study.ask()
    frozen = study.get_trials()[0]
    assert frozen.number == trial.number
    with pytest.raises(ValueError, match="needs the study"):
        upload_trial_artifacts(None, frozen, _pngs(tmp_path), artifact_store_for(tmp_path))
    assert upload_trial_artifacts(study, frozen, _pngs(tmp_path), artifact_store_for(tmp_path))


def _tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_malicious_names_stay_inside_the_store(tmp_path: Path, study: optuna.Study) -> None:
    box = tmp_path / "box"  # everything outside run/ must stay as it was
    run = box / "deep" / "run"
    src = learning_curve_png(_rows(2), box / "src" / "lc.png", monitor="val_auc")
    store = artifact_store_for(run)
    before = _tree(box)
    evil = ["../../etc/x.png", "../../../../../../tmp/evil.png", "/etc/passwd",
            "..\\..\\win.png", ".bashrc", "..", "a b/c:d?.png"]
    trial = study.ask()
    metas = upload_trial_artifacts(study, trial, {name: src for name in evil}, store)

    names = [m.filename for m in metas]
    assert names == ["x.png", "evil.png", "passwd", "win.png", "bashrc", "artifact", "c_d_.png"]
    for name in names:
        assert "/" not in name and "\\" not in name and not name.startswith(".")
    new = _tree(box) - before
    assert new and all(p.startswith("deep/run/artifacts/") for p in new), sorted(new)
    assert len(new) == len(evil)
    assert not (box / "etc").exists() and not (tmp_path / "evil.png").exists()
    for path in (run / "artifacts").iterdir():
        assert path.read_bytes() == src.read_bytes()


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("learning_curve.png", "learning_curve.png"),
        ("../../etc/x.png", "x.png"),
        ("C:\\Users\\x\\..\\y.png", "y.png"),
        ("/abs/path.png", "path.png"),
        ("...png", "png"),
        ("", "artifact"),
        ("...", "artifact"),
        ("über cm.png", "_ber_cm.png"),
        ("x" * 300 + ".png", "x" * 96 + ".png"),
    ],
)
def test_safe_artifact_name(name: str, expected: str) -> None:
    assert safe_artifact_name(name) == expected


def test_artifact_store_lives_in_the_run_dir(tmp_path: Path) -> None:
    store = artifact_store_for(tmp_path / "run")
    assert (tmp_path / "run" / "artifacts").is_dir()
    assert Path(store._base_path) == (tmp_path / "run" / "artifacts").resolve()
    with open(__file__, "rb") as body, pytest.raises(ValueError, match="Invalid artifact_id"):
        store.write("../escape", body)  # Optuna's own guard holds too
    assert not (tmp_path / "run" / "escape").exists()


def test_artifact_store_refuses_a_link_out_of_the_run_dir(tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "artifacts").symlink_to(tmp_path / "outside")
    with pytest.raises(MedautoError, match="outside the run directory"):
        artifact_store_for(tmp_path / "run")
    (tmp_path / "run2").mkdir()
    (tmp_path / "run2" / "artifacts").write_text("not a folder")
    with pytest.raises(MedautoError, match="is not a folder"):
        artifact_store_for(tmp_path / "run2")


# -- the objective's hook -------------------------------------------------------------------


class _Trainer:
    """Stands in for med_core's Trainer: the four things trial_artifacts reads."""

    def __init__(
        self, *, task: str = "binary", main: bool = True, predict_error: Exception | None = None
    ) -> None:
        self.task = task
        self.is_main_process = main
        self.predict_error = predict_error
        self.predict_calls: list[str] = []
        self.cfg = SimpleNamespace(model=SimpleNamespace(backbone="resnet18"))
        self.dataset = SimpleNamespace(info=SimpleNamespace(class_names=("malignant", "benign")))

    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        self.predict_calls.append(split)
        if self.predict_error is not None:
            raise self.predict_error
        return np.array([0, 1, 1, 0, 1]), np.array([0.1, 0.8, 0.3, 0.6, 0.9])


def _fake() -> Any:
    return _Trainer()


def _history(n: int = 3) -> Any:
    from med_core.training import History

    return History(monitor="val_auc", mode="max", epochs=_rows(n), best_epoch=n - 1)


def _names(study: optuna.Study) -> set[str]:
    frozen = study.get_trials()[0]
    return {m.filename for m in get_all_artifact_meta(frozen, storage=study._storage)}


def test_trial_artifacts_uploads_both_pngs(tmp_path: Path, study: optuna.Study) -> None:
    trainer: Any = _Trainer()
    trial = study.ask()
    metas = trial_artifacts(trial, trainer, _history(), artifact_store=artifact_store_for(tmp_path))
    assert trainer.predict_calls == ["val"]
    both = {LEARNING_CURVE_NAME, CONFUSION_MATRIX_NAME}
    assert {m.filename for m in metas} == _names(study) == both
    for meta in metas:
        out = tmp_path / meta.filename
        download_artifact(
            artifact_store=artifact_store_for(tmp_path), artifact_id=meta.artifact_id,
            file_path=str(out),
        )
        assert_real_png(out)


def test_trial_artifacts_survives_failed_predictions(
    tmp_path: Path, study: optuna.Study, artifact_log: list[logging.LogRecord]
) -> None:
    trainer: Any = _Trainer(predict_error=RuntimeError("loader broke"))
    trial = study.ask()
    metas = trial_artifacts(trial, trainer, _history(), artifact_store=artifact_store_for(tmp_path))
    assert [m.filename for m in metas] == [LEARNING_CURVE_NAME]
    warnings = [r.getMessage() for r in artifact_log if r.levelno == logging.WARNING]
    assert any("no confusion matrix" in w and "loader broke" in w for w in warnings), warnings


def test_trial_artifacts_survives_a_broken_store(
    tmp_path: Path, study: optuna.Study, artifact_log: list[logging.LogRecord]
) -> None:
    class BrokenStore:
        def write(self, artifact_id: str, content_body: Any) -> None:
            raise OSError("disk full")

        def open_reader(self, artifact_id: str) -> Any:
            raise OSError("disk full")

        def remove(self, artifact_id: str) -> None:
            raise OSError("disk full")

    trial = study.ask()
    assert trial_artifacts(trial, _fake(), _history(), artifact_store=BrokenStore()) == []
    warnings = [r.getMessage() for r in artifact_log if r.levelno == logging.WARNING]
    assert any("uploading artifacts" in w and "disk full" in w for w in warnings), warnings
    study.tell(trial, 0.5)  # the trial is still fine
    assert study.get_trials()[0].state == optuna.trial.TrialState.COMPLETE


def test_trial_artifacts_survives_a_bad_history(
    tmp_path: Path, study: optuna.Study, artifact_log: list[logging.LogRecord]
) -> None:
    history = _history()
    history.epochs = [{"epoch": "not a number"}]  # type: ignore[list-item]
    trial = study.ask()
    metas = trial_artifacts(trial, _fake(), history, artifact_store=artifact_store_for(tmp_path))
    assert [m.filename for m in metas] == [CONFUSION_MATRIX_NAME]
    assert any("could not draw the learning curve" in r.getMessage() for r in artifact_log)


def test_trial_artifacts_on_a_follower_rank_only_predicts(tmp_path: Path) -> None:
    trainer: Any = _Trainer(main=False)
    store = tmp_path / "run"
    metas = trial_artifacts(object(), trainer, _history(), artifact_store=artifact_store_for(store))
    assert metas == []
    assert trainer.predict_calls == ["val"]  # predict gathers over ranks: all must call it
    assert os.listdir(store / "artifacts") == []


def test_trial_artifacts_multilabel_has_no_confusion_matrix(
    tmp_path: Path, study: optuna.Study
) -> None:
    trainer: Any = _Trainer(task="multi-label")
    trial = study.ask()
    metas = trial_artifacts(trial, trainer, _history(), artifact_store=artifact_store_for(tmp_path))
    assert [m.filename for m in metas] == [LEARNING_CURVE_NAME]
    assert trainer.predict_calls == []
