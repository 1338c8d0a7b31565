"""Flip test-time augmentation of Trainer.predict (``tta=``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from med_core.config import TrainConfig
from med_core.data import load_dataset
from med_core.testing.data import cut_medmnist
from med_core.training import Trainer


@pytest.fixture(scope="module")
def trainer(tmp_path_factory: pytest.TempPathFactory, medmnist_dir: Path) -> Trainer:
    path = cut_medmnist(medmnist_dir / "breastmnist.npz",
                        tmp_path_factory.mktemp("data") / "breastmnist.npz", 12)
    cfg = TrainConfig.from_flat({"data.dataset": str(path), "model.backbone": "resnet18",
                                 "epochs": 1, "batch_size": 8})
    return Trainer(cfg, dataset=load_dataset(cfg.data), device="cpu")


def test_tta_changes_predictions_and_averages_the_flip(trainer: Trainer) -> None:
    _, plain = trainer.predict("val", tta=False)
    _, tta = trainer.predict("val", tta=True)
    assert not np.allclose(plain, tta)
    # tta = the mean of the image's and its mirror's probabilities
    imgs = trainer.dataset.val.images
    original = imgs.copy()
    try:
        imgs[...] = imgs[..., ::-1]
        _, mirrored = trainer.predict("val", tta=False)
    finally:
        imgs[...] = original
    assert np.allclose(tta, (plain + mirrored) / 2, atol=1e-5)

def test_tta_is_exact_for_mirror_symmetric_inputs(trainer: Trainer) -> None:
    imgs = trainer.dataset.val.images
    _, plain = trainer.predict("val", tta=False)
    half = imgs.shape[-1] // 2
    original = imgs.copy()
    try:
        imgs[..., imgs.shape[-1] - half:] = imgs[..., :half][..., ::-1]
        _, sym_plain = trainer.predict("val", tta=False)
        _, sym_tta = trainer.predict("val", tta=True)
    finally:
        imgs[...] = original
    assert np.allclose(sym_plain, sym_tta, atol=1e-6)
    assert not np.allclose(plain, sym_plain)
