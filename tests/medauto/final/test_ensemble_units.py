"""Greedy ensemble selection, the threshold fit, and the Predictor file format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medauto.ensemble import Member
from medauto.ensemble import Predictor
from medauto.ensemble import PredictorError
from medauto.ensemble import fit_threshold
from medauto.ensemble import greedy_selection
from medauto.ensemble import shift_threshold
from medauto.scoring import split_metrics


def test_greedy_selection_combines_complementary_models() -> None:
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1], 200)
    signal = y + 0.0
    a = signal + rng.normal(0, 1.0, 400)       # two independent noisy views
    b = signal + rng.normal(0, 1.0, 400)
    bad = rng.normal(0, 1.0, 400)              # pure noise
    sig = [1 / (1 + np.exp(-v)) for v in (a, b, bad)]
    counts = greedy_selection(sig, y, task="binary", rounds=10)
    assert counts[2] < min(counts[0], counts[1])  # the noise gets the smallest weight
    mix = sum(c * s for c, s in zip(counts, sig, strict=True)) / sum(counts)
    assert split_metrics("binary", y, mix)["auc"] > max(
        split_metrics("binary", y, s)["auc"] for s in sig[:2])


def test_greedy_selection_keeps_the_best_round() -> None:
    y = np.array([0, 0, 1, 1])
    perfect, noise = np.array([.1, .2, .8, .9]), np.array([.9, .1, .2, .8])
    assert greedy_selection([noise, perfect], y, task="binary", rounds=6) == [0, 1]


def test_threshold_separates_the_classes_and_defaults_to_one_half() -> None:
    y = np.array([0] * 30 + [1] * 70)
    p = np.concatenate([np.linspace(0.6, 0.7, 30), np.linspace(0.75, 0.95, 70)])
    t = fit_threshold(y, p)
    assert 0.7 < t < 0.75 and np.mean((p >= t) == (y == 1)) == 1.0
    assert fit_threshold(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5


def test_threshold_is_judged_by_accuracy_not_balanced_accuracy() -> None:
    # BreastMNIST's case (H200, 2026-12-02): on imbalanced out-of-fold predictions whose
    # positives score high, the best balanced accuracy sits far above 0.5 and costs
    # accuracy out of sample; the accuracy rule keeps 0.5.
    rng = np.random.default_rng(0)
    y = np.array([0] * 170 + [1] * 454)
    p = np.clip(np.where(y == 1, 0.78, 0.42) + rng.normal(0, 0.17, len(y)), 0.01, 0.99)
    u = np.unique(p)
    cands = (u[1:] + u[:-1]) / 2
    hit = p[None, :] >= cands[:, None]
    bal = (hit[:, y == 1].mean(1) + (~hit[:, y == 0]).mean(1)) / 2
    assert cands[np.argmax(bal)] > 0.55  # balanced accuracy would move the threshold
    assert fit_threshold(y, p) == 0.5


def test_threshold_moves_only_when_the_gain_beats_the_folds_spread() -> None:
    # Scores shifted up by 0.2: 0.5 calls most negatives positive, and every fold agrees.
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 400)
    p = np.clip(np.where(y == 1, 0.85, 0.6) + rng.normal(0, 0.06, len(y)), 0.01, 0.99)
    t = fit_threshold(y, p)
    assert 0.65 < t < 0.8
    assert np.mean((p >= t) == (y == 1)) > np.mean((p >= 0.5) == (y == 1)) + 0.3


def test_threshold_fitted_on_noise_stays_at_one_half() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 300)
    assert fit_threshold(y, rng.uniform(0.3, 0.7, 300)) == 0.5
    # too few of a class to check the fit out of sample
    assert fit_threshold(np.array([0, 0, 0, 1, 1, 1, 1, 1]),
                         np.array([.6, .65, .7, .8, .85, .9, .92, .95])) == 0.5


def _tiny_model_file(path: Path, seed: int) -> Path:
    import torch

    from med_core.config import TrainConfig
    from med_core.models import build_classifier
    from medauto.model_file import save_model

    torch.manual_seed(seed)
    cfg = TrainConfig.from_flat({"model.backbone": "mobilenet_v3_small", "tta": False})
    model = build_classifier(cfg.model, num_classes=2, in_chans=1, img_size=(28, 28))
    return save_model(path, model, cfg, task="binary", num_classes=2, in_chans=1,
                      spatial_dims=2, img_size=[28, 28])


@pytest.fixture(scope="module")
def predictor(tmp_path_factory: pytest.TempPathFactory) -> Predictor:
    src = tmp_path_factory.mktemp("src")
    files = [_tiny_model_file(src / f"m{i}.pt", i) for i in range(2)]
    members = [(f, Member("", 0.5, trial=i, fold=0, backbone="mobilenet_v3_small"))
               for i, f in enumerate(files)]
    return Predictor.create(
        tmp_path_factory.mktemp("out") / "predictor", members=members, task="binary",
        class_names=["malignant", "benign"], threshold=0.7, meta={"study": "s"},
        input_spec={"spatial_dims": 2, "in_chans": 1, "image_size": [28, 28]},
    )


def test_a_predictor_round_trips_and_predicts(predictor: Predictor) -> None:
    loaded = Predictor.load(predictor.folder)
    assert [m.file for m in loaded.members] == ["members/trial0-fold0.pt",
                                                 "members/trial1-fold0.pt"]
    images = np.random.default_rng(0).integers(0, 255, (5, 1, 28, 28), dtype=np.uint8)
    proba = loaded.predict_proba(images)
    assert proba.shape == (5, 2) and np.allclose(proba.sum(1), 1.0)
    raw = np.mean(loaded.member_scores(images), axis=0)
    # The threshold is folded in: p >= 0.5 after calibration iff raw >= 0.7.
    assert np.array_equal(loaded.predict(images), (raw >= 0.7).astype(np.int64))
    labels = np.array([0, 1, 0, 1, 1])
    assert loaded.evaluate(images, labels)["auc"] == pytest.approx(
        split_metrics("binary", labels, raw)["auc"])


def test_a_predictor_refuses_wrong_images_and_broken_folders(
    predictor: Predictor, tmp_path: Path
) -> None:
    with pytest.raises(PredictorError, match=r"images must have shape \(N, 1, 28, 28\)"):
        predictor.predict(np.zeros((2, 3, 28, 28), np.uint8))
    with pytest.raises(PredictorError, match="no readable predictor"):
        Predictor.load(tmp_path)
    spec = json.loads((predictor.folder / "predictor.json").read_text())
    spec["members"][0]["file"] = "members/gone.pt"
    (tmp_path / "predictor.json").write_text(json.dumps(spec))
    with pytest.raises(PredictorError, match=r"member file\(s\) missing: \['members/gone.pt'"):
        Predictor.load(tmp_path)


def test_a_final_model_that_predicts_one_class_is_flagged() -> None:
    from medauto.evaluation import one_class_warning
    from medauto.final import FinalResult

    flagged = one_class_warning([[0, 42], [0, 114]], "the final model")
    assert flagged and "predicts class 1 for 156 of 156 test images" in flagged[0]
    assert one_class_warning([[30, 12], [10, 104]]) == []
    result = FinalResult(study="s", warnings=flagged)
    assert "WARNING: the final model predicts class 1" in result.summary()


def test_a_confident_model_keeps_its_order_through_the_threshold_shift() -> None:
    # Logit margins of an over-confident model (r3d_18 on AdrenalMNIST3D's binary masks
    # reaches them): negatives at -40..-30, positives at 2..14, scored as med_core scores
    # them (float32 softmax). They rank all but one pair right; a clip at 1e-7 before the
    # threshold shift tied all the negatives.
    import torch

    margins = torch.tensor([-40.0, -37.5, -35.0, -32.5, -30.0, 2.0, 5.0, 8.0, 11.0, 14.0])
    scores = torch.softmax(torch.stack([torch.zeros(10), margins], 1), 1)[:, 1].numpy()
    y = np.array([0, 0, 0, 0, 1, 0, 1, 1, 1, 1])  # one negative above one positive: AUC 0.96
    assert split_metrics("binary", y, scores)["auc"] == pytest.approx(0.96)
    shifted = shift_threshold(scores, 0.08)
    assert np.all(np.diff(shifted) > 0)
    assert split_metrics("binary", y, shifted)["auc"] == pytest.approx(0.96)
    assert shift_threshold(np.array([0.08]), 0.08)[0] == pytest.approx(0.5)
