"""med_core.models: Classifier and build_classifier."""

from __future__ import annotations

import copy
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from med_core.backbones import Backbone
from med_core.config import ModelConfig
from med_core.config import TrainConfig
from med_core.exceptions import ConfigError
from med_core.exceptions import PretrainedWeightsError
from med_core.exceptions import UnknownBackboneError
from med_core.models import Classifier
from med_core.models import build_classifier
from med_core.testing.backbones import check_same_step
from med_core.testing.backbones import train_step


def test_build_from_model_config() -> None:
    torch.manual_seed(0)
    cfg = ModelConfig(backbone="resnet18", dropout=0.25)
    model = build_classifier(cfg, num_classes=5, in_chans=1, img_size=28)
    assert isinstance(model, Classifier) and isinstance(model.backbone, Backbone)
    assert model.spatial_dims == 2 and model.training
    dropout, linear = model.head
    assert isinstance(dropout, nn.Dropout) and dropout.p == 0.25
    assert isinstance(linear, nn.Linear)
    assert (linear.in_features, linear.out_features) == (512, 5)
    assert model.backbone.small_input and model.backbone.model.conv1.in_channels == 1
    assert not model.backbone.is_gradient_checkpointing_enabled()
    logits = model(torch.randn(2, 1, 28, 28))
    assert logits.shape == (2, 5)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_build_from_plain_dict_and_train_config() -> None:
    model = build_classifier(
        {"backbone": "mobilenet_v3_small", "dropout": 0.1}, num_classes=3, in_chans=3, img_size=28
    )
    assert model.head[0].p == 0.1 and model.head[1].in_features == 1024
    tc = TrainConfig.from_flat({"model.backbone": "vit_tiny", "model.checkpoint_segments": 4})
    vit = build_classifier(tc.model, num_classes=2, in_chans=1, img_size=28)
    assert vit.backbone.checkpoint_segments == 4
    assert vit(torch.randn(2, 1, 28, 28)).shape == (2, 2)


@pytest.mark.parametrize(
    ("segments", "expected", "budget"),
    [(None, None, None), (0, None, 0.5), (1, 1, None), (8, 8, None)],
)
def test_checkpoint_segments(
    segments: int | None, expected: int | None, budget: float | None
) -> None:
    """0 = the family's default memory budget from FAMILY_DEFAULTS; k = k segments."""
    cfg = ModelConfig(backbone="resnet18", checkpoint_segments=segments)
    model = build_classifier(cfg, num_classes=2, in_chans=3, img_size=28)
    assert model.backbone.checkpoint_segments == expected
    assert model.backbone.checkpoint_memory_budget == budget
    assert model.backbone.is_gradient_checkpointing_enabled() == (segments is not None)


def test_checkpointed_classifier_trains_like_the_plain_one() -> None:
    torch.manual_seed(0)
    plain = build_classifier(
        ModelConfig(backbone="resnet18", dropout=0.5), num_classes=4, in_chans=1, img_size=28
    )
    ckpt = copy.deepcopy(plain)
    ckpt.backbone.enable_gradient_checkpointing(2)
    x = torch.randn(2, 1, 28, 28)
    check_same_step(plain, ckpt, train_step(plain, x), train_step(ckpt, x))
    assert list(ckpt.state_dict()) == list(plain.state_dict())
    clone = pickle.loads(pickle.dumps(ckpt))
    assert clone.backbone.checkpoint_segments == 2
    plain.eval(), clone.eval()
    with torch.no_grad():
        assert torch.equal(clone(x), plain(x))


def test_volumes() -> None:
    model = build_classifier({"backbone": "r3d_18"}, num_classes=2, in_chans=1, img_size=16)
    assert model.spatial_dims == 3
    assert model(torch.randn(1, 1, 16, 16, 16)).shape == (1, 2)


@pytest.mark.parametrize(
    ("cfg", "kwargs", "error", "fragment"),
    [
        ({"backbone": "resnet18", "depth": 3}, {}, ConfigError, r"unknown key\(s\) \['depth'\]"),
        ({"backbone": "resnet18", "dropout": 1.5}, {}, ConfigError, r"dropout: must be a number"),
        ({"backbone": "resnet19"}, {}, UnknownBackboneError, r"did you mean 'resnet18'"),
        (
            {"backbone": "resnet18", "checkpoint_segments": 9},
            {},
            ValueError,
            r"segments for backbone 'resnet18' must be an integer in \[1, 8\].*got 9",
        ),
        (
            {"backbone": "resnet18"},
            {"num_classes": 0},
            ValueError,
            r"num_classes must be an integer >= 1, got 0",
        ),
        ({"backbone": "resnet18"}, {"in_chans": 0}, ValueError, r"in_chans must be an integer"),
    ],
)
def test_bad_inputs(
    cfg: dict[str, object], kwargs: dict[str, object], error: type[Exception], fragment: str
) -> None:
    args: dict[str, object] = {"num_classes": 2, "in_chans": 1, "img_size": 28, **kwargs}
    with pytest.raises(error, match=fragment):
        build_classifier(cfg, **args)  # type: ignore[arg-type]


def test_pretrained_flag_reaches_the_backbone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(PretrainedWeightsError, match=r"resnet18-f37072fd\.pth"):
        build_classifier(
            ModelConfig(backbone="resnet18", pretrained=True), num_classes=2, in_chans=1
        )
