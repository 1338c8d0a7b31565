"""The report's explanation gallery, on a real (tiny) BreastMNIST retrain folder: two
members, their stored ensemble test scores, retrain.json."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import optuna
import pytest
import torch

from med_core.config import TrainConfig
from med_core.data import build_loader
from med_core.data import load_dataset
from med_core.models import build_classifier
from med_core.training import compute_metrics
from medauto.model_file import save_model
from medauto.report import write_report
from medauto.report_gallery import KINDS
from medauto.report_gallery import NOT_A_DIAGNOSIS
from medauto.report_gallery import gallery_blocks
from medauto.report_gallery import select_examples
from medauto.retrain import ModelResult
from medauto.retrain import RetrainResult
from medauto.retrain import SeedResult


@pytest.fixture(scope="module")
def retrain_dir(tiny_data_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seeded resnet18 members; test scores computed once, as retrain stores them."""
    npz = tiny_data_dir / "breastmnist.npz"
    out = tmp_path_factory.mktemp("retrain")
    ds = load_dataset(str(npz))
    x = torch.cat([b for b, _ in build_loader(ds.test, batch_size=64, train=False)])
    probs, models = [], []
    for seed in (0, 1):
        cfg = TrainConfig.from_flat({"model.backbone": "resnet18", "seed": seed,
                                     "data.dataset": "breastmnist",
                                     "data.data_dir": str(tiny_data_dir)})  # fmt: skip
        torch.manual_seed(seed)
        model = build_classifier(cfg.model, num_classes=2, in_chans=1, img_size=28).eval()
        rel = f"models/m{seed}/model.pt"
        save_model(out / rel, model, cfg, task="binary", num_classes=2, in_chans=1,
                   img_size=[28, 28])  # fmt: skip
        with torch.no_grad():
            probs.append(torch.softmax(model(x), 1)[:, 1].numpy())
        own = compute_metrics("binary", ds.test.labels, probs[-1])
        models.append(ModelResult(name=f"m{seed}", trial=0, seed=seed, path=rel,
                                  test={k: float(v) for k, v in own.items()},
                                  weights="best", epoch=0, epochs_run=1, val_at_epoch=None,
                                  train_seconds=0.0, backbone="resnet18"))  # fmt: skip
    mean = np.mean(probs, axis=0)
    np.savez(out / "predictions.npz", y_true=ds.test.labels, m0=probs[0], m1=probs[1],
             **{"ensemble-seed0": mean})  # fmt: skip
    test = {k: float(v) for k, v in compute_metrics("binary", ds.test.labels, mean).items()}
    RetrainResult(study="g", dataset=str(npz), task="binary", models=models, seeds=[0],
                  per_seed=[SeedResult(0, test, ["m0", "m1"])], out_dir=str(out), ensemble=2,
                  test_mean=test, test_std={k: 0.0 for k in test}, trials=[0, 0],
                  n_test=len(ds.test)).save(out / "retrain.json")  # fmt: skip
    return out


def test_select_examples_follow_their_definitions() -> None:
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    p = rng.dirichlet(np.ones(3), 60)
    picks = select_examples(y, p)
    pred, conf = p.argmax(1), p.max(1)
    for c, kinds in picks.items():
        mine = np.flatnonzero(y == c)
        right, wrong = mine[pred[mine] == c], mine[pred[mine] != c]
        assert kinds[KINDS[0]] == right[np.argmax(conf[right])]
        assert kinds[KINDS[1]] == wrong[np.argmax(conf[wrong])]
        margin = np.sort(p[mine], 1)[:, -1] - np.sort(p[mine], 1)[:, -2]
        assert kinds[KINDS[2]] == mine[np.argmin(margin)]


def test_gallery_per_class_with_overlays(retrain_dir: Path) -> None:
    result = RetrainResult.load(retrain_dir / "retrain.json")
    images: dict[str, bytes] = {}
    blocks = gallery_blocks(result, images)
    assert ("p", NOT_A_DIAGNOSIS) in blocks
    heads = [b[1] for b in blocks if b[0] == "h3"]
    assert heads == ["True class 0: malignant", "True class 1: normal, benign"]
    shown = [b[1] for b in blocks if b[0] == "img"]
    assert shown and set(shown) == set(images)
    assert all(v[:8] == b"\x89PNG\r\n\x1a\n" for v in images.values())
    with np.load(retrain_dir / "predictions.npz") as f:
        picks = select_examples(f["y_true"], f["ensemble-seed0"])
    assert len(shown) == sum(len(k) for k in picks.values())


def test_report_contains_the_gallery_and_the_statement(retrain_dir: Path, tmp_path: Path) -> None:
    study = optuna.create_study(study_name="g")
    paths = write_report(study, out_dir=tmp_path / "rep", retrain=retrain_dir / "retrain.json")
    md = paths.markdown.read_text()
    assert NOT_A_DIAGNOSIS in md and "](gallery-c0-0.png)" in md
    assert (tmp_path / "rep" / "gallery-c0-0.png").is_file()


def test_gallery_failure_is_one_paragraph_not_a_failed_report(retrain_dir: Path,
                                                              tmp_path: Path) -> None:  # fmt: skip
    result = RetrainResult.load(retrain_dir / "retrain.json")
    result.out_dir = str(tmp_path)  # no predictions.npz there
    images: dict[str, bytes] = {}
    blocks = gallery_blocks(result, images)
    assert blocks[1] == ("p", NOT_A_DIAGNOSIS) and blocks[2][1].startswith("No gallery: ")
    assert images == {}


def test_report_renders_in_a_headless_browser(retrain_dir: Path, tmp_path: Path) -> None:
    """Chromium opens the self-contained report.html and renders all of it: the test
    metrics next to the published rows, the gallery's images and the statement that CAMs
    are not a diagnosis are on the page."""
    from browser import assert_screenshot
    from browser import render
    from browser import visible_text

    study = optuna.create_study(study_name="g")
    paths = write_report(study, out_dir=tmp_path / "rep", retrain=retrain_dir / "retrain.json")
    expected = visible_text(paths.html.read_text())
    wanted = ("Test metrics vs. published MedMNIST v2 baselines", "Google AutoML Vision",
              NOT_A_DIAGNOSIS.split(":")[0])
    assert all(w in expected for w in wanted)  # in the file, so the browser check means something
    images = paths.html.read_text().count("<img ")
    assert images >= len(KINDS) * 2  # the gallery: each kind of example for both classes
    shot, text = render(paths.html.as_uri(), tmp_path, "report")
    assert_screenshot(shot, min_bytes=5_000, min_colours=20)  # mostly text and tables
    for w in wanted:
        assert w in text, w
    assert (tmp_path / "report.html").read_text().count("<img ") == images
    assert text.count("\n") >= expected.count("\n") * 0.9  # the whole page, not an error page
