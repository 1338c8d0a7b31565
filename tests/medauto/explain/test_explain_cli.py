"""``medauto explain``: model files or a study's final predictor, MedMNIST splits or files →
PNG overlays; bad input refused in one line with nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from med_core.config import TrainConfig
from med_core.explain import METHODS
from med_core.models import build_classifier
from medauto.cli import main
from medauto.model_file import save_model
from medauto.retrain import ModelResult
from medauto.retrain import RetrainResult
from medauto.retrain import SeedResult


def _save(path: Path, backbone: str, size: int, seed: int = 0) -> Path:
    cfg = TrainConfig.from_flat({"model.backbone": backbone, "seed": seed})
    torch.manual_seed(seed)
    model = build_classifier(cfg.model, num_classes=2, in_chans=1, img_size=size).eval()
    dims = model.spatial_dims
    return save_model(path, model, cfg, task="binary", num_classes=2, in_chans=1,
                      img_size=[size] * dims)  # fmt: skip


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("models")
    return {
        "2d": _save(d / "a" / "model.pt", "resnet18", 28),
        "2d-b": _save(d / "b" / "model.pt", "resnet18", 28, seed=1),
        "3d": _save(d / "c" / "model.pt", "r3d_18", 16),
    }


def _png(path: Path) -> tuple[int, int, str]:
    with Image.open(path) as img:
        return img.width, img.height, img.mode


def test_help_names_every_method(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "--help"])
    text = capsys.readouterr().out
    assert all(m in text for m in METHODS)


def test_medmnist_split_two_methods(models: dict[str, Path], tiny_data_dir: Path,
                                    tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(models["2d"]), "--data", "breastmnist",
               "--data-dir", str(tiny_data_dir), "--indices", "0,2-3", "-m", "gradcam",
               "-m", "gradcam++", "--out", str(out)])  # fmt: skip
    assert rc == 0
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(["explain.json"] + [f"test{i:05d}_{m}.png" for i in (0, 2, 3)
                                               for m in ("gradcam", "gradcampp")])  # fmt: skip
    assert _png(out / "test00002_gradcam.png") == (224, 224, "RGB")
    summary = json.loads((out / "explain.json").read_text())
    assert [s["name"] for s in summary] == ["test00000", "test00002", "test00003"]
    assert all(s["label"] in (0, 1) and 0.5 <= s["probability"] <= 1 for s in summary)
    assert "not a diagnosis" in capsys.readouterr().out


def test_ensemble_of_model_files_and_image_folder(models: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name, side in (("small", 20), ("large", 40)):  # resized to the model's 28x28
        Image.fromarray(rng.integers(0, 255, (side, side), dtype=np.uint8)).save(
            folder / f"{name}.png")
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(models["2d"]), "--model", str(models["2d-b"]),
               "--images", str(folder), "-m", "layercam", "--target", "1", "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.glob("*.png")} == {"large_layercam.png", "small_layercam.png"}
    assert all(s["target"] == 1 for s in json.loads((out / "explain.json").read_text()))


def test_volume_gives_strongest_slices_and_mip(models: dict[str, Path], tmp_path: Path) -> None:
    vol = np.random.default_rng(0).integers(0, 255, (16, 16, 16), dtype=np.uint8)
    np.save(tmp_path / "vol.npy", vol)
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(models["3d"]), "--images", str(tmp_path / "vol.npy"),
               "--slices", "2", "--out", str(out)])  # fmt: skip
    assert rc == 0
    files = {p.name for p in out.glob("*.png")}
    slices = files - {"vol_gradcam_mip.png"}
    assert len(files) == 3 and len(slices) == 2
    assert all(f.startswith("vol_gradcam_slice") for f in slices)


def test_study_final_predictor(models: dict[str, Path], tiny_data_dir: Path,
                               tmp_path: Path) -> None:  # fmt: skip
    run = tmp_path / "runs"
    rdir = run / "retrain" / "s"
    rdir.mkdir(parents=True)
    rel = [Path("models") / n / "model.pt" for n in ("m0", "m1")]
    for src, dst in zip((models["2d"], models["2d-b"]), rel, strict=True):
        (rdir / dst).parent.mkdir(parents=True)
        (rdir / dst).write_bytes(src.read_bytes())
    mr = [ModelResult(name=f"m{i}", trial=i, seed=0, path=str(p), test={}, weights="best",
                      epoch=0, epochs_run=1, val_at_epoch=None, train_seconds=0.0,
                      backbone="resnet18") for i, p in enumerate(rel)]  # fmt: skip
    RetrainResult(study="s", models=mr, per_seed=[SeedResult(0, {}, ["m0", "m1"])]).save(
        rdir / "retrain.json")
    out = tmp_path / "out"
    rc = main(["explain", "--study", "s", "--run-dir", str(run), "--data", "breastmnist",
               "--data-dir", str(tiny_data_dir), "--indices", "1", "--out", str(out)])
    assert rc == 0 and (out / "test00001_gradcam.png").is_file()


def test_search_final_predictor_is_explained_with_its_member_weights(
    models: dict[str, Path], tiny_data_dir: Path, tmp_path: Path,
) -> None:
    # Member weights 1 and 0: the ensemble's explanation is member m0's alone.
    from medauto.ensemble import Member
    from medauto.ensemble import Predictor
    from medauto.final import final_dir

    run = tmp_path / "runs"
    Predictor.create(
        final_dir(run, "s") / "predictor", task="binary", class_names=["a", "b"],
        members=[(models["2d"], Member("", 1.0, trial=0, fold=0, backbone="resnet18")),
                 (models["2d-b"], Member("", 0.0, trial=1, fold=0, backbone="resnet18"))],
        input_spec={"spatial_dims": 2, "in_chans": 1, "image_size": [28, 28]},
        threshold=None, meta={"study": "s"},
    )
    common = ["--data", "breastmnist", "--data-dir", str(tiny_data_dir), "--indices", "1-2"]
    assert main(["explain", "--study", "s", "--run-dir", str(run), *common,
                 "--out", str(tmp_path / "ens")]) == 0
    assert main(["explain", "--model", str(models["2d"]), *common,
                 "--out", str(tmp_path / "one")]) == 0
    ens, one = (json.loads((tmp_path / d / "explain.json").read_text()) for d in ("ens", "one"))
    assert [r["probability"] for r in ens] == pytest.approx([r["probability"] for r in one])
    with Image.open(tmp_path / "ens" / "test00001_gradcam.png") as a, \
            Image.open(tmp_path / "one" / "test00001_gradcam.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize(("which", "make", "extra", "fragment"), [
    ("2d", "volume", [], "a 2D model needs an image file"),
    ("3d", "png", [], "a 3D model needs .npy volumes"),
    ("2d", "rgb", [], "the model takes 1-channel images, the images have 3"),
    ("2d", "png", ["-m", "occlusion"], "unknown explanation method 'occlusion'"),
    ("2d", "png", ["-m", "gradcam", "-m", "shap", "--shap-samples", "0"], "shap_samples"),
    ("2d", "png", ["--target", "5"], "target class must be in [0, 1]"),
    ("2d", "png", ["--layer", "-9"], "layer must be an index into backbone 'resnet18''s 8 units"),
])
def test_bad_input_one_line_nothing_written(
    models: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    which: str, make: str, extra: list[str], fragment: str,
) -> None:
    rng = np.random.default_rng(0)
    if make == "volume":
        src = tmp_path / "v.npy"
        np.save(src, rng.integers(0, 255, (16, 16, 16), dtype=np.uint8))
    else:
        src = tmp_path / "i.png"
        shape = (28, 28, 3) if make == "rgb" else (28, 28)
        Image.fromarray(rng.integers(0, 255, shape, dtype=np.uint8)).save(src)
    out = tmp_path / "out"
    rc = main(["explain", "--model", str(models[which]), "--images", str(src),
               "--out", str(out), *extra])  # fmt: skip
    errors = [ln for ln in capsys.readouterr().err.splitlines() if not ln.startswith("[")]
    assert rc == 1 and len(errors) == 1 and errors[0].startswith("medauto explain: error: ")
    assert fragment in errors[0]
    assert not out.exists()


def test_layer_moves_the_cams_and_not_shap(models: dict[str, Path], tmp_path: Path) -> None:
    src = tmp_path / "i.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(src)
    files = {}
    for tag, extra in (("default", []), ("unit", ["--layer", "-3"])):
        out = tmp_path / tag
        assert main(["explain", "--model", str(models["2d"]), "--images", str(src), "-m",
                     "gradcam", "-m", "shap", "--shap-samples", "4", "--out", str(out),
                     *extra]) == 0
        files[tag] = {p.name: p.read_bytes() for p in out.glob("*.png")}
    assert files["default"].keys() == files["unit"].keys() == {"i_gradcam.png", "i_shap.png"}
    assert files["default"]["i_gradcam.png"] != files["unit"]["i_gradcam.png"]
    assert files["default"]["i_shap.png"] == files["unit"]["i_shap.png"]


def test_index_out_of_range(models: dict[str, Path], tiny_data_dir: Path, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    rc = main(["explain", "--model", str(models["2d"]), "--data", "breastmnist", "--data-dir",
               str(tiny_data_dir), "--indices", "47-48", "--out", str(tmp_path / "o")])
    assert rc == 1 and "--indices [48] out of range" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
