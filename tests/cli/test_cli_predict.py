"""``medauto predict``: a real search's final model on real BreastMNIST images written to
disk as PNG files, a folder, a CSV manifest and an ``.npz`` split; the model file records
its preprocessing; clear one-line errors."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from medauto.cli import main
from medauto.ensemble import Predictor
from medauto.model_file import ModelFileError
from medauto.model_file import load_model
from medauto.predict import load_inputs
from medauto.preprocessing import PREPROCESSING_KEY
from medauto.preprocessing import Preprocessing

STUDY = "predict-micro"


def _main(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def search_run(micro_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One real one-epoch trial on 32/32/32 BreastMNIST images: the run folder and the
    search's stdout."""
    from micro import MICRO_SPACE

    root = tmp_path_factory.mktemp("predict")
    assert "max_epochs: 1," in MICRO_SPACE  # one epoch per trial
    (root / "micro.yaml").write_text(MICRO_SPACE)
    code, out, err = _main(
        "search", "--data", "breastmnist", "--data-dir", str(micro_data_dir), "--space",
        str(root / "micro.yaml"), "--trials", "1", "--selection", "holdout", "--study", STUDY,
        "--run-dir", str(root / "runs"), "--device", "cpu", "--no-progress", "--no-tracking",
        "--pruner", "none", "-q")
    assert code == 0, out + err
    return root / "runs", out


@pytest.fixture(scope="module")
def searched(search_run: tuple[Path, str]) -> Path:
    """The run folder of :func:`search_run` (its final predictor)."""
    return search_run[0]


def test_the_search_ends_with_honest_test_results(search_run: tuple[Path, str]) -> None:
    run_dir, out = search_run
    final = json.loads((run_dir / "final" / STUDY / "final.json").read_text())
    ev = final["evaluation"]
    assert [c["class"] for c in ev["per_class"]] == ["malignant", "normal, benign"]
    for c in ev["per_class"]:
        assert f"{c['class']} (n={c['n']}): sensitivity" in out
    lo, hi = ev["ci"]["auc"]
    assert f"auc={final['test']['auc']:.4f} [{lo:.3f}, {hi:.3f}]" in out
    assert "WARNING: the test split (32 images) is too small" in out
    # the one-class warning is there exactly when the model predicts (nearly) one class
    predicted = np.sum(final["confusion"], axis=0)
    one_class = predicted.max() >= 0.95 * predicted.sum()
    assert ("WARNING: the final model predicts class" in out) == one_class
    assert (run_dir / "final" / STUDY / "roc.png").is_file()


@pytest.fixture(scope="module")
def test_split(micro_data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with np.load(micro_data_dir / "breastmnist.npz") as z:
        return z["test_images"], z["test_labels"].reshape(-1)


def _pngs(folder: Path, images: np.ndarray, *, rgb: bool = False) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, a in enumerate(images):
        img = Image.fromarray(a)
        (img.convert("RGB") if rgb else img).save(folder / f"case{i:02d}.png")
        paths.append(folder / f"case{i:02d}.png")
    return paths


def _read(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _proba(rows: list[dict[str, str]]) -> np.ndarray:
    return np.array([[float(r["p_malignant"]), float(r["p_normal, benign"])] for r in rows])


def test_one_png_needs_one_command_and_matches_the_predictor(
    searched: Path, test_split: tuple[np.ndarray, np.ndarray], tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    images, _ = test_split
    files = _pngs(tmp_path / "pngs", images[:6])
    # --study is optional: the store holds one study
    code, out, err = _main("predict", str(files[0]), "--run-dir", str(searched))
    assert code == 0, err
    assert "predictions: predictions.csv" in out and "grey 28x28 uint8" in out
    rows = _read(tmp_path / "predictions.csv")
    assert [r["name"] for r in rows] == [str(files[0])]
    predictor = Predictor.load(searched / "final" / STUDY / "predictor")
    want = predictor.predict_proba(images[:1, None])
    assert np.allclose(_proba(rows), want, atol=1e-5)
    decided = predictor.predict(images[:1, None])
    assert rows[0]["predicted"] == predictor.class_names[int(decided[0])]
    # the same images as RGB PNGs (grey replicated): the recorded channel rule gives grey back
    rgb = _pngs(tmp_path / "rgb", images[:6], rgb=True)
    code, _, err = _main("predict", *map(str, rgb), "--study", STUDY, "--run-dir",
                         str(searched), "--output", "rgb.csv")
    assert code == 0, err
    want = predictor.predict_proba(images[:6, None])
    assert np.allclose(_proba(_read(tmp_path / "rgb.csv")), want, atol=1e-5)


def test_folder_manifest_and_npz_inputs_agree(
    searched: Path, test_split: tuple[np.ndarray, np.ndarray], micro_data_dir: Path, tmp_path: Path,
) -> None:
    images, labels = test_split
    files = _pngs(tmp_path / "scans", images[:8])
    manifest = tmp_path / "scans.csv"
    manifest.write_text("path,label\n" + "".join(
        f"scans/{f.name},{int(y)}\n" for f, y in zip(files, labels[:8], strict=True)))
    folder = str(searched / "final" / STUDY / "predictor")
    results = {}
    for name, src in (("folder", tmp_path / "scans"), ("manifest", manifest),
                      ("npz", micro_data_dir / "breastmnist.npz")):
        out = tmp_path / f"{name}.csv"
        code, printed, err = _main("predict", str(src), "--model", folder, "--output", str(out))
        assert code == 0, err
        assert ("per class: malignant (n=" in printed) == (name != "folder"), name
        results[name] = _read(out)
    assert len(results["npz"]) == len(images)
    npz = results["npz"][:8]
    assert [r["name"] for r in npz] == [f"{micro_data_dir / 'breastmnist.npz'}:test[{i}]"
                                        for i in range(8)]
    for name in ("folder", "manifest"):
        assert np.allclose(_proba(results[name]), _proba(npz), atol=1e-5), name
    names = Predictor.load(folder).class_names
    assert [r["label"] for r in results["manifest"]] == [names[int(y)] for y in labels[:8]]
    assert [r["label"] for r in npz] == [names[int(y)] for y in labels[:8]]
    assert "label" not in results["folder"][0]


def test_a_single_model_file_predicts_through_the_same_path(
    searched: Path, test_split: tuple[np.ndarray, np.ndarray], tmp_path: Path,
) -> None:
    images, _ = test_split
    predictor = Predictor.load(searched / "final" / STUDY / "predictor")
    member = predictor.folder / predictor.members[0].file
    single = Predictor.from_model_file(member)
    assert single.preprocessing == Preprocessing(spatial_dims=2, in_chans=1,
                                                 stored_size=(28, 28), model_size=(28, 28))
    files = _pngs(tmp_path / "one", images[:4])
    code, _, err = _main("predict", *map(str, files), "--model", str(member),
                         "--output", str(tmp_path / "single.csv"))
    assert code == 0, err
    raw = np.mean(predictor.member_scores(images[:4, None]), axis=0)  # uncalibrated, one member
    assert np.allclose(_proba(_read(tmp_path / "single.csv"))[:, 1], raw, atol=1e-5)


def test_the_model_file_records_its_preprocessing_and_old_files_get_the_default(
    searched: Path, tmp_path: Path,
) -> None:
    predictor = Predictor.load(searched / "final" / STUDY / "predictor")
    member = predictor.folder / predictor.members[0].file
    state = torch.load(member, weights_only=True)
    assert state[PREPROCESSING_KEY] == {
        "spatial_dims": 2, "in_chans": 1, "image_size": [28, 28], "model_size": [28, 28],
        "dtype": "uint8", "layout": "NCHW", "channels": "grey", "resize": "bilinear",
        "normalisation": {"scale": 255.0, "mean": 0.5, "std": 0.5}}
    assert predictor.input_spec["image_size"] == [28, 28]
    assert predictor.preprocessing.model_size is None  # each member resizes to its own
    # a file written before the record existed: the documented default (from img_size)
    del state[PREPROCESSING_KEY]
    torch.save(state, tmp_path / "old.pt")
    assert load_model(tmp_path / "old.pt").preprocessing == Preprocessing(
        spatial_dims=2, in_chans=1, stored_size=(28, 28), model_size=(28, 28))
    # ...and one that cannot say its size either is refused in one line
    del state["img_size"]
    torch.save(state, tmp_path / "older.pt")
    with pytest.raises(ModelFileError, match="records neither its preprocessing nor"):
        load_model(tmp_path / "older.pt")


def test_larger_images_are_resized_as_training_resized_them(tmp_path: Path) -> None:
    prep = Preprocessing(spatial_dims=2, in_chans=3, stored_size=(28, 28), model_size=(64, 64))
    grey = np.arange(56 * 56, dtype=np.uint8).reshape(56, 56)
    Image.fromarray(grey).save(tmp_path / "big.png")
    inputs = load_inputs([tmp_path / "big.png"], prep, class_names=["a", "b"])
    want = np.asarray(Image.fromarray(grey).resize((28, 28), Image.Resampling.BILINEAR))
    assert inputs.pixels.shape == (1, 3, 28, 28)
    assert all(np.array_equal(inputs.pixels[0, c], want) for c in range(3))


def test_bad_inputs_get_one_clear_line(
    searched: Path, micro_data_dir: Path, tmp_path: Path,
) -> None:
    folder = str(searched / "final" / STUDY / "predictor")
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.fromarray(np.zeros((4, 4, 4), np.uint8)[..., 0]).save(tmp_path / "ok.png")
    np.savez(tmp_path / "vol.npz", test_images=np.zeros((2, 8, 8, 8), np.uint8))
    (tmp_path / "bad.csv").write_text("file,label\nok.png,0\n")
    (tmp_path / "label.csv").write_text("path,label\nok.png,tumour\n")
    cases = {
        str(tmp_path / "missing.png"): "no input file or folder at",
        str(tmp_path / "corrupt.png"): "cannot read image file",
        str(tmp_path / "vol.npz"): "a 2-D model takes grey (H, W) or RGB (H, W, 3) images, "
                                   "got shape (8, 8, 8)",
        str(tmp_path / "bad.csv"): "a manifest needs a 'path' column",
        str(tmp_path / "label.csv"): "label 'tumour' is neither a class name",
    }
    for src, message in cases.items():
        code, out, err = _main("predict", src, "--model", folder,
                               "--output", str(tmp_path / "x.csv"))
        lines = err.strip().splitlines()
        assert code == 1 and len(lines) == 1 and message in lines[0], (src, err)
        assert not (tmp_path / "x.csv").exists()
    code, _, err = _main("predict", str(tmp_path / "ok.png"), "--model", str(tmp_path / "no"))
    assert code == 1 and "no model file or predictor folder at" in err
    code, _, err = _main("predict", str(tmp_path / "ok.png"), "--study", "nope",
                         "--run-dir", str(searched))
    assert code == 1 and "no study named 'nope'" in err


def test_volumes_keep_their_shape_and_old_3d_files_get_their_dims(tmp_path: Path) -> None:
    prep = Preprocessing.from_legacy({"in_chans": 1, "img_size": [16, 16, 16]})
    assert prep.spatial_dims == 3 and prep.stored_size == (16, 16, 16)
    vols = np.arange(2 * 16**3, dtype=np.uint8).reshape(2, 16, 16, 16)
    np.savez(tmp_path / "v.npz", test_images=vols, test_labels=np.array([[0], [1]]))
    inputs = load_inputs([tmp_path / "v.npz"], prep, class_names=["a", "b"])
    assert inputs.pixels.shape == (2, 1, 16, 16, 16) and inputs.labels == [0, 1]
    assert np.array_equal(inputs.pixels[:, 0], vols)
    Image.fromarray(vols[0, 0]).save(tmp_path / "slice.png")
    with pytest.raises(ValueError, match="a 3-D model takes volumes from an .npz split"):
        load_inputs([tmp_path / "slice.png"], prep, class_names=["a", "b"])
