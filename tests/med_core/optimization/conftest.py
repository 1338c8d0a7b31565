"""Fixtures of the optimization tests: real BreastMNIST images and small models."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from med_core.models import build_classifier


def _normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 28, 28) → float (N, 1, 28, 28) in [-1, 1], as med_core's loaders do."""
    return torch.from_numpy(images).float().div(255).sub(0.5).div(0.5).unsqueeze(1)


@pytest.fixture(scope="session")
def breast(medmnist_dir: Path) -> dict[str, torch.Tensor]:
    """64 test images (+labels) and 64 training images for calibration / fine-tuning."""
    with np.load(medmnist_dir / "breastmnist.npz") as data:
        return {
            "test": _normalise(data["test_images"][:64]),
            "test_labels": torch.from_numpy(data["test_labels"][:64, 0].astype(np.int64)),
            "train": _normalise(data["train_images"][:64]),
            "train_labels": torch.from_numpy(data["train_labels"][:64, 0].astype(np.int64)),
        }


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    """The benchmark's model: a med_core ResNet-18 classifier for 1×28×28, eval mode."""
    torch.manual_seed(0)
    model = build_classifier(
        {"backbone": "resnet18", "dropout": 0.2}, num_classes=2, in_chans=1, img_size=28
    )
    return model.eval()


class TinyResNet(nn.Module):
    """Conv-BN-ReLU stem, one residual block (a ReLU module called twice, as in
    torchvision's BasicBlock) and a Dropout + Linear head: all the patterns of a
    med_core ResNet classifier, at a fraction of the cost."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.head = nn.Sequential(nn.Dropout(0.1), nn.Linear(width, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.relu(self.bn1(self.conv1(x)))
        y = self.relu(self.bn2(self.conv2(y)) + y)
        return self.head(y.mean((2, 3)))  # type: ignore[no-any-return]


@pytest.fixture
def tiny() -> TinyResNet:
    torch.manual_seed(0)
    return TinyResNet().eval()


@pytest.fixture(scope="module")
def qat_prepared(breast: dict[str, torch.Tensor]) -> nn.Module:
    """One QAT-prepared TinyResNet; tests deep-copy it (preparing costs seconds)."""
    from med_core.optimization import quantize_model

    torch.manual_seed(0)
    return quantize_model(TinyResNet().eval(), "qat", example_inputs=breast["train"][:8])
